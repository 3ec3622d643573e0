//! phoenixctl reload / SIGHUP: only changed services restart; a bad file changes nothing.

use std::time::Duration;

use nix::sys::signal::Signal;
use phoenix_tests::{NO_BUILTINS, Supervisor, free_port, tcp_listeners, testprog};

fn two_services(greeting: &str, extra: &str) -> String {
    let p = testprog();
    format!(
        "{NO_BUILTINS}[services.keep]\ncommand = [\"{p}\", \"run\"]\n\
         [services.change]\ncommand = [\"{p}\", \"run\"]\nenv = {{ GREETING = \"{greeting}\" }}\n{extra}"
    )
}

#[test]
fn reload_restarts_only_changed_services_and_adds_and_removes() {
    let mut s = Supervisor::config(&two_services("hello", ""));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    let (keep, change) = (s.pid_of("keep"), s.pid_of("change"));

    s.write_config(&two_services(
        "bonjour",
        &format!(
            "[services.added]\ncommand = [\"{}\", \"run\"]\n",
            testprog()
        ),
    ));
    let msg = Supervisor::ok(&s.ctl(&["reload"]));
    assert!(
        msg.contains("change: restarting") && msg.contains("added: added"),
        "{msg}"
    );
    assert!(!msg.contains("keep"), "{msg}");
    phoenix_tests::wait_until("change restarted", Duration::from_secs(10), || {
        let svc = s.service("change");
        (svc["state"] == "ready" && svc["pid"].as_i64() != Some(change as i64)).then_some(())
    });
    s.wait_state("added", "ready", Duration::from_secs(10));
    assert_eq!(s.pid_of("keep"), keep, "unchanged service keeps running");
    let environ = std::fs::read(format!("/proc/{}/environ", s.pid_of("change"))).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("GREETING=bonjour"));

    // Removing a service stops it; SIGHUP does the same as `reload`.
    s.write_config(&two_services("bonjour", ""));
    let added = s.pid_of("added");
    s.signal(Signal::SIGHUP);
    phoenix_tests::wait_until("added removed", Duration::from_secs(10), || {
        s.service("added").is_null().then_some(())
    });
    assert!(!phoenix_tests::process_alive(added));
    assert_eq!(s.pid_of("keep"), keep);
}

#[test]
fn bad_file_is_rejected_and_the_running_config_stays() {
    let mut s = Supervisor::config(&two_services("hello", ""));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    let (keep, change) = (s.pid_of("keep"), s.pid_of("change"));
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{good}\n[bogus]\nx = 1\n")).unwrap();
    let out = s.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("phoenix.toml:") && err.contains("bogus"),
        "{err}"
    );
    std::fs::write(
        &s.config,
        format!("{good}\n[services.x]\ncommand = [\"/bin/true\"]\ndepends_on = [\"ghost\"]\n"),
    )
    .unwrap();
    let out = s.ctl(&["reload"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service `ghost`"));
    s.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.stderr()
            .contains("reload rejected; the running config stays"),
        "{}",
        s.stderr()
    );
    assert_eq!(
        (s.pid_of("keep"), s.pid_of("change")),
        (keep, change),
        "nothing restarted"
    );
    assert!(s.service("x").is_null());
}

#[test]
fn changed_generated_file_sends_the_reload_signal_instead_of_restarting() {
    // prometheus is the built-in with a generated file and a reload signal;
    // stand in for it with a program that records SIGHUPs.
    let p = testprog();
    let body = |interval: &str| {
        format!(
            "[postgres]\nenable = false\nexternal_url = \"postgres://x@127.0.0.1:1/x\"\n[api]\nenable = false\n[pushgateway]\nenable = false\n\
             [prometheus]\nscrape_interval = \"{interval}\"\n\
             [services.prometheus]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'echo reloaded' HUP; while true; do sleep 0.05; done\"]\n\
             readiness = {{ exec = [\"/bin/true\"] }}\nliveness = {{ exec = [\"/bin/true\"] }}\nuser = \"\"\n"
        )
    };
    let _ = p;
    let mut s = Supervisor::config(&body("15s"));
    s.start();
    s.wait_state("prometheus", "ready", Duration::from_secs(10));
    let pid = s.pid_of("prometheus");
    let yml = s.path("state/generated/prometheus/prometheus.yml");
    assert!(
        std::fs::read_to_string(&yml)
            .unwrap()
            .contains("scrape_interval: 15000ms")
    );
    s.write_config(&body("30s"));
    let msg = Supervisor::ok(&s.ctl(&["reload"]));
    assert!(msg.contains("prometheus: sent SIGHUP"), "{msg}");
    assert!(
        std::fs::read_to_string(&yml)
            .unwrap()
            .contains("scrape_interval: 30000ms")
    );
    phoenix_tests::wait_until("reload logged", Duration::from_secs(5), || {
        std::fs::read_to_string(s.path("log/prometheus.log"))
            .ok()?
            .contains("stdout reloaded")
            .then_some(())
    });
    assert_eq!(s.pid_of("prometheus"), pid, "signalled, not restarted");
}

