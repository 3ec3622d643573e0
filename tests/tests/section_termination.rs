//! Dependency order at start and stop; stop signal, timeout and SIGKILL; no
//! process left behind.

use std::time::Duration;

use nix::sys::signal::Signal;
use phoenix_tests::{NO_BUILTINS, Supervisor, processes_matching, testprog};

fn chain(log: &str, tag: &str) -> String {
    let p = testprog();
    format!(
        "{NO_BUILTINS}\
         [services.c]\ncommand = [\"{p}\", \"run\", \"--log\", \"{log}\", \"--name\", \"c\", \"{tag}\"]\ndepends_on = [\"b\"]\n\
         [services.a]\ncommand = [\"{p}\", \"run\", \"--log\", \"{log}\", \"--name\", \"a\", \"{tag}\"]\nreadiness = {{ log = \"^running$\" }}\n\
         [services.b]\ncommand = [\"{p}\", \"run\", \"--log\", \"{log}\", \"--name\", \"b\", \"{tag}\"]\ndepends_on = [\"a\"]\nreadiness = {{ log = \"running\" }}\n"
    )
}

fn events(s: &Supervisor) -> Vec<String> {
    std::fs::read_to_string(s.path("events"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn starts_in_dependency_order_and_stops_in_reverse_on_sigterm() {
    let tag = format!("tag-{}", std::process::id());
    let mut s = Supervisor::config("");
    s.write_config(&chain(&s.path("events").display().to_string(), &tag));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    assert_eq!(events(&s), ["start a", "start b", "start c"]);
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "supervisor exits 0 after an orderly stop: {status}"
    );
    assert_eq!(
        events(&s),
        [
            "start a", "start b", "start c", "stop c", "stop b", "stop a"
        ]
    );
    assert!(processes_matching(&tag).is_empty(), "no process survives");
    assert!(!s.socket().exists(), "control socket removed");
}

#[test]
fn stop_timeout_escalates_to_sigkill_of_the_whole_group() {
    let tag = format!("stubborn-{}", std::process::id());
    let p = testprog();
    // A shell that ignores SIGTERM, with two children that ignore it too.
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.stubborn]\ncommand = [\"/bin/sh\", \"-c\", \"trap '' TERM; {p} run --ignore-term {tag} & {p} run --ignore-term {tag}; wait\"]\n\
         stop = {{ signal = \"SIGTERM\", timeout = \"300ms\" }}\n"
    ));
    s.start();
    s.wait_state("stubborn", "ready", Duration::from_secs(10));
    phoenix_tests::wait_until("both children", Duration::from_secs(5), || {
        (processes_matching(&tag).len() >= 3).then_some(())
    });
    let msg = Supervisor::ok(&s.ctl(&["stop", "stubborn"]));
    assert!(msg.contains("stopping stubborn"), "{msg}");
    s.wait_state("stubborn", "stopped", Duration::from_secs(5));
    phoenix_tests::wait_until("group killed", Duration::from_secs(5), || {
        processes_matching(&tag).is_empty().then_some(())
    });
    let log = std::fs::read_to_string(s.path("log/stubborn.log")).unwrap();
    assert!(log.contains("stop timeout: SIGKILL"), "{log}");
    // Stopped by the operator: not restarted, health warns.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.state_of("stubborn"), "stopped");
    assert_eq!(s.health().1["status"], "warn");
    Supervisor::ok(&s.ctl(&["start", "stubborn"]));
    s.wait_state("stubborn", "ready", Duration::from_secs(5));
}

#[test]
fn restart_command_replaces_the_process() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.one]\ncommand = [\"{}\", \"run\"]\n",
        testprog()
    ));
    s.start();
    s.wait_state("one", "ready", Duration::from_secs(10));
    let before = s.pid_of("one");
    let msg = Supervisor::ok(&s.ctl(&["restart", "one"]));
    assert!(msg.contains("restarting one"), "{msg}");
    phoenix_tests::wait_until("new pid", Duration::from_secs(5), || {
        let svc = s.service("one");
        (svc["state"] == "ready" && svc["pid"].as_i64() != Some(before as i64)).then_some(())
    });
    assert!(!phoenix_tests::process_alive(before));
    let out = s.ctl(&["restart", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service `nope` (services: one)"));
}

#[test]
fn sigterm_during_startup_still_stops_in_order() {
    let tag = format!("early-{}", std::process::id());
    let p = testprog();
    let port = phoenix_tests::free_port();
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.slow]\ncommand = [\"{p}\", \"serve\", \"{port}\", \"--delay-ms\", \"3000\", \"{tag}\"]\n\
         readiness = {{ tcp = \"127.0.0.1:{port}\" }}\n\
         [services.after]\ncommand = [\"{p}\", \"run\", \"{tag}\"]\ndepends_on = [\"slow\"]\n"
    ));
    s.start();
    s.wait_state("slow", "starting", Duration::from_secs(10));
    s.signal(Signal::SIGINT);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(processes_matching(&tag).is_empty());
    assert!(s.stderr().contains("shutting down"), "{}", s.stderr());
}

/// A supervisor killed with SIGKILL (not PID 1, not under systemd) used to
/// leave its services running; the next one on the same directories then
/// refused to start ("address already in use"). Now it stops them first,
/// in reverse dependency order, and starts clean.
#[test]
fn services_left_by_a_killed_supervisor_are_stopped_by_the_next_one() {
    let ports = phoenix_tests::StackPorts::free();
    let web = phoenix_tests::free_port();
    let mut s = Supervisor::config("");
    let events = s.path("events").display().to_string();
    s.write_config(&format!(
        "[postgres]\nport = {pg}\n[prometheus]\nenable = false\n[pushgateway]\nenable = false\n\
         [api]\nenable = false\n\
         [services.web]\ncommand = [\"{p}\", \"serve\", \"{web}\", \"--log\", \"{events}\", \"--name\", \"web\"]\n\
         depends_on = [\"postgres\"]\nreadiness = {{ tcp = \"127.0.0.1:{web}\" }}\n",
        pg = ports.pg,
        p = testprog()
    ));
    s.start();
    s.wait_all_ready(Duration::from_secs(60));
    let (postgres, web_pid) = (s.pid_of("postgres"), s.pid_of("web"));
    let postgres_group = phoenix_tests::children_of(postgres);
    assert!(!postgres_group.is_empty(), "postgres has its backends");

    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    assert!(phoenix_tests::process_alive(postgres) && phoenix_tests::process_alive(web_pid));

    s.start();
    s.wait_all_ready(Duration::from_secs(60));
    for pid in std::iter::once(postgres)
        .chain(std::iter::once(web_pid))
        .chain(postgres_group.iter().map(|(p, _)| *p))
    {
        assert!(
            !phoenix_tests::process_alive(pid),
            "pid {pid} of the killed supervisor survives"
        );
    }
    assert_ne!(s.pid_of("postgres"), postgres);
    // The old web stopped with its signal before the old postgres, then a
    // new one started.
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines, ["start web", "stop web", "start web"]);
    let log = s.stderr();
    assert!(
        log.contains("left running by an earlier supervisor"),
        "{log}"
    );
    assert!(!log.contains("already in use"), "{log}");
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("left running by an earlier supervisor"))
        .collect();
    assert_eq!(stopped.len(), 2, "{log}");
    assert!(
        stopped[0].contains("web")
            && stopped[1].contains("postgres")
            && stopped[1].contains("SIGINT"),
        "web, then postgres with its own signal: {log}"
    );
    let (code, health) = s.health();
    assert_eq!(code, 200, "{health}");
}
