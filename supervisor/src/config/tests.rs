use super::*;

fn opts(root: bool, dev: bool) -> LoadOptions {
    LoadOptions {
        dev,
        root,
        cwd: PathBuf::from("/work"),
        exe_dir: PathBuf::from("/opt/phoenix/bin"),
    }
}

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(
        text,
        Path::new("/etc/phoenix/phoenix.toml"),
        &opts(true, false),
    )
}

#[test]
fn empty_file_is_the_full_appliance() {
    let c = parse_str("").unwrap();
    let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "postgres-init",
            "postgres",
            "postgres-setup",
            "prometheus",
            "pushgateway",
            "api"
        ]
    );
    assert_eq!(c.supervisor.state_dir, PathBuf::from("/var/lib/phoenix"));
    assert_eq!(c.health.listen.to_string(), "0.0.0.0:8081");
    let pg = c.service("postgres").unwrap();
    assert!(
        pg.command
            .contains(&"listen_addresses=127.0.0.1".to_string())
    );
    assert_eq!(pg.user.as_deref(), Some("postgres"));
    assert_eq!(pg.stop.signal, nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        pg.limits,
        Limits {
            memory: Some(1 << 30),
            cpus: Some(1.0),
            pids: None
        }
    );
    let api = c.service("api").unwrap();
    assert_eq!(
        api.limits,
        Limits {
            memory: Some(2 << 30),
            cpus: Some(2.0),
            pids: None
        }
    );
    assert_eq!(api.depends_on, ["postgres-setup", "pushgateway"]);
    assert_eq!(api.command[0], "/opt/phoenix/bin/phoenix-api");
    let prom = c.service("prometheus").unwrap();
    assert_eq!(
        prom.limits,
        Limits {
            memory: Some(2 << 30),
            cpus: Some(1.5),
            pids: None
        }
    );
    let yml = &prom.files[0].contents;
    assert!(
        yml.contains("job_name: phoenix-supervisor") && yml.contains("'127.0.0.1:8081'"),
        "{yml}"
    );
    assert!(
        yml.contains("job_name: phoenix-api") && yml.contains("'127.0.0.1:443'"),
        "{yml}"
    );
    assert!(yml.contains("honor_labels: true"), "{yml}");
    let push = c.service("pushgateway").unwrap();
    assert!(
        push.command
            .iter()
            .any(|a| a == "--web.listen-address=127.0.0.1:9091")
    );
}

#[test]
fn dev_mode_uses_local_state_loopback_and_unprivileged_ports() {
    let c = parse("", Path::new("dev.toml"), &opts(false, true)).unwrap();
    assert_eq!(
        c.supervisor.state_dir,
        PathBuf::from("/work/.phoenix-dev/state")
    );
    assert_eq!(c.health.listen.to_string(), "127.0.0.1:8081");
    let api = c.service("api").unwrap();
    assert_eq!(api.env["PHOENIX_API_LISTEN"], "127.0.0.1:8443");
    assert!(api.user.is_none(), "no user switching without root");
    assert!(
        c.service("postgres")
            .unwrap()
            .command
            .contains(&"port=15432".to_string())
    );
    let prom = c.service("prometheus").unwrap();
    assert!(
        prom.command
            .contains(&"--web.listen-address=127.0.0.1:19090".to_string())
    );
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let err = parse_str("[postgres]\nport = 5432\nbogus = 1\n").unwrap_err();
    assert_eq!((err.line, err.column), (3, 1), "{err}");
    assert!(
        err.to_string()
            .starts_with("/etc/phoenix/phoenix.toml:3:1: "),
        "{err}"
    );
    assert!(err.message.contains("unknown field `bogus`"), "{err}");
}

#[test]
fn wrong_type_names_the_key_path() {
    let err = parse_str(
        "[services.worker]\ncommand = [\"/bin/true\"]\n[services.worker.restart]\npolicy = 7\n",
    )
    .unwrap_err();
    assert_eq!(err.key, "services.worker.restart.policy", "{err}");
    assert_eq!(err.line, 4, "{err}");
    let err = parse_str("[api]\nlisten = \"nowhere\"\n").unwrap_err();
    assert_eq!(err.key, "api.listen");
    assert_eq!((err.line, err.column), (2, 10), "{err}");
}

#[test]
fn bad_values_are_located() {
    let err = parse_str("[supervisor]\nshutdown_timeout = \"forever\"\n").unwrap_err();
    assert_eq!(err.key, "supervisor.shutdown_timeout");
    assert!(err.message.contains("not a duration"), "{err}");
    let err = parse_str("[postgres]\nlimits = { memory = \"lots\" }\n").unwrap_err();
    assert_eq!(err.key, "postgres.limits.memory");
}

