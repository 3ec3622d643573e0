use super::*;

fn opts(root: bool, dev: bool) -> LoadOptions {
    LoadOptions {
        dev,
        root,
        cwd: PathBuf::from("/work"),
        exe_dir: PathBuf::from("/opt/phoenix/bin"),
        users: None,
        key_files: None,
        machine: Machine {
            memory: 4 << 30,
            cpus: 2,
        },
    }
}

/// The located error for `text`, as `FILE:LINE:COLUMN: KEY: MESSAGE`.
fn refused(text: &str) -> String {
    match parse_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
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
            "backup-stanza",
            "prometheus",
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
            memory: Some(1 << 30),
            cpus: Some(2.0),
            pids: None
        }
    );
    // The Pushgateway is off unless asked for: agents write, they do not push.
    assert_eq!(api.depends_on, ["postgres-setup"]);
    assert!(!api.env.contains_key("PHOENIX_PUSHGATEWAY_URL"));
    assert_eq!(api.command[0], "/opt/phoenix/bin/phoenix-api");
    let prom = c.service("prometheus").unwrap();
    assert_eq!(
        prom.limits,
        Limits {
            memory: Some(1638 << 20),
            cpus: Some(1.5),
            pids: None
        }
    );
    // Go's runtime sized to the limits, not to the machine: one thread
    // for 1.5 CPUs, a soft memory limit at 90 %, collected less often.
    assert_eq!(prom.env["GOMAXPROCS"], "1");
    assert_eq!(prom.env["GOMEMLIMIT"], "1474MiB");
    assert_eq!(prom.env["GOGC"], "400");
    let yml = &prom.files[0].contents;
    assert!(
        yml.contains("job_name: phoenix-supervisor") && yml.contains("'127.0.0.1:8081'"),
        "{yml}"
    );
    assert!(
        yml.contains("job_name: phoenix-api") && yml.contains("'127.0.0.1:443'"),
        "{yml}"
    );
    assert!(!yml.contains("job_name: pushgateway"), "{yml}");
    // Agents' samples arrive by remote write, late ones out of order.
    assert!(
        yml.contains("storage:\n  tsdb:\n    out_of_order_time_window: 21600s\n"),
        "{yml}"
    );
    assert!(
        prom.command
            .contains(&"--web.enable-remote-write-receiver".to_string())
    );
    assert_eq!(
        api.env["PHOENIX_REMOTE_WRITE_URL"],
        "http://127.0.0.1:9090/api/v1/write"
    );
    assert_eq!(api.env["PHOENIX_REMOTE_WRITE_MAX_AGE"], "21600s");
    let c = parse_str("[pushgateway]\nenable = true\n").unwrap();
    let push = c.service("pushgateway").unwrap();
    assert!(
        push.command
            .iter()
            .any(|a| a == "--web.listen-address=127.0.0.1:9091")
    );
    // The API does not need it: it neither waits for it nor knows it.
    let api = c.service("api").unwrap();
    assert_eq!(api.depends_on, ["postgres-setup"]);
    assert!(!api.env.contains_key("PHOENIX_PUSHGATEWAY_URL"));
    let yml = &c.service("prometheus").unwrap().files[0].contents;
    assert!(
        yml.contains("job_name: pushgateway") && yml.contains("honor_labels: true"),
        "{yml}"
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
fn an_override_of_a_builtin_that_is_off_names_the_switch() {
    // The Pushgateway is off by default: overriding it says how to turn it on.
    let err = parse_str("[services.pushgateway]\ndepends_on = [\"network\"]\n").unwrap_err();
    assert_eq!(err.key, "services.pushgateway");
    assert!(
        err.message
            .contains("`pushgateway` is off: turn it on with `[pushgateway] enable = true`"),
        "{err}"
    );
    let err = parse_str("[prometheus]\nenable = false\n[services.prometheus]\nuser = \"x\"\n")
        .unwrap_err();
    assert!(
        err.message.contains("`[prometheus] enable = true`"),
        "{err}"
    );
    // Turning it off in both places is no error.
    parse_str("[services.pushgateway]\nenable = false\n").unwrap();
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
    assert_eq!(
        api.env["PHOENIX_DATABASE_URL"],
        "postgres://db/x?sslmode=verify-full"
    );
    assert_eq!(
        api.env["PHOENIX_DATABASE_PASSWORD_FILE"],
        "/etc/phoenix/db-pw"
    );
}

/// Phase 1 of the growth path: the built-ins' limits are shares of the
/// machine, and so are limits written as `"25%"`; the same file on a
/// bigger instance gives bigger limits.
#[test]
fn limits_written_as_shares_follow_the_machine() {
    let text = "[prometheus]\nlimits = { memory = \"50%\" }\n[services.w]\ncommand = [\"/bin/w\"]\nlimits = { memory = \"10%\", cpus = \"50%\" }\n";
    let path = Path::new("/etc/phoenix/phoenix.toml");
    let on = |memory: u64, cpus: u32| {
        let opts = LoadOptions {
            machine: Machine { memory, cpus },
            ..opts(true, false)
        };
        parse(text, path, &opts).unwrap()
    };
    let (small, big) = (on(4 << 30, 2), on(32 << 30, 8));
    let limits = |c: &Config, name: &str| c.service(name).unwrap().limits;
    assert_eq!(limits(&small, "prometheus").memory, Some(2 << 30));
    assert_eq!(limits(&big, "prometheus").memory, Some(16 << 30));
    let gomemlimit = |c: &Config| c.service("prometheus").unwrap().env["GOMEMLIMIT"].clone();
    assert_eq!(gomemlimit(&small), "1843MiB", "90 % of 2 GiB");
    assert_eq!(gomemlimit(&big), "14745MiB");
    let gomaxprocs = |c: &Config| c.service("prometheus").unwrap().env["GOMAXPROCS"].clone();
    assert_eq!(gomaxprocs(&small), "1", "1.5 CPUs");
    assert_eq!(gomaxprocs(&big), "6");
    // The operator's own environment wins over the sizing.
    let own =
        parse_str("[services.prometheus]\nenv = { GOMAXPROCS = \"2\", GOGC = \"100\" }\n").unwrap();
    let env = &own.service("prometheus").unwrap().env;
    assert_eq!((&env["GOMAXPROCS"][..], &env["GOGC"][..]), ("2", "100"));
    assert!(env.contains_key("GOMEMLIMIT"));
    assert_eq!(
        limits(&small, "prometheus").cpus,
        Some(1.5),
        "default share kept"
    );
    assert_eq!(limits(&big, "prometheus").cpus, Some(6.0));
    assert_eq!(limits(&small, "postgres").memory, Some(1 << 30));
    assert_eq!(limits(&big, "postgres").memory, Some(8 << 30));
    assert_eq!(limits(&small, "w").memory, Some(409 << 20));
    assert_eq!(limits(&small, "w").cpus, Some(1.0));
    assert_eq!(limits(&big, "w").cpus, Some(4.0));
    // Sizes and counts stay as written.
    let fixed = parse_str("[api]\nlimits = { memory = \"3GiB\", cpus = 1.5 }\n").unwrap();
    assert_eq!(fixed.service("api").unwrap().limits.memory, Some(3 << 30));
    assert_eq!(fixed.service("api").unwrap().limits.cpus, Some(1.5));
}

#[test]
fn shares_over_the_whole_machine_are_refused_at_their_key() {
    assert_eq!(
        refused("[postgres]\nlimits = { memory = \"150%\" }\n"),
        "/etc/phoenix/phoenix.toml:2:21: postgres.limits.memory: `150%` is over 100 %: a share is of \
         this machine's memory; write e.g. \"25%\""
    );
    let e = refused("[services.w]\ncommand = [\"/bin/w\"]\nlimits = { cpus = \"250%\" }\n");
    assert!(
        e.starts_with(
            "/etc/phoenix/phoenix.toml:3:19: services.w.limits.cpus: `250%` is over 100 %"
        ),
        "{e}"
    );
    let e = refused("[api]\nlimits = { cpus = \"0%\" }\n");
    assert!(e.contains("api.limits.cpus: `0%` is not a share"), "{e}");
    let e = refused("[api]\nlimits = { cpus = \"two\" }\n");
    assert!(e.contains("is not a number of CPUs or a share"), "{e}");
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
    let api = c.service("api").unwrap();
    assert!(
        !api.env.contains_key("PHOENIX_REMOTE_WRITE_URL"),
        "no receiver without Prometheus"
    );
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
fn postgres_settings_that_bypass_the_loopback_guard_are_refused_in_any_spelling() {
    assert_eq!(
        refused("[postgres]\nsettings = { LISTEN_ADDRESSES = \"0.0.0.0\" }\n"),
        "/etc/phoenix/phoenix.toml:2:14: postgres.settings.LISTEN_ADDRESSES: `LISTEN_ADDRESSES` is \
         PostgreSQL's `listen_addresses`, which the supervisor sets: PostgreSQL only listens on 127.0.0.1"
    );
    // PostgreSQL compares setting names without case, and its -c turns `-` into `_`.
    for (key, name) in [
        ("listen-addresses", "listen_addresses"),
        ("Listen_Addresses", "listen_addresses"),
        ("\"listen_addresses\"", "listen_addresses"),
        ("PORT", "port"),
        ("unix-socket-directories", "unix_socket_directories"),
        ("Unix_Socket_Permissions", "unix_socket_permissions"),
        ("data-directory", "data_directory"),
        ("HBA_FILE", "hba_file"),
        ("ident_file", "ident_file"),
        ("config_file", "config_file"),
        ("archive_mode", "archive_mode"),
        ("Archive-Command", "archive_command"),
        ("restore_command", "restore_command"),
        ("recovery_target_time", "recovery_target_time"),
    ] {
        let err = refused(&format!(
            "[postgres]\n[postgres.settings]\nwork_mem = \"8MB\"\n{key} = \"x\"\n"
        ));
        let shown = key.trim_matches('"');
        assert!(
            err.starts_with(&format!(
                "/etc/phoenix/phoenix.toml:4:1: postgres.settings.{shown}: `{shown}` is PostgreSQL's `{name}`, which the supervisor sets: "
            )),
            "{err}"
        );
    }
    assert_eq!(
        refused("[postgres]\nsettings = { work_mem = \"8MB\", \"Work-Mem\" = \"16MB\" }\n"),
        "/etc/phoenix/phoenix.toml:2:14: postgres.settings.work_mem: `work_mem` and `Work-Mem` \
         are the same PostgreSQL setting, `work_mem`: keep one"
    );
    assert_eq!(
        refused("[postgres]\nsettings = { \"port=5433 x\" = 1 }\n"),
        "/etc/phoenix/phoenix.toml:2:14: postgres.settings.port=5433 x: `port=5433 x` is not a \
         PostgreSQL setting name (letters, digits, `_`, `.`)"
    );
    // Other settings pass, under the name PostgreSQL gives them.
    let c = parse_str(
        "[postgres]\nsettings = { Shared-Buffers = \"1GB\", \"auto_explain.log_min_duration\" = \"1s\", max_connections = 200 }\n",
    )
    .unwrap();
    let cmd = &c.service("postgres").unwrap().command;
    for arg in [
        "shared_buffers=1GB",
        "auto_explain.log_min_duration=1s",
        "max_connections=200",
        "listen_addresses=127.0.0.1",
    ] {
        assert!(cmd.contains(&arg.to_string()), "{arg} in {cmd:?}");
    }
}

#[test]
fn durations_counts_and_sizes_outside_their_range_are_refused_naming_it() {
    for (text, want) in [
        (
            "[supervisor]\nshutdown_timeout = \"18446744073709551615s\"\n",
            "/etc/phoenix/phoenix.toml:2:20: supervisor.shutdown_timeout: `18446744073709551615s` is \
             out of range: give a duration from 1s to 1h",
        ),
        (
            "[prometheus]\nscrape_interval = \"0s\"\n",
            "/etc/phoenix/phoenix.toml:2:19: prometheus.scrape_interval: `0s` is out of range: \
             give a duration from 1s to 1h",
        ),
        (
            "[prometheus]\nout_of_order_window = \"30s\"\n",
            "/etc/phoenix/phoenix.toml:2:23: prometheus.out_of_order_window: `30s` is out of range: \
             give a duration from 1m to 30days",
        ),
        (
            "[services.postgres]\nstop = { timeout = \"2h\" }\n",
            "/etc/phoenix/phoenix.toml:2:20: services.postgres.stop.timeout: `2h` is out of range: \
             give a duration from 100ms to 1h",
        ),
        (
            "[services.api]\nliveness = { interval = \"1ms\" }\n",
            "/etc/phoenix/phoenix.toml:2:25: services.api.liveness.interval: `1ms` is out of range: \
             give a duration from 10ms to 1h",
        ),
        (
            "[services.api]\nreadiness = { start_timeout = \"2days\" }\n",
            "/etc/phoenix/phoenix.toml:2:31: services.api.readiness.start_timeout: `2days` is out of \
             range: give a duration from 100ms to 1day",
        ),
        (
            "[services.api]\nrestart = { max_delay = \"2h\" }\n",
            "/etc/phoenix/phoenix.toml:2:25: services.api.restart.max_delay: `2h` is out of range: \
             give a duration from 10ms to 1h",
        ),
        (
            "[services.api]\nrestart = { start_limit = { burst = 0, interval = \"1m\" } }\n",
            "/etc/phoenix/phoenix.toml:2:37: services.api.restart.start_limit.burst: 0 is out of \
             range: give a whole number from 1 to 1000",
        ),
        (
            "[services.api]\nrestart = { start_limit = { burst = 5, interval = \"0s\" } }\n",
            "/etc/phoenix/phoenix.toml:2:51: services.api.restart.start_limit.interval: `0s` is out \
             of range: give a duration from 1s to 1day",
        ),
        (
            "[services.api]\nliveness = { failures = 1000 }\n",
            "/etc/phoenix/phoenix.toml:2:25: services.api.liveness.failures: 1000 is out of range: \
             give a whole number from 1 to 100",
        ),
        (
            "[scaling.cpu]\nsustain = \"30days\"\n",
            "/etc/phoenix/phoenix.toml:2:11: scaling.cpu.sustain: `30days` is out of range: give a \
             duration from 0s to 1day",
        ),
        (
            "[supervisor]\nlog_keep = 0\n",
            "/etc/phoenix/phoenix.toml:2:12: supervisor.log_keep: 0 is out of range: give a whole \
             number from 1 to 1000",
        ),
        (
            "[supervisor]\nlog_max_size = \"1KiB\"\n",
            "/etc/phoenix/phoenix.toml:2:16: supervisor.log_max_size: 1KiB is out of range: give a \
             size from 4KiB to 1GiB",
        ),
        (
            "[api]\nlimits = { memory = 1000 }\n",
            "/etc/phoenix/phoenix.toml:2:21: api.limits.memory: 1000 bytes is out of range: give a \
             size from 1MiB to 16TiB",
        ),
        (
            "[api]\nlimits = { cpus = 0.001 }\n",
            "/etc/phoenix/phoenix.toml:2:12: api.limits.cpus: 0.001 is out of range: give a number \
             of CPUs from 0.01 to 1024, or a share such as \"50%\"",
        ),
        (
            "[services.api]\nlimits = { pids = 0 }\n",
            "/etc/phoenix/phoenix.toml:2:19: services.api.limits.pids: 0 is out of range: give a \
             whole number from 1 to 4194304",
        ),
        (
            "[postgres]\nport = 0\n",
            "/etc/phoenix/phoenix.toml:2:8: postgres.port: 0 is out of range: give a whole number \
             from 1 to 65535",
        ),
        (
            "[prometheus]\nretention = \"forever\"\n",
            "/etc/phoenix/phoenix.toml:2:1: prometheus.retention: \"forever\" is not a Prometheus \
             duration: write e.g. \"15d\", \"12w\" or \"1y\"",
        ),
    ] {
        assert_eq!(refused(text), want, "{text}");
    }
    // The bounds themselves are allowed.
    let c = parse_str(
        "[supervisor]\nshutdown_timeout = \"1h\"\n[prometheus]\nscrape_interval = \"1s\"\n\
         [services.api]\nstop = { timeout = \"100ms\" }\n",
    )
    .unwrap();
    assert_eq!(c.supervisor.shutdown_timeout, Duration::from_secs(3600));
    assert!(
        c.service("prometheus").unwrap().files[0]
            .contents
            .contains("scrape_interval: 1000ms")
    );
    let c = parse_str("[prometheus]\nout_of_order_window = \"30days\"\n").unwrap();
    assert!(
        c.service("prometheus").unwrap().files[0]
            .contents
            .contains("out_of_order_time_window: 2592000s")
    );
    assert_eq!(
        c.service("api").unwrap().env["PHOENIX_REMOTE_WRITE_MAX_AGE"],
        "2592000s"
    );
}

#[test]
fn listeners_on_port_zero_are_refused() {
    assert_eq!(
        refused("[api]\nagent_listen = \"0.0.0.0:0\"\n"),
        "/etc/phoenix/phoenix.toml:2:16: api.agent_listen: `0.0.0.0:0` has port 0: give the port \
         to listen on, e.g. \"0.0.0.0:8080\""
    );
    let err = refused("[tls]\nhttp_listen = \"[::]:0\"\n");
    assert!(
        err.starts_with(
            "/etc/phoenix/phoenix.toml:2:1: tls.http_listen: \"[::]:0\" is not an address"
        ),
        "{err}"
    );
}

#[test]
fn empty_paths_are_refused() {
    assert_eq!(
        refused("[supervisor]\nstate_dir = \"\"\n"),
        "/etc/phoenix/phoenix.toml:2:13: supervisor.state_dir: is empty: give a path, e.g. \
         \"/var/lib/phoenix\""
    );
    let err = refused("[services.w]\ncommand = [\"/bin/w\"]\nworking_dir = \"\"\n");
    assert!(
        err.starts_with("/etc/phoenix/phoenix.toml:3:15: services.w.working_dir: is empty"),
        "{err}"
    );
}

/// Phase 2: `[postgres] url` replaces the built-in PostgreSQL with an
/// external one, over TLS that verifies the server (verify-full).
#[test]
fn an_external_database_replaces_the_built_in_over_verified_tls() {
    let text = "[postgres]\nurl = \"postgres://phoenix@db.example:6432/phoenix\"\n\
                ca_file = \"/etc/phoenix/rds-ca.pem\"\npassword_file = \"/etc/phoenix/db-password\"\n";
    let c = parse_str(text).unwrap();
    assert!(c.backup.is_none(), "backups of the built-in step aside");
    for name in ["postgres-init", "postgres", "postgres-setup"] {
        assert!(c.service(name).is_none(), "{name} steps aside");
    }
    let api = c.service("api").unwrap();
    assert_eq!(
        api.env["PHOENIX_DATABASE_URL"],
        "postgres://phoenix@db.example:6432/phoenix?sslmode=verify-full&sslrootcert=%2Fetc%2Fphoenix%2Frds-ca.pem"
    );
    assert_eq!(
        api.env["PHOENIX_DATABASE_PASSWORD_FILE"],
        "/etc/phoenix/db-password"
    );
    assert!(api.depends_on.is_empty(), "{:?}", api.depends_on);
    let db = c.external_database.as_ref().unwrap();
    assert_eq!(
        (db.host.as_str(), db.port, db.tls),
        ("db.example", 6432, true)
    );
    assert_eq!(
        db.ca_file.as_deref(),
        Some(Path::new("/etc/phoenix/rds-ca.pem"))
    );
    assert!(parse_str("").unwrap().external_database.is_none());

    // A database on this machine may turn TLS off; another may not.
    let local = parse_str(
        "[postgres]\nurl = \"postgres://phoenix@127.0.0.1:5433/phoenix?sslmode=disable\"\n",
    )
    .unwrap();
    assert!(!local.external_database.unwrap().tls);
    assert_eq!(
        refused("[postgres]\nurl = \"postgres://phoenix@db.example/phoenix?sslmode=require\"\n"),
        "/etc/phoenix/phoenix.toml:2:1: postgres.url: sslmode=require does not verify the server's \
         certificate and name: remove it (verify-full is the default) and name the server's CA \
         bundle in ca_file"
    );
    let e = refused("[postgres]\nenable = true\nurl = \"postgres://phoenix@db.example/phoenix\"\n");
    assert!(
        e.starts_with("/etc/phoenix/phoenix.toml:2:1: postgres.enable: `url` names an external"),
        "{e}"
    );
    let e = refused("[postgres]\nca_file = \"/etc/phoenix/ca.pem\"\n");
    assert!(
        e.contains("postgres.ca_file: is for an external database"),
        "{e}"
    );
    let e = refused("[postgres]\nurl = \"postgres://phoenix@db.example/phoenix?sslrootcert=/x\"\n");
    assert!(e.contains("use password_file and ca_file instead"), "{e}");
}

/// Phase 2: Prometheus sends every sample on to remote stores, and the
/// API may read its metrics from one.
#[test]
fn prometheus_sends_to_remote_stores_and_the_api_may_query_one() {
    let text = "[prometheus]\nquery_url = \"https://mimir.example/prometheus\"\n\
                [[prometheus.remote_write]]\nurl = \"https://mimir.example/api/v1/push\"\nbearer_token_file = \"/etc/phoenix/mimir-token\"\n\
                [[prometheus.remote_write]]\nurl = \"https://vm.example/api/v1/write\"\nusername = \"phoenix\"\npassword_file = \"/etc/phoenix/vm-password\"\nca_file = \"/etc/phoenix/vm-ca.pem\"\n";
    let c = parse_str(text).unwrap();
    let yml = &c.service("prometheus").unwrap().files[0].contents;
    assert!(
        yml.ends_with(
            "remote_write:\n  - url: \"https://mimir.example/api/v1/push\"\n    authorization:\n      \
             credentials_file: \"/etc/phoenix/mimir-token\"\n  - url: \"https://vm.example/api/v1/write\"\n    \
             basic_auth:\n      username: \"phoenix\"\n      password_file: \"/etc/phoenix/vm-password\"\n    \
             tls_config:\n      ca_file: \"/etc/phoenix/vm-ca.pem\"\n"
        ),
        "{yml}"
    );
    let api = c.service("api").unwrap();
    assert_eq!(
        api.env["PHOENIX_PROMETHEUS_URL"],
        "https://mimir.example/prometheus"
    );
    assert!(
        api.env["PHOENIX_REMOTE_WRITE_URL"].ends_with(":9090/api/v1/write"),
        "agents' samples still reach the store through the appliance's Prometheus"
    );

    // Without the appliance's Prometheus, the API writes to the store itself.
    let c = parse_str("[prometheus]\nenable = false\nwrite_url = \"http://vm.example:8428/api/v1/write\"\nquery_url = \"http://vm.example:8428\"\n").unwrap();
    assert!(c.service("prometheus").is_none());
    let api = c.service("api").unwrap();
    assert_eq!(
        api.env["PHOENIX_REMOTE_WRITE_URL"],
        "http://vm.example:8428/api/v1/write"
    );
    assert_eq!(api.env["PHOENIX_PROMETHEUS_URL"], "http://vm.example:8428");

    for (text, expected) in [
        (
            "[[prometheus.remote_write]]\nbearer_token_file = \"/t\"\n",
            "prometheus.remote_write.0.url: is missing",
        ),
        (
            "[[prometheus.remote_write]]\nurl = \"ftp://x/\"\n",
            "prometheus.remote_write.0.url: \"ftp://x/\" is not an http:// or https:// URL",
        ),
        (
            "[[prometheus.remote_write]]\nurl = \"https://x/\"\nusername = \"u\"\n",
            "prometheus.remote_write.0.password_file: basic auth needs both",
        ),
        (
            "[[prometheus.remote_write]]\nurl = \"https://x/\"\nbearer_token_file = \"/t\"\nusername = \"u\"\npassword_file = \"/p\"\n",
            "bearer token or basic auth",
        ),
        (
            "[prometheus]\nwrite_url = \"http://x/\"\n",
            "prometheus.write_url: is for enable = false",
        ),
        (
            "[prometheus]\nenable = false\nwrite_url = \"http://x/\"\n",
            "prometheus.query_url: with the appliance's Prometheus off",
        ),
        (
            "[prometheus]\nquery_url = \"mimir\"\n",
            "prometheus.query_url: \"mimir\" is not a URL",
        ),
    ] {
        let e = refused(text);
        assert!(e.contains(expected), "{text}: {e}");
    }
}

#[test]
fn external_url_with_a_password_is_refused_without_showing_it() {
    let err = refused(
        "[postgres]\nenable = false\nexternal_url = \"postgres://phoenix:hunter2@db.example/phoenix\"\n",
    );
    assert_eq!(
        err,
        "/etc/phoenix/phoenix.toml:3:1: postgres.external_url: contains a password: remove it and \
         put the password in the file named by password_file (a URL shows up in process \
         listings and logs)"
    );
    let err = refused("[postgres]\nenable = false\nexternal_url = \"mysql://db/phoenix\"\n");
    assert!(err.contains("must start with postgres://"), "{err}");
}

#[test]
fn unknown_users_are_refused_at_their_key() {
    let checking = LoadOptions {
        users: Some(crate::process::can_run_as),
        ..opts(true, false)
    };
    let user = "phoenix-no-such-user";
    let text = format!(
        "[prometheus]\nuser = \"{user}\"\n[services.w]\ncommand = [\"/bin/w\"]\nuser = \"{user}\"\n"
    );
    let err = parse(&text, Path::new("/etc/phoenix/phoenix.toml"), &checking).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "/etc/phoenix/phoenix.toml:2:1: prometheus.user: user `{user}` does not exist; create it \
             (e.g. `useradd --system {user}`) or set another user"
        )
    );
    let text = format!("[services.w]\ncommand = [\"/bin/w\"]\nuser = \"{user}\"\n");
    let err = parse(&text, Path::new("/etc/phoenix/phoenix.toml"), &checking).unwrap_err();
    assert_eq!(
        (err.line, err.column, err.key.as_str()),
        (3, 1, "services.w.user")
    );
    // check-config does not look users up (a build sandbox has none).
    parse_str(&text).unwrap();
}

