//! [services.*] restart: backoff, start limit, recovery from kill -9, oneshot.

use std::time::Duration;

use phoenix_tests::{NO_BUILTINS, Supervisor, testprog};

#[test]
fn killed_service_is_restarted_and_health_returns_to_pass() {
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.web]\ncommand = [\"{}\", \"serve\", \"{port}\"]\nreadiness = {{ tcp = \"127.0.0.1:{port}\", interval = \"20ms\" }}\n\
         restart = {{ initial_delay = \"100ms\" }}\n",
        testprog()
    ));
    s.start();
    s.wait_state("web", "ready", Duration::from_secs(10));
    let first = s.pid_of("web");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    phoenix_tests::wait_until("a new pid", Duration::from_secs(10), || {
        let svc = s.service("web");
        (svc["state"] == "ready" && svc["pid"].as_i64() != Some(first as i64)).then_some(())
    });
    let svc = s.service("web");
    assert_eq!(svc["restarts"], 1);
    assert_eq!(svc["last_exit"], "killed by SIGKILL");
    let (code, health) = s.health();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("pass")),
        "{health}"
    );
}

#[test]
fn crash_loop_is_parked_as_failed_and_the_rest_keeps_running() {
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.crasher]\ncommand = [\"{p}\", \"exit\", \"3\"]\n\
         restart = {{ initial_delay = \"10ms\", max_delay = \"40ms\", start_limit = {{ burst = 4, interval = \"60s\" }} }}\n\
         [services.steady]\ncommand = [\"{p}\", \"serve\", \"{port}\"]\nreadiness = {{ tcp = \"127.0.0.1:{port}\" }}\n",
        p = testprog()
    ));
    s.start();
    s.wait_state("crasher", "failed", Duration::from_secs(10));
    let crasher = s.service("crasher");
    // Four starts in the window: the first plus three restarts, then parked.
    assert_eq!(crasher["restarts"], 3, "{crasher}");
    assert!(
        crasher["last_error"]
            .as_str()
            .unwrap()
            .contains("parked as failed"),
        "{crasher}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.service("crasher")["restarts"],
        3,
        "a parked service is not restarted again"
    );
    let log = std::fs::read_to_string(s.path("log/crasher.log")).unwrap();
    assert_eq!(log.matches("started pid").count(), 4, "{log}");
    assert!(
        log.contains("stderr exiting with 3"),
        "child output is in its log file: {log}"
    );

    s.wait_state("steady", "ready", Duration::from_secs(10));
    let (code, health) = s.health();
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["status"], "fail");
    assert_eq!(health["checks"]["crasher:state"][0]["status"], "fail");
    assert_eq!(health["checks"]["steady:state"][0]["status"], "pass");
    let out = s.ctl(&["health"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "phoenixctl health exits 2 on fail"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("crasher"));

    // An operator start resets the limit and tries again.
    let msg = Supervisor::ok(&s.ctl(&["start", "crasher"]));
    assert!(msg.contains("starting crasher"), "{msg}");
    s.wait_state("crasher", "failed", Duration::from_secs(10));
    let log = std::fs::read_to_string(s.path("log/crasher.log")).unwrap();
    assert_eq!(log.matches("started pid").count(), 8, "{log}");
}

#[test]
fn restart_never_parks_a_failed_service_and_on_failure_leaves_clean_exits() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.never]\ncommand = [\"{p}\", \"exit\", \"1\"]\nrestart = {{ policy = \"never\" }}\n\
         [services.clean]\ncommand = [\"{p}\", \"exit\", \"0\"]\nrestart = {{ policy = \"on-failure\" }}\n",
        p = testprog()
    ));
    s.start();
    s.wait_state("never", "failed", Duration::from_secs(10));
    s.wait_state("clean", "stopped", Duration::from_secs(10));
    assert_eq!(s.service("never")["restarts"], 0);
    assert_eq!(s.service("clean")["restarts"], 0);
    assert_eq!(s.service("clean")["last_exit"], "exit code 0");
}

#[test]
fn oneshot_gates_dependents_until_it_exits_zero() {
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.migrate]\ncommand = [\"{p}\", \"exit\", \"0\", \"--after-ms\", \"300\"]\noneshot = true\n\
         [services.app]\ncommand = [\"{p}\", \"serve\", \"{port}\", \"--log\", \"{log}\", \"--name\", \"app\"]\ndepends_on = [\"migrate\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\" }}\n",
        p = testprog(),
        log = "/dev/null"
    ));
    s.start();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.state_of("migrate"), "starting");
    assert_eq!(s.state_of("app"), "stopped", "waits for the oneshot");
    assert_eq!(
        s.service("app")["depends_on"][0],
        "migrate",
        "status says what it waits for"
    );
    s.wait_state("app", "ready", Duration::from_secs(10));
    assert_eq!(s.state_of("migrate"), "exited");
    let (code, _) = s.health();
    assert_eq!(code, 200);
}

#[test]
fn failing_oneshot_is_retried_then_parked_and_dependents_never_start() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.migrate]\ncommand = [\"{p}\", \"exit\", \"9\"]\noneshot = true\n\
         restart = {{ initial_delay = \"10ms\", start_limit = {{ burst = 2, interval = \"1m\" }} }}\n\
         [services.app]\ncommand = [\"{p}\", \"run\"]\ndepends_on = [\"migrate\"]\n",
        p = testprog()
    ));
    s.start();
    s.wait_state("migrate", "failed", Duration::from_secs(10));
    assert_eq!(s.state_of("app"), "stopped");
    assert!(s.service("app")["pid"].is_null());
}

#[test]
fn parked_service_is_started_again_after_the_cool_down() {
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config("");
    let flag = s.path("fixed");
    // Crashes until the flag file exists, like a service waiting for a
    // disk to be mounted or a dependency outside the appliance.
    s.write_config(&format!(
        "{NO_BUILTINS}[services.flaky]\ncommand = [\"/bin/sh\", \"-c\", \"test -e {flag} && exec {p} serve {port}; exit 3\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\", interval = \"20ms\" }}\n\
         restart = {{ initial_delay = \"10ms\", start_limit = {{ burst = 2, interval = \"1m\", cool_down = \"2s\" }} }}\n",
        flag = flag.display(),
        p = testprog()
    ));
    s.start();
    s.wait_state("flaky", "failed", Duration::from_secs(10));
    let (code, health) = s.health();
    assert_eq!(code, 503, "{health}");
    let check = &health["checks"]["flaky:state"][0];
    assert_eq!(check["status"], "fail", "{health}");
    assert!(
        check["output"].as_str().unwrap().contains("next try in 2s"),
        "{health}"
    );
    assert!(check["retryAt"].is_string(), "{health}");

    std::fs::write(&flag, "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.state_of("flaky"),
        "failed",
        "parked until the cool-down ends"
    );
    s.wait_state("flaky", "ready", Duration::from_secs(10));
    let (code, health) = s.health();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("pass")),
        "{health}"
    );
    assert!(health["checks"]["flaky:state"][0]["retryAt"].is_null());
    let log = std::fs::read_to_string(s.path("log/flaky.log")).unwrap();
    assert!(log.contains("cool-down over: starting again"), "{log}");
}
