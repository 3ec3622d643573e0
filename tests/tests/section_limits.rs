//! [*.limits]: cgroup v2 resource limits, or one clear warning without them.

use std::time::Duration;

use phoenix_tests::{NO_BUILTINS, Supervisor, testprog};

fn cgroup_v2_with_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| {
        ["memory", "cpu", "pids"]
            .iter()
            .all(|k| c.split_whitespace().any(|w| w == *k))
    })
}

#[test]
fn limits_are_applied_or_reported_once() {
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.limited]\ncommand = [\"{}\", \"run\"]\nlimits = {{ memory = \"64MiB\", cpus = 0.5, pids = 32 }}\n",
        testprog()
    ));
    s.start();
    s.wait_state("limited", "ready", Duration::from_secs(10));
    let status = s.status();
    if cgroup_v2_with_controllers() && status["limits_unavailable"].is_null() {
        let pid = s.pid_of("limited");
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let rel = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .trim();
        assert!(rel.ends_with("/limited"), "{rel}");
        let dir = format!("/sys/fs/cgroup{rel}");
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/memory.max"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/cpu.max"))
                .unwrap()
                .trim(),
            "50000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/pids.max"))
                .unwrap()
                .trim(),
            "32"
        );
    } else {
        let why = status["limits_unavailable"]
            .as_str()
            .expect("reason given when limits are off");
        assert!(!why.is_empty());
        let log = s.stderr();
        assert_eq!(
            log.matches("services run without resource limits").count(),
            1,
            "warned once: {log}"
        );
        let (code, health) = s.health();
        assert_eq!(code, 200);
        assert_eq!(
            health["status"], "pass",
            "a dev machine without cgroups is not unhealthy: {health}"
        );
        assert!(
            health["notes"][0]
                .as_str()
                .unwrap()
                .contains("resource limits are not applied"),
            "{health}"
        );
        eprintln!(
            "cgroup v2 controllers are not available here ({why}); enforcement is covered by the VM test"
        );
    }
}
