//! As real PID 1 (in a PID namespace) and as a subreaper: every orphan is
//! reaped, and SIGTERM stops everything in reverse order with exit 0.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use phoenix_tests::{
    NO_BUILTINS, Supervisor, children_of, processes_matching, testprog, wait_until,
};

fn orphan_config(log: &str, tag: &str) -> String {
    let p = testprog();
    format!(
        "{NO_BUILTINS}\
         [services.base]\ncommand = [\"{p}\", \"run\", \"--log\", \"{log}\", \"--name\", \"base\", \"{tag}\"]\n\
         [services.orphaner]\ncommand = [\"{p}\", \"orphans\", \"5\", \"300\", \"{tag}\"]\noneshot = true\ndepends_on = [\"base\"]\n\
         [services.top]\ncommand = [\"{p}\", \"run\", \"--log\", \"{log}\", \"--name\", \"top\", \"{tag}\"]\ndepends_on = [\"orphaner\"]\n"
    )
}

fn check_orphans_reaped(s: &Supervisor, host_pid: i32) {
    s.wait_all_ready(Duration::from_secs(20));
    wait_until("orphans reaped", Duration::from_secs(10), || {
        (s.status()["orphans_reaped"].as_u64() >= Some(5)).then_some(())
    });
    let zombies: Vec<_> = children_of(host_pid)
        .into_iter()
        .filter(|(_, st)| *st == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    // Only the two long-running services remain as children.
    assert_eq!(
        children_of(host_pid).len(),
        2,
        "{:?}",
        children_of(host_pid)
    );
}

fn stop_order(s: &Supervisor) -> Vec<String> {
    std::fs::read_to_string(s.path("events"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn as_pid1_in_a_pid_namespace_reaps_orphans_and_stops_in_order() {
    let tag = format!("pid1-{}", std::process::id());
    let mut s = Supervisor::config("");
    s.write_config(&orphan_config(
        &s.path("events").display().to_string(),
        &tag,
    ));
    s.start_with(&["unshare", "--pid", "--fork", "--mount-proc"]);
    let unshare = s.pid();
    let host_pid = wait_until(
        "supervisor inside the namespace",
        Duration::from_secs(10),
        || children_of(unshare).first().map(|(p, _)| *p),
    );
    wait_until("pid1 flag", Duration::from_secs(10), || {
        s.try_status().filter(|st| st["pid1"] == true)
    });
    check_orphans_reaped(&s, host_pid);

    kill(Pid::from_raw(host_pid), Signal::SIGTERM).unwrap();
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "PID 1 exits 0 after an orderly stop: {status}\n{}",
        s.stderr()
    );
    assert_eq!(
        stop_order(&s),
        ["start base", "start top", "stop top", "stop base"]
    );
    assert!(processes_matching(&tag).is_empty());
}

#[test]
fn as_subreaper_reaps_orphans_of_its_services() {
    let tag = format!("subreaper-{}", std::process::id());
    let mut s = Supervisor::config("");
    s.write_config(&orphan_config(
        &s.path("events").display().to_string(),
        &tag,
    ));
    s.start();
    check_orphans_reaped(&s, s.pid());
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(20)).success());
    assert_eq!(
        stop_order(&s),
        ["start base", "start top", "stop top", "stop base"]
    );
    assert!(processes_matching(&tag).is_empty());
}

/// A descriptor the supervisor inherits (here a root-owned file opened by
/// its parent shell as fd 7) must not reach the services, which run as
/// other users.
#[test]
fn services_inherit_no_descriptor_of_the_supervisor() {
    let mut s = Supervisor::config("");
    let secret = s.path("root-only");
    std::fs::write(&secret, "secret").unwrap();
    let seen = s.path("fds-seen");
    s.write_config(&format!(
        "{NO_BUILTINS}\
         [services.lister]\n\
         command = [\"/bin/sh\", \"-c\", \"for f in /proc/$$/fd/*; do readlink $f; done > {seen}.tmp; mv {seen}.tmp {seen}; exec sleep 300\"]\n",
        seen = seen.display()
    ));
    let opener = format!("exec 7<'{}'; exec \"$@\"", secret.display());
    s.start_with(&["/bin/sh", "-c", &opener, "sh"]);
    let listed = wait_until(
        "the service lists its descriptors",
        Duration::from_secs(20),
        || std::fs::read_to_string(&seen).ok(),
    );
    assert!(!listed.is_empty());
    assert!(
        !listed.lines().any(|l| l == secret.display().to_string()),
        "the service holds the supervisor's inherited descriptor: {listed}"
    );
}