#[test]
fn malformed_toml_is_a_located_syntax_error() {
    let err = parse_str("[postgres\nport = 1\n").unwrap_err();
    assert_eq!(err.line, 1, "{err}");
    assert!(err.key.is_empty());
}

#[test]
fn new_services_need_a_command_and_known_dependencies() {
    let err = parse_str("[services.worker]\nuser = \"x\"\n").unwrap_err();
    assert!(err.message.contains("needs `command`"), "{err}");
    assert_eq!(err.line, 1);
    let err = parse_str("[services.worker]\ncommand = [\"/bin/true\"]\ndepends_on = [\"nope\"]\n")
        .unwrap_err();
    assert_eq!(err.key, "services.worker.depends_on");
    assert_eq!(err.line, 3, "{err}");
    assert!(err.message.contains("unknown service `nope`"), "{err}");
}

#[test]
fn cycles_are_rejected() {
    let text = "[services.a]\ncommand = [\"/bin/true\"]\ndepends_on = [\"b\"]\n[services.b]\ncommand = [\"/bin/true\"]\ndepends_on = [\"a\"]\n";
    let err = parse_str(text).unwrap_err();
    assert!(
        err.message.contains("dependency cycle among: a, b"),
        "{err}"
    );
}

#[test]
fn services_are_ordered_after_their_dependencies() {
    let text = "[postgres]\nenable = false\nexternal_url = \"postgres://db/x\"\nexternal_password_file = \"/etc/phoenix/db-pw\"\n\
                [services.z]\ncommand = [\"/bin/z\"]\ndepends_on = [\"a\"]\n\
                [services.a]\ncommand = [\"/bin/a\"]\noneshot = true\n";
    let c = parse_str(text).unwrap();
    let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
    let (a, z) = (
        names.iter().position(|n| *n == "a").unwrap(),
        names.iter().position(|n| *n == "z").unwrap(),
    );
    assert!(a < z, "{names:?}");
    assert_eq!(
        c.service("a").unwrap().restart.policy,
        RestartPolicy::OnFailure,
        "oneshots retry only failures"
    );
    let api = c.service("api").unwrap();
    assert_eq!(api.env["PHOENIX_DATABASE_URL"], "postgres://db/x");
    assert_eq!(
        api.env["PHOENIX_DATABASE_PASSWORD_FILE"],
        "/etc/phoenix/db-pw"
    );
}

#[test]
fn overrides_change_only_what_they_name() {
    let text = "[services.postgres]\nstop = { timeout = \"5s\" }\nlimits = { pids = 100 }\nreadiness = { interval = \"1s\" }\n";
    let c = parse_str(text).unwrap();
    let pg = c.service("postgres").unwrap();
    assert_eq!(pg.stop.timeout, Duration::from_secs(5));
    assert_eq!(
        pg.stop.signal,
        nix::sys::signal::Signal::SIGINT,
        "signal kept"
    );
    assert_eq!(pg.limits.pids, Some(100));
    assert_eq!(pg.limits.memory, Some(1 << 30), "memory kept");
    let r = pg.readiness.as_ref().unwrap();
    assert_eq!(r.interval, Duration::from_secs(1));
    assert!(matches!(r.probe, Probe::Exec(_)), "probe kept");
}

#[test]
fn builtins_can_be_disabled() {
    let c = parse_str("[prometheus]\nenable = false\n[pushgateway]\nenable = false\n").unwrap();
    assert!(c.service("prometheus").is_none() && c.service("pushgateway").is_none());
    assert_eq!(c.service("api").unwrap().depends_on, ["postgres-setup"]);
    let err = parse_str("[postgres]\nenable = false\n").unwrap_err();
    assert!(err.message.contains("needs a database"), "{err}");
}

#[test]
fn probes_need_exactly_one_kind() {
    let err = parse_str("[services.w]\ncommand = [\"/bin/w\"]\nreadiness = { tcp = \"127.0.0.1:1\", http = \"http://x\" }\n").unwrap_err();
    assert!(err.message.contains("only one of"), "{err}");
    let err = parse_str("[services.w]\ncommand = [\"/bin/w\"]\nliveness = { log = \"up\" }\n")
        .unwrap_err();
    assert!(
        err.message.contains("cannot tell that a service is alive"),
        "{err}"
    );
    let err = parse_str("[services.w]\ncommand = [\"/bin/w\"]\nreadiness = { log = \"(\" }\n")
        .unwrap_err();
    assert!(
        err.message.contains("not a valid regular expression"),
        "{err}"
    );
}