#[test]
fn reload_refuses_what_needs_a_restart_at_the_changed_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phoenix.toml");
    let opts = opts(true, false);
    let base =
        "[supervisor]\nstate_dir = \"/srv/phoenix\"\n[health]\nlisten = \"127.0.0.1:8081\"\n";
    let running = parse(base, &path, &opts).unwrap();
    let refusal = |text: &str| {
        std::fs::write(&path, text).unwrap();
        match reload(&path, &opts, &running) {
            Ok(_) => panic!("reload accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    };
    let file = path.display();
    assert_eq!(
        refusal(&base.replace("/srv/phoenix", "/srv/other")),
        format!(
            "{file}:2:1: supervisor.state_dir: cannot change while running (running with \
             /srv/phoenix): restart phoenix-supervisor to apply it"
        )
    );
    assert_eq!(
        refusal(&format!("\n{}", base.replace("8081", "9081"))),
        format!(
            "{file}:5:1: health.listen: cannot change while running (running with \
             127.0.0.1:8081): restart phoenix-supervisor to apply it"
        )
    );
    assert_eq!(
        refusal(&format!(
            "{base}[tls]\nmode = \"acme\"\nhostnames = [\"phoenix.example.com\"]\n"
        )),
        format!(
            "{file}:6:1: tls.mode: cannot change while running (running with mode = \
             \"self-signed\"): restart phoenix-supervisor to apply it"
        )
    );
    assert_eq!(
        refusal(&format!("{base}[tls]\nhttp_listen = \"off\"\n")),
        format!(
            "{file}:6:1: tls.http_listen: cannot change while running (running with \
             0.0.0.0:80): restart phoenix-supervisor to apply it"
        )
    );
    // Everything else reloads.
    std::fs::write(
        &path,
        format!("{base}[prometheus]\nscrape_interval = \"30s\"\n"),
    )
    .unwrap();
    reload(&path, &opts, &running).unwrap();
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
    assert!(err.message.contains("out of range"), "{err}");
    let err = service(", cool_down = \"10m\", cool_down_max = \"5m\"").unwrap_err();
    assert_eq!(
        err.key, "services.w.restart.start_limit.cool_down_max",
        "{err}"
    );
    assert!(err.message.contains("at least cool_down (10m)"), "{err}");
}

#[test]
fn backups_archive_wal_by_default_and_take_a_daily_full_and_hourly_diff() {
    let c = parse_str("").unwrap();
    let b = c.backup.as_ref().expect("backups on by default");
    let schedules: Vec<_> = b
        .schedules
        .iter()
        .map(|s| (s.kind.name(), s.cron.as_str()))
        .collect();
    assert_eq!(schedules, [("full", "0 2 * * *"), ("diff", "0 * * * *")]);
    assert_eq!(b.retention_full_days, 7);
    let pg = c.service("postgres").unwrap();
    let settings: Vec<_> = pg
        .command
        .iter()
        .filter(|a| a.starts_with("archive_"))
        .collect();
    assert_eq!(
        settings,
        [
            "archive_mode=on",
            "archive_command='/usr/bin/pgbackrest' '--config-path=/var/lib/phoenix/generated/pgbackrest' --stanza=phoenix archive-push %p",
            "archive_timeout=60",
        ]
    );
    let stanza = c.service("backup-stanza").unwrap();
    assert!(stanza.oneshot);
    assert_eq!(stanza.user.as_deref(), Some("postgres"));
    assert_eq!(stanza.depends_on, ["postgres"]);
    let conf = &pg.files[0];
    assert_eq!(
        conf.path,
        Path::new("/var/lib/phoenix/generated/pgbackrest/pgbackrest.conf")
    );
    assert!(
        conf.contents
            .contains("repo1-path=/var/lib/phoenix/backup/repo\n")
    );
    assert!(
        conf.contents
            .contains("repo1-retention-full-type=time\nrepo1-retention-full=7\n")
    );
    assert!(
        conf.contents.contains("expire-auto=n\n"),
        "the supervisor expires"
    );

    let counted = parse_str("[backup]\nretention_full_count = 3\n").unwrap();
    let conf = &counted.service("postgres").unwrap().files[0].contents;
    assert!(
        conf.contains("repo1-retention-full-type=count\nrepo1-retention-full=3\n"),
        "{conf}"
    );
    let err =
        parse_str("[backup]\nretention_full_days = 3\nretention_full_count = 3\n").unwrap_err();
    assert_eq!(err.key, "backup.retention_full_count", "{err}");
    assert!(err.message.contains("not both"), "{err}");

    let off = parse_str("[backup]\nenable = false\n").unwrap();
    assert!(off.backup.is_none());
    assert!(off.service("backup-stanza").is_none());
    let pg = off.service("postgres").unwrap();
    assert!(!pg.command.iter().any(|a| a.starts_with("archive_")));
    assert!(pg.files.is_empty());

    let external = parse_str("[postgres]\nenable = false\n[api]\nenable = false\n").unwrap();
    assert!(external.backup.is_none());
}

#[test]
fn bad_backup_settings_are_refused_where_they_are_written() {
    let e = refused("[backup]\nfull = \"0 0 2 * * *\"\n");
    assert!(
        e.starts_with("/etc/phoenix/phoenix.toml:2:1: backup.full: `0 0 2 * * *` is not a cron expression (6 fields, not 5)"),
        "{e}"
    );
    let e = refused("[backup]\ndiff = \"0 25 * * *\"\n");
    assert!(
        e.contains(":2:1: backup.diff: `0 25 * * *` is not a cron expression"),
        "{e}"
    );
    let e = refused("[backup]\nfull = \"\"\n");
    assert!(
        e.contains("backup.full: a schedule for full backups is needed"),
        "{e}"
    );
    let e = refused("[backup]\ncompress = \"xz\"\n");
    assert!(e.contains("backup.compress: `xz` is not one of"), "{e}");
    let e = refused("[backup]\nretention_full_days = 0\n");
    assert!(e.contains("backup.retention_full_days"), "{e}");
    let e = refused("[postgres]\nenable = false\n[backup]\nenable = true\n");
    assert!(
        e.contains("backup.enable: backups are of the PostgreSQL managed here"),
        "{e}"
    );
    let e = refused("[backup]\nschedule = \"daily\"\n");
    assert!(e.contains("unknown field `schedule`"), "{e}");
}

#[test]
fn backup_s3_is_pgbackrests_repo2_with_no_key_in_the_generated_file() {
    let c = parse_str(
        "[backup]\nretention_full_days = 9\n[backup.s3]\nbucket = \"acme-phoenix\"\nregion = \"eu-west-1\"\n\
         kms_key_id = \"arn:aws:kms:eu-west-1:1:key/k\"\nstorage_class = \"STANDARD_IA\"\n",
    )
    .unwrap();
    let b = c.backup.as_ref().unwrap();
    let s3 = b.s3.as_ref().unwrap();
    assert_eq!(
        (s3.prefix.as_str(), s3.host.as_str(), s3.port, s3.path_style),
        ("/phoenix", "s3.eu-west-1.amazonaws.com", None, false)
    );
    assert_eq!(s3.retention_full_days, 9, "the local days by default");
    assert_eq!(s3.key_file, None, "the instance profile by default");
    let names: Vec<&str> = s3.state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["phoenix.toml", "secrets", "tls/cert.pem", "tls/key.pem"]
    );
    assert_eq!(s3.state[0].1, Path::new("/etc/phoenix/phoenix.toml"));
    let conf = &c.service("postgres").unwrap().files[0].contents;
    for line in [
        "repo2-type=s3\n",
        "repo2-path=/phoenix\n",
        "repo2-s3-bucket=acme-phoenix\n",
        "repo2-s3-endpoint=s3.eu-west-1.amazonaws.com\n",
        "repo2-s3-uri-style=host\n",
        "repo2-s3-key-type=auto\n",
        "repo2-s3-kms-key-id=arn:aws:kms:eu-west-1:1:key/k\n",
        "repo2-retention-full=9\n",
    ] {
        assert!(conf.contains(line), "{line} in\n{conf}");
    }
    assert!(!conf.contains("repo2-s3-key="), "{conf}");
    assert_eq!(
        b.keys_include(),
        Path::new("/var/lib/phoenix/generated/pgbackrest/conf.d/s3-keys.conf")
    );

    let c = parse_str(
        "[backup.s3]\nbucket = \"b-1\"\nregion = \"us-east-1\"\nendpoint = \"https://127.0.0.1:9000\"\n\
         uri_style = \"path\"\ncredentials = \"file\"\nkey_file = \"s3-keys\"\nca_file = \"/etc/ca.pem\"\n\
         prefix = \"x/y/\"\n",
    )
    .unwrap();
    let s3 = c.backup.unwrap().s3.unwrap();
    assert_eq!(s3.endpoint_url(), "https://127.0.0.1:9000");
    assert_eq!(
        s3.key_file.as_deref(),
        Some(Path::new("/etc/phoenix/s3-keys"))
    );
    let conf = &c
        .services
        .iter()
        .find(|s| s.name == "postgres")
        .unwrap()
        .files[0]
        .contents;
    for line in [
        "repo2-path=/x/y\n",
        "repo2-s3-endpoint=127.0.0.1\n",
        "repo2-storage-port=9000\n",
        "repo2-s3-uri-style=path\n",
        "repo2-s3-key-type=shared\n",
        "repo2-storage-ca-file=/etc/ca.pem\n",
    ] {
        assert!(conf.contains(line), "{line} in\n{conf}");
    }
}

#[test]
fn bad_backup_s3_settings_are_refused_where_they_are_written() {
    let s3 = |rest: &str| refused(&format!("[backup.s3]\n{rest}"));
    let e = s3("region = \"eu-west-1\"\n");
    assert!(
        e.starts_with(
            "/etc/phoenix/phoenix.toml:1:9: backup.s3.bucket: [backup.s3] needs `bucket`"
        ),
        "{e}"
    );
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\ncredentials = \"file\"\n");
    assert!(
        e.starts_with("/etc/phoenix/phoenix.toml:4:1: backup.s3.credentials: credentials = \"file\" needs `key_file`"),
        "{e}"
    );
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\nkey_file = \"/k\"\n");
    assert!(
        e.contains(":4:1: backup.s3.key_file: a key file is read only with credentials = \"file\""),
        "{e}"
    );
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\naccess_key_id = \"AKIA\"\n");
    assert!(
        e.contains("backup.s3.access_key_id: unknown field `access_key_id`"),
        "{e}"
    );
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\nendpoint = \"http://minio:9000\"\n");
    assert!(
        e.contains(":4:1: backup.s3.endpoint: `http://minio:9000`: S3 is reached over HTTPS only"),
        "{e}"
    );
    let e = s3("bucket = \"B\"\nregion = \"r\"\n");
    assert!(
        e.contains(":2:1: backup.s3.bucket: `B` is not an S3 bucket name"),
        "{e}"
    );
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\nuri_style = \"virtual\"\n");
    assert!(e.contains("backup.s3.uri_style: `virtual` is not"), "{e}");
    let e = s3("bucket = \"b-1\"\nregion = \"r\"\nstorage_class = \"GLACIER\"\n");
    assert!(
        e.contains("backup.s3.storage_class: `GLACIER` is not one of"),
        "{e}"
    );

    // The key file, checked where it is named.
    let checking = LoadOptions {
        key_files: Some(|p| Err(format!("the key file {} has mode 0644", p.display()))),
        ..opts(true, false)
    };
    let text = "[backup.s3]\nbucket = \"b-1\"\nregion = \"r\"\ncredentials = \"file\"\nkey_file = \"/etc/phoenix/k\"\n";
    let e = parse(text, Path::new("/etc/phoenix/phoenix.toml"), &checking)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/etc/phoenix/phoenix.toml:5:1: backup.s3.key_file: the key file /etc/phoenix/k has mode 0644"
    );
}

