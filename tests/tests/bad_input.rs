//! Bad input gets a clear error and leaves nothing half-started.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use phoenix_tests::{NO_BUILTINS, Supervisor, bin, processes_matching, testprog};

fn check_config(s: &Supervisor) -> (i32, String) {
    let out = Command::new(bin("phoenix-supervisor"))
        .arg("check-config")
        .arg("--config")
        .arg(&s.config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Run the supervisor expecting it to refuse: exit 1, the error on stderr,
/// no service process, no control socket.
fn refuses(s: &mut Supervisor, tag: &str) -> String {
    s.start();
    let status = s.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", s.stderr());
    assert!(processes_matching(tag).is_empty(), "nothing was started");
    assert!(!s.socket().exists());
    s.stderr()
}

#[test]
fn check_config_accepts_a_valid_file_and_lists_services() {
    let s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.w]\ncommand = [\"{}\", \"run\"]\n",
        testprog()
    ));
    let (code, out) = check_config(&s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 services: w)"), "{out}");
    assert!(!s.path("state").exists(), "check-config creates nothing");
}

#[test]
fn malformed_toml_is_refused_with_its_location() {
    let mut s = Supervisor::config("");
    std::fs::write(&s.config, "[supervisor]\nstate_dir = \"/tmp/x\n").unwrap();
    let (code, out) = check_config(&s);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("{}:2:", s.config.display())), "{out}");
    let err = refuses(&mut s, "never-started");
    assert!(err.contains("phoenix.toml:2:"), "{err}");
}

#[test]
fn unknown_key_is_refused_naming_the_key() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.w]\ncommand = [\"/bin/true\"]\nrestrat = {{}}\n"
    ));
    let (code, out) = check_config(&s);
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `restrat`"), "{out}");
    let line = std::fs::read_to_string(&s.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("restrat"))
        .unwrap()
        + 1;
    assert!(
        out.contains(&format!("phoenix.toml:{line}:1: services.w.restrat")),
        "{out}"
    );
    refuses(&mut s, "never-started");
}

#[test]
fn missing_binary_is_refused_before_anything_starts() {
    let tag = format!("missing-{}", std::process::id());
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.ok]\ncommand = [\"{}\", \"run\", \"{tag}\"]\n[services.bad]\ncommand = [\"/opt/nowhere/worker\"]\n",
        testprog()
    ));
    let err = refuses(&mut s, &tag);
    assert!(
        err.contains("service bad: program `/opt/nowhere/worker` not found"),
        "{err}"
    );
    assert!(!s.path("state").exists(), "no state created");
}

#[test]
fn taken_ports_are_refused_naming_the_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // A built-in's port...
    let mut s = Supervisor::config(&format!(
        "[postgres]\nenable = false\nexternal_url = \"postgres://x@127.0.0.1:1/x\"\n[api]\nenable = false\n[pushgateway]\nenable = false\n\
         [prometheus]\nbin = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n",
        testprog()
    ));
    let err = refuses(&mut s, "never-started");
    assert!(
        err.contains(&format!(
            "service prometheus: cannot listen on 127.0.0.1:{port}"
        )),
        "{err}"
    );
    // ...and the health port.
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.w]\ncommand = [\"{}\", \"run\", \"hp-tag\"]\n",
        testprog()
    ));
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("127.0.0.1:{}", s.health_port),
        &format!("127.0.0.1:{port}"),
    );
    std::fs::write(&s.config, text).unwrap();
    let err = refuses(&mut s, "hp-tag");
    assert!(
        err.contains(&format!(
            "[health] listen = 127.0.0.1:{port}: cannot listen"
        )),
        "{err}"
    );
}

#[test]
fn unwritable_state_dir_is_refused() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.w]\ncommand = [\"{}\", \"run\", \"sd-tag\"]\n",
        testprog()
    ));
    std::fs::write(s.path("not-a-dir"), "").unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("state_dir = \"{}\"", s.path("state").display()),
        &format!("state_dir = \"{}\"", s.path("not-a-dir/state").display()),
    );
    std::fs::write(&s.config, text).unwrap();
    let err = refuses(&mut s, "sd-tag");
    assert!(
        err.contains("state_dir") && err.contains("cannot be used"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_an_error_unless_it_is_the_default_path() {
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["check-config", "--config", "/nonexistent/phoenix.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn phoenixctl_without_a_supervisor_says_so() {
    let out = Command::new(bin("phoenixctl"))
        .args(["--socket", "/nonexistent/control.sock", "health"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreachable counts as failing health"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is phoenix-supervisor running"));
}

/// The growth path's keys refuse what cannot work, before anything starts:
/// a share over the whole machine, an external database reached without
/// verifying it, a remote-write store without a URL.
#[test]
fn growth_keys_that_cannot_work_are_refused_at_their_key() {
    for (toml, expected) in [
        (
            "[postgres]\nlimits = { memory = \"150%\" }\n",
            "phoenix.toml:2:21: postgres.limits.memory: `150%` is over 100 %",
        ),
        (
            "[postgres]\nurl = \"postgres://phoenix@db.example/phoenix?sslmode=require\"\n",
            "phoenix.toml:2:1: postgres.url: sslmode=require does not verify the server's certificate",
        ),
        (
            "[postgres]\nurl = \"postgres://phoenix:secret@db.example/phoenix\"\n",
            "postgres.url: contains a password",
        ),
        (
            "[[prometheus.remote_write]]\nbearer_token_file = \"/etc/phoenix/token\"\n",
            "prometheus.remote_write.0.url: is missing",
        ),
    ] {
        let err = phoenix_tests::config_refused(toml);
        assert!(err.contains(expected), "{toml}: {err}");
        assert!(
            !err.contains("secret"),
            "the password is not repeated: {err}"
        );
    }
}
