//! The supervisor under a flood of connections to its public health port:
//! it keeps descriptors for its own work, and a check it could not run is
//! never held against a service.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use phoenix_tests::{NO_BUILTINS, Supervisor, testprog, wait_until};

/// Idle connections far beyond the supervisor's open-files limit (128 here)
/// used to exhaust its descriptors: its liveness checks failed with "Too
/// many open files", it stopped healthy services, could not start them
/// again and parked them, and /health stayed 503 after the clients left.
#[test]
fn idle_connections_to_the_health_port_do_not_take_the_services_down() {
    // This process needs descriptors for the flood.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let port = phoenix_tests::free_port();
    let p = testprog();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.web]\ncommand = [\"{p}\", \"serve\", \"{port}\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\", interval = \"20ms\" }}\n\
         liveness = {{ tcp = \"127.0.0.1:{port}\", interval = \"100ms\", failures = 2 }}\n\
         [services.worker]\ncommand = [\"{p}\", \"run\"]\n\
         liveness = {{ exec = [\"/bin/true\"], interval = \"100ms\", failures = 2 }}\n"
    ));
    // Soft and hard limit both: the supervisor raises the soft one to the hard one.
    s.start_with(&["prlimit", "--nofile=128:128", "--"]);
    s.wait_state("web", "ready", Duration::from_secs(10));
    s.wait_state("worker", "ready", Duration::from_secs(10));

    let health = std::net::SocketAddr::from(([127, 0, 0, 1], s.health_port));
    // A full accept queue makes a connect wait for minutes: bounded here.
    let flood: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect_timeout(&health, Duration::from_millis(200)).ok())
        .collect();
    assert!(flood.len() > 128, "only {} connections", flood.len());
    // Twenty liveness intervals under the flood.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let status = s
            .status_within(Duration::from_secs(5))
            .expect("the control socket answers during the flood");
        for svc in status["services"].as_array().unwrap() {
            assert_eq!(svc["state"], "ready", "during the flood: {status}");
            assert_eq!(svc["restarts"], 0, "during the flood: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The flood's connections are closed after the header timeout (5 s):
    // /health answers while the flood is still connected.
    let (code, body) = wait_until("/health during the flood", Duration::from_secs(15), || {
        s.http("/health").ok()
    });
    assert_eq!(code, 200, "{body}");
    drop(flood);

    let (code, health) = s.health();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("pass")),
        "{health}"
    );
    for name in ["web", "worker"] {
        let svc = s.service(name);
        assert_eq!(
            (svc["state"].as_str(), svc["restarts"].as_u64()),
            (Some("ready"), Some(0)),
            "{svc}"
        );
    }
    let log = s.stderr();
    assert!(!log.contains("liveness check failed"), "{log}");
    assert!(log.contains("connection limit reached"), "{log}");
}