#[test]
fn the_alertmanager_is_off_until_asked_and_then_loopback_without_gossip() {
    let c = parse_str("").unwrap();
    assert!(c.service("alertmanager").is_none());
    let prom = c.service("prometheus").unwrap();
    let yml = &prom.files[0].contents;
    assert!(!yml.contains("alerting:"), "{yml}");
    // The rules, beside prometheus.yml, named in it.
    assert!(
        yml.contains("rule_files:\n  - \"/var/lib/phoenix/generated/prometheus/rules.yml\"\n"),
        "{yml}"
    );
    assert_eq!(
        prom.files[1].path,
        Path::new("/var/lib/phoenix/generated/prometheus/rules.yml")
    );

    let c = parse_str(
        "[alertmanager]\nenable = true\n\
         [[alertmanager.webhook]]\nurl = \"https://hooks.example.com/x\"\nbearer_token_file = \"hook-token\"\n",
    )
    .unwrap();
    let am = c.service("alertmanager").unwrap();
    assert_eq!(am.user.as_deref(), Some("prometheus"));
    assert_eq!(am.env["GOMAXPROCS"], "1", "a quarter of the CPUs");
    assert!(am.env.contains_key("GOMEMLIMIT") && !am.env.contains_key("GOGC"));
    assert_eq!(am.ports, ["127.0.0.1:9093".parse().unwrap()]);
    assert!(
        am.command
            .contains(&"--cluster.listen-address=".to_string())
    );
    let am_yml = &am.files[0].contents;
    // Relative to the config file, by name only.
    assert!(
        am_yml.contains("credentials_file: \"/etc/phoenix/hook-token\"\n"),
        "{am_yml}"
    );
    let yml = &c.service("prometheus").unwrap().files[0].contents;
    assert!(
        yml.contains("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:9093']\n"),
        "{yml}"
    );
    assert!(yml.contains("job_name: alertmanager"), "{yml}");
}

