//! Under systemd (Type=notify): READY=1 once everything is ready, RELOADING=1
//! around a reload, STOPPING=1 at shutdown — read from a real notify socket.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use phoenix_tests::{NO_BUILTINS, Supervisor, testprog};

fn next_message(sock: &UnixDatagram, timeout: Duration) -> String {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notify message");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.web]\ncommand = [\"{}\", \"serve\", \"{port}\", \"--delay-ms\", \"300\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\" }}\n",
        testprog()
    ));
    let path = s.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    s.set_env("NOTIFY_SOCKET", &path.display().to_string());
    let t0 = Instant::now();
    s.start();
    let ready = next_message(&sock, Duration::from_secs(10));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "READY only after the service is ready"
    );
    assert_eq!(s.state_of("web"), "ready");

    s.signal(Signal::SIGHUP);
    assert!(next_message(&sock, Duration::from_secs(5)).contains("RELOADING=1"));
    assert!(next_message(&sock, Duration::from_secs(5)).contains("READY=1"));

    s.signal(Signal::SIGTERM);
    assert!(next_message(&sock, Duration::from_secs(5)).contains("STOPPING=1"));
    assert!(s.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn ready_is_sent_when_start_up_settles_even_with_a_parked_service() {
    let p = testprog();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.broken]\ncommand = [\"{p}\", \"exit\", \"1\", \"--after-ms\", \"50\"]\n\
         readiness = {{ exec = [\"/bin/false\"] }}\n\
         restart = {{ initial_delay = \"10ms\", start_limit = {{ burst = 2, interval = \"1m\" }} }}\n\
         [services.behind]\ncommand = [\"{p}\", \"run\"]\ndepends_on = [\"broken\"]\n\
         [services.fine]\ncommand = [\"{p}\", \"run\"]\n"
    ));
    let path = s.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    s.set_env("NOTIFY_SOCKET", &path.display().to_string());
    s.start();
    let ready = next_message(&sock, Duration::from_secs(10));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert_eq!(s.state_of("broken"), "failed");
    assert_eq!(s.state_of("behind"), "stopped");
    assert_eq!(s.health().0, 503, "health still says what is wrong");
    assert!(
        s.stderr().contains("start-up settled with failed services"),
        "{}",
        s.stderr()
    );
}
