//! The whole appliance end to end with real PostgreSQL 15, Prometheus, the
//! Pushgateway and phoenix-api under the supervisor.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use phoenix_tests::{StackPorts, Supervisor, https, processes_matching, wait_until};
use serde_json::Value;

fn api_health(p: &StackPorts) -> Option<Value> {
    let r = https().get(p.api_url("/health")).send().ok()?;
    r.json().ok()
}

/// `up` of a scrape job, as Prometheus itself reports it.
fn prom_up(p: &StackPorts, job: &str) -> Option<f64> {
    let url = p.prometheus_url("/api/v1/query");
    let body: Value = reqwest::blocking::Client::new()
        .get(url)
        .query(&[("query", format!("up{{job=\"{job}\"}}"))])
        .send()
        .ok()?
        .json()
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn kill9_and_recover(s: &Supervisor, service: &str) {
    let before = s.pid_of(service);
    kill(Pid::from_raw(before), Signal::SIGKILL).unwrap();
    wait_until(
        &format!("{service} restarted"),
        Duration::from_secs(60),
        || {
            let svc = s.service(service);
            (svc["pid"].as_i64().is_some_and(|p| p != before as i64)).then_some(())
        },
    );
    wait_until("health pass again", Duration::from_secs(90), || {
        let (code, h) = s.health();
        (code == 200 && h["status"] == "pass").then_some(())
    });
}

fn postgres_log(s: &Supervisor) -> String {
    std::fs::read_to_string(s.path("log/postgres.log")).unwrap_or_default()
}

#[test]
fn full_stack_reaches_ready_recovers_from_kill_9_and_shuts_down_cleanly() {
    // As root the API runs as `phoenix` on a port below 1024, like 443 in
    // production: it keeps CAP_NET_BIND_SERVICE and nothing else.
    let root = nix::unistd::geteuid().is_root();
    let mut p = StackPorts::free();
    if root {
        p.api = phoenix_tests::free_privileged_port();
    }
    let mut s = Supervisor::config(&p.config("[services.api]\nliveness = { interval = \"1s\" }\n"));
    s.start();
    s.wait_all_ready(Duration::from_secs(180));
    let (code, health) = s.health();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("pass")),
        "{health}"
    );
    for name in [
        "postgres-init",
        "postgres",
        "postgres-setup",
        "prometheus",
        "pushgateway",
        "api",
    ] {
        assert_eq!(
            health["checks"][format!("{name}:state")][0]["status"],
            "pass",
            "{name}: {health}"
        );
    }
    let api = api_health(&p).expect("API answers over TLS");
    assert_eq!(api["status"], "pass", "{api}");
    if root {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid_of("api"))).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap_or("").to_string()
        };
        let phoenix_uid = nix::unistd::User::from_name("phoenix")
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
            .to_string();
        assert_eq!(field("Uid:"), phoenix_uid, "the API runs as phoenix");
        assert_eq!(
            field("CapEff:"),
            "0000000000000400",
            "only CAP_NET_BIND_SERVICE is effective"
        );
        assert_eq!(
            field("Groups:"),
            "",
            "no supplementary groups of root: {status}"
        );
    }

    // Secrets: generated, 0600, never in the supervisor's log.
    use std::os::unix::fs::PermissionsExt;
    for secret in ["postgres-superuser-password", "api-db-password"] {
        let path = s.path(&format!("state/secrets/{secret}"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{secret}"
        );
        let value = std::fs::read_to_string(&path).unwrap();
        assert!(
            !s.stderr().contains(value.trim()),
            "{secret} leaked into the log"
        );
    }

    // Prometheus scrapes the supervisor and the API.
    wait_until(
        "prometheus scrapes supervisor and api",
        Duration::from_secs(60),
        || {
            (prom_up(&p, "phoenix-supervisor") == Some(1.0)
                && prom_up(&p, "phoenix-api") == Some(1.0)
                && prom_up(&p, "pushgateway") == Some(1.0))
            .then_some(())
        },
    );

    kill9_and_recover(&s, "postgres");
    wait_until(
        "api sees the database again",
        Duration::from_secs(60),
        || api_health(&p).filter(|h| h["status"] == "pass"),
    );
    kill9_and_recover(&s, "api");
    assert!(api_health(&p).is_some_and(|h| h["status"] == "pass"));

    // Orderly shutdown: everything stops, postgres cleanly.
    let state_dir = s.path("state").display().to_string();
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{status}\n{}", s.stderr());
    assert!(
        processes_matching(&state_dir).is_empty(),
        "no process left behind"
    );
    assert!(
        postgres_log(&s).contains("database system is shut down"),
        "{}",
        postgres_log(&s)
    );

    // Next start: no crash recovery, data kept (the API's role and database exist).
    let before = postgres_log(&s).len();
    s.start();
    s.wait_all_ready(Duration::from_secs(120));
    let second = postgres_log(&s)[before..].to_string();
    assert!(
        second.contains("database system was shut down at"),
        "{second}"
    );
    assert!(
        !second.contains("not properly shut down") && !second.contains("redo starts"),
        "{second}"
    );
    assert!(
        std::fs::read_to_string(s.path("log/postgres-init.log"))
            .unwrap()
            .contains("already initialised")
    );
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(120)).success());
}