#[test]
fn full_service_table_from_the_design_parses() {
    let text = r#"
[services.worker]
command = ["/usr/bin/worker", "--flag"]
user = "phoenix"
env = { RUST_LOG = "info" }
depends_on = ["postgres"]
readiness = { tcp = "127.0.0.1:7000" }
liveness = { http = "http://127.0.0.1:7000/health", interval = "10s", timeout = "3s", failures = 3 }
restart = { policy = "always", initial_delay = "500ms", max_delay = "30s", reset_after = "60s", start_limit = { burst = 5, interval = "60s" } }
stop = { signal = "SIGTERM", timeout = "10s" }
limits = { memory = "512MiB", cpus = 0.5, pids = 256 }
oneshot = false
"#;
    let c = parse_str(text).unwrap();
    let w = c.service("worker").unwrap();
    assert_eq!(
        w.limits,
        Limits {
            memory: Some(512 << 20),
            cpus: Some(0.5),
            pids: Some(256)
        }
    );
    assert_eq!(
        w.restart.start_limit,
        StartLimit {
            burst: 5,
            interval: Duration::from_secs(60),
            cool_down: DEFAULT_COOL_DOWN,
        }
    );
    assert_eq!(w.liveness.as_ref().unwrap().failures, 3);
    assert_eq!(
        w.readiness.as_ref().unwrap().probe,
        Probe::Tcp("127.0.0.1:7000".parse().unwrap())
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let text = "[supervisor]\nstate_dir = \"data\"\n[tls]\nmode = \"files\"\ncert = \"tls/c.pem\"\nkey = \"/abs/k.pem\"\n\
                [services.w]\ncommand = [\"/bin/w\"]\nworking_dir = \"w\"\n";
    let c = parse(text, Path::new("conf/phoenix.toml"), &opts(true, false)).unwrap();
    assert_eq!(c.supervisor.state_dir, PathBuf::from("/work/conf/data"));
    assert_eq!(c.tls.cert, PathBuf::from("/work/conf/tls/c.pem"));
    assert_eq!(c.tls.key, PathBuf::from("/abs/k.pem"));
    assert_eq!(
        c.service("w").unwrap().working_dir,
        Some(PathBuf::from("/work/conf/w"))
    );
    assert_eq!(
        c.service("api").unwrap().env["PHOENIX_TLS_CERT"],
        "/work/conf/tls/c.pem"
    );
}

#[test]
fn oneshots_take_no_readiness_or_liveness_checks() {
    let err = parse_str("[services.m]\ncommand = [\"/bin/m\"]\noneshot = true\nreadiness = { tcp = \"127.0.0.1:1\" }\n").unwrap_err();
    assert_eq!(err.key, "services.m.oneshot");
    assert!(err.message.contains("ready when it exits 0"), "{err}");
}

#[test]
fn start_limit_cool_down_defaults_to_5m_doubling_to_1h_and_is_validated() {
    let service = |limit: &str| {
        parse_str(&format!(
            "[services.w]\ncommand = [\"/bin/w\"]\nrestart = {{ start_limit = {{ burst = 2, interval = \"1m\"{limit} }} }}\n"
        ))
    };
    let w = service("").unwrap();
    let cool_down = w.service("w").unwrap().restart.start_limit.cool_down;
    assert_eq!(cool_down.base_delay(0), Duration::from_secs(300));
    assert_eq!(cool_down.base_delay(1), Duration::from_secs(600));
    assert_eq!(cool_down.base_delay(9), Duration::from_secs(3600));

    let w = service(", cool_down = \"2h\"").unwrap();
    let cool_down = w.service("w").unwrap().restart.start_limit.cool_down;
    assert_eq!(
        (cool_down.initial(), cool_down.max()),
        (Duration::from_secs(7200), Duration::from_secs(7200)),
        "a cool_down above the default max is its own max"
    );
    let w = service(", cool_down = \"1s\", cool_down_max = \"4s\"").unwrap();
    let cool_down = w.service("w").unwrap().restart.start_limit.cool_down;
    assert_eq!(cool_down.base_delay(5), Duration::from_secs(4));

    let err = service(", cool_down = \"0s\"").unwrap_err();
    assert_eq!(err.key, "services.w.restart.start_limit.cool_down", "{err}");
    assert!(err.message.contains("greater than zero"), "{err}");
    let err = service(", cool_down = \"10m\", cool_down_max = \"5m\"").unwrap_err();
    assert_eq!(
        err.key, "services.w.restart.start_limit.cool_down_max",
        "{err}"
    );
    assert!(err.message.contains("at least cool_down (10m)"), "{err}");
}
