//! readiness (tcp, http, exec, log) gates dependents; liveness restarts a hung service.

use std::time::{Duration, Instant};

use phoenix_tests::{NO_BUILTINS, Supervisor, testprog};

#[test]
fn each_readiness_kind_gates_its_dependent() {
    let p = testprog();
    let (t, h) = (phoenix_tests::free_port(), phoenix_tests::free_port());
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}\
         [services.tcp]\ncommand = [\"{p}\", \"serve\", \"{t}\", \"--delay-ms\", \"400\"]\nreadiness = {{ tcp = \"127.0.0.1:{t}\" }}\n\
         [services.http]\ncommand = [\"{p}\", \"serve\", \"{h}\", \"--delay-ms\", \"300\"]\ndepends_on = [\"tcp\"]\n\
         readiness = {{ http = \"http://127.0.0.1:{h}/ready\" }}\n\
         [services.exec]\ncommand = [\"{p}\", \"run\"]\ndepends_on = [\"http\"]\n\
         readiness = {{ exec = [\"/bin/sh\", \"-c\", \"test -e {flag}\"], interval = \"50ms\" }}\n\
         [services.log]\ncommand = [\"/bin/sh\", \"-c\", \"sleep 0.3; echo 'server is UP now'; exec {p} run\"]\ndepends_on = [\"exec\"]\n\
         readiness = {{ log = \"is UP\" }}\n\
         [services.last]\ncommand = [\"{p}\", \"run\"]\ndepends_on = [\"log\"]\n",
        flag = "/tmp/never"
    ));
    // Point the exec check at a file in this test's dir.
    let flag = s.path("flag");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("/tmp/never", &flag.display().to_string());
    std::fs::write(&s.config, text).unwrap();
    let t0 = Instant::now();
    s.start();
    s.wait_state("tcp", "ready", Duration::from_secs(10));
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "not ready before it listens"
    );
    assert_eq!(s.state_of("exec"), "stopped", "waits for http");
    s.wait_state("exec", "starting", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.state_of("exec"),
        "starting",
        "exec check fails until the file exists"
    );
    assert_eq!(s.state_of("log"), "stopped");
    std::fs::write(&flag, "").unwrap();
    s.wait_state("exec", "ready", Duration::from_secs(5));
    s.wait_state("last", "ready", Duration::from_secs(10));
    let log = std::fs::read_to_string(s.path("log/log.log")).unwrap();
    assert!(log.contains("stdout server is UP now"), "{log}");
}

#[test]
fn not_ready_within_start_timeout_is_restarted() {
    let p = testprog();
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.never_ready]\ncommand = [\"{p}\", \"run\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\", interval = \"50ms\", start_timeout = \"300ms\" }}\n\
         restart = {{ initial_delay = \"50ms\", start_limit = {{ burst = 2, interval = \"1m\" }} }}\n"
    ));
    s.start();
    s.wait_state("never_ready", "failed", Duration::from_secs(10));
    let log = std::fs::read_to_string(s.path("log/never_ready.log")).unwrap();
    assert_eq!(log.matches("started pid").count(), 2, "{log}");
    assert!(
        s.stderr().contains("not ready within 300ms"),
        "{}",
        s.stderr()
    );
}

#[test]
fn liveness_failures_restart_a_hung_service() {
    let p = testprog();
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.hangs]\ncommand = [\"{p}\", \"serve\", \"{port}\", \"--hang-after-ms\", \"500\"]\n\
         readiness = {{ http = \"http://127.0.0.1:{port}/\" }}\n\
         liveness = {{ http = \"http://127.0.0.1:{port}/\", interval = \"100ms\", timeout = \"100ms\", failures = 3 }}\n\
         restart = {{ initial_delay = \"50ms\" }}\n"
    ));
    s.start();
    s.wait_state("hangs", "ready", Duration::from_secs(10));
    let first = s.pid_of("hangs");
    // Hangs after 500 ms; three failed checks later it is restarted.
    phoenix_tests::wait_until("restart after hang", Duration::from_secs(10), || {
        (s.service("hangs")["restarts"].as_u64() >= Some(1)).then_some(())
    });
    s.wait_state("hangs", "ready", Duration::from_secs(10));
    assert_ne!(s.pid_of("hangs"), first);
    let log = std::fs::read_to_string(s.path("log/hangs.log")).unwrap();
    assert!(log.contains("liveness failed 3 times: restarting"), "{log}");
    assert!(
        s.stderr().contains("liveness check failed"),
        "{}",
        s.stderr()
    );
}