#[test]
fn moving_state_dirs_needs_a_restart_and_is_refused_by_reload() {
    let mut s = Supervisor::config(&two_services("hello", ""));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    let keep = s.pid_of("keep");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("/log\"", "/elsewhere\"");
    std::fs::write(&s.config, text).unwrap();
    let out = s.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("phoenix.toml:4:1: supervisor.log_dir: cannot change while running")
            && err.contains("restart phoenix-supervisor to apply it"),
        "{err}"
    );
    assert_eq!(s.pid_of("keep"), keep);
    assert!(!s.path("elsewhere").exists());
}

#[test]
fn reload_keeps_an_operator_stop_and_start_runs_the_new_spec() {
    let mut s = Supervisor::config(&two_services("hello", ""));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    Supervisor::ok(&s.ctl(&["stop", "change"]));
    s.wait_state("change", "stopped", Duration::from_secs(10));
    s.write_config(&two_services("salut", ""));
    let msg = Supervisor::ok(&s.ctl(&["reload"]));
    assert!(msg.contains("change: updated"), "{msg}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.state_of("change"),
        "stopped",
        "a reload does not undo an operator stop"
    );
    Supervisor::ok(&s.ctl(&["start", "change"]));
    s.wait_state("change", "ready", Duration::from_secs(10));
    let environ = std::fs::read(format!("/proc/{}/environ", s.pid_of("change"))).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("GREETING=salut"));
}

/// PostgreSQL compares setting names without case, so the guard must too:
/// `LISTEN_ADDRESSES` used to pass it, and a reload put PostgreSQL on every
/// address.
#[test]
fn reload_refuses_listen_addresses_in_any_spelling_and_postgres_stays_on_loopback() {
    let port = free_port();
    let config = |settings: &str| {
        format!(
            "[postgres]\nport = {port}\n{settings}\n[prometheus]\nenable = false\n\
             [pushgateway]\nenable = false\n[api]\nenable = false\n"
        )
    };
    let mut s = Supervisor::config(&config(""));
    s.start();
    s.wait_all_ready(Duration::from_secs(180));
    let pid = s.pid_of("postgres");
    let loopback = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    assert_eq!(tcp_listeners(port), loopback);

    s.write_config(&config("settings = { LISTEN_ADDRESSES = \"0.0.0.0\" }"));
    let out = s.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // The supervisor's own two sections come first (lines 1 to 7).
    assert!(
        err.contains(
            "phoenix.toml:10:14: postgres.settings.LISTEN_ADDRESSES: `LISTEN_ADDRESSES` is \
             PostgreSQL's `listen_addresses`, which the supervisor sets"
        ),
        "{err}"
    );
    for spelling in [
        "listen-addresses",
        "Listen_Addresses",
        "PORT",
        "unix-socket-directories",
    ] {
        s.write_config(&config(&format!(
            "settings = {{ {spelling} = \"0.0.0.0\" }}"
        )));
        let out = s.ctl(&["reload"]);
        assert_eq!(out.status.code(), Some(1), "{spelling}");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.pid_of("postgres"), pid, "not restarted");
    assert_eq!(tcp_listeners(port), loopback);
    let password =
        std::fs::read_to_string(s.path("state/secrets/postgres-superuser-password")).unwrap();
    let show = std::process::Command::new("psql")
        .args([
            "-X",
            "-tA",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-c", "SHOW listen_addresses"])
        .env("PGPASSWORD", password.trim())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        "127.0.0.1",
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
}