#[test]
fn bad_alerting_settings_are_refused_at_their_key() {
    let e = refused(
        "[alertmanager]\nenable = true\n[[alertmanager.webhook]]\nurl = \"https://a.example/x\"\n[[alertmanager.webhook]]\nurl = \"hooks.example.com\"\n",
    );
    assert!(
        e.starts_with("/etc/phoenix/phoenix.toml:6:1: alertmanager.webhook.1.url: "),
        "{e}"
    );
    assert!(e.contains("is not an http:// or https:// URL"), "{e}");
    let e = refused(
        "[alertmanager]\nenable = true\n[alertmanager.email]\nto = \"oncall\"\nfrom = \"p@example.com\"\nsmarthost = \"smtp:25\"\n",
    );
    assert!(
        e.contains("alertmanager.email.to: \"oncall\" is not an email address"),
        "{e}"
    );
    let e = refused(
        "[alertmanager]\nenable = true\n[alertmanager.email]\nto = \"o@example.com\"\nfrom = \"p@example.com\"\nsmarthost = \"smtp\"\n",
    );
    assert!(
        e.contains("alertmanager.email.smarthost: \"smtp\" is not host:port"),
        "{e}"
    );
    let e = refused("[prometheus]\nenable = false\n[alertmanager]\nenable = true\n");
    assert!(e.contains("alertmanager.enable: "), "{e}");
    let e = refused("[alerts]\npending = \"2 days\"\n");
    assert!(e.contains("alerts.pending"), "{e}");
    let e = refused("[alerts]\nfor = \"1m\"\n");
    assert!(e.contains("unknown field `for`"), "{e}");
    // Off: no rules, and prometheus.yml names none.
    let c = parse_str("[alerts]\nenable = false\n").unwrap();
    let prom = c.service("prometheus").unwrap();
    assert_eq!(prom.files.len(), 1);
    assert!(!prom.files[0].contents.contains("rule_files"));
}
