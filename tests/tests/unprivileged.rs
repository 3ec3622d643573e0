//! The whole stack as an ordinary user (dev): no user switching, state owned
//! by that user, same behaviour.

use std::time::Duration;

use nix::sys::signal::Signal;
use phoenix_tests::{Supervisor, processes_matching};

#[test]
fn full_stack_runs_as_an_unprivileged_user() {
    let root = nix::unistd::geteuid().is_root();
    // A service that names the supervisor's own user explicitly: allowed
    // without root, and started without any user switch.
    let me = if root {
        "nobody".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    };
    let ports = phoenix_tests::StackPorts::free();
    let mut s = Supervisor::config(&ports.config(&format!(
        "[services.own]\ncommand = [\"{}\", \"run\"]\nuser = \"{me}\"\n",
        phoenix_tests::bin("phoenix-testprog").display()
    )));
    let wrapper = if root {
        s.run_as(65534, 65534)
    } else {
        Vec::new()
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    s.start_with(&wrapper);
    s.wait_all_ready(Duration::from_secs(180));
    assert_eq!(s.state_of("own"), "ready", "{}", s.stderr());
    let (code, health) = s.health();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("pass")),
        "{health}"
    );

    // Every service runs as the supervisor's own user.
    let me = std::fs::read_to_string(format!("/proc/{}/status", s.pid_of("postgres"))).unwrap();
    let uid_line = me
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let sup = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert!(
        sup.contains(&uid_line),
        "postgres runs as the supervisor's user: {uid_line}"
    );
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(s.path("state/tls/key.pem")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o600);
    assert_eq!(key.uid(), std::fs::metadata(s.path("state")).unwrap().uid());

    let socket = std::fs::metadata(s.socket()).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o600, "control socket is owner-only");

    s.signal(Signal::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        s.stderr()
    );
    assert!(processes_matching(&s.path("state").display().to_string()).is_empty());
}
