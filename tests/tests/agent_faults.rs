//! A real agent meeting what goes wrong: a `kill -9` mid-task and with a
//! full queue, a revoked credential, a wrong CA, an API that is not there,
//! a queue over its bound and a full disk. Each ends in a clear message,
//! and nothing that was written is lost or counted twice.

use std::time::{Duration, Instant};

use phoenix_tests::agents::{AgentProc, raw_samples, scalar};
use phoenix_tests::{Stack, Supervisor, TestCa, free_port, root_or_opted_out, wait_until};
use serde_json::{Value, json};

const CONFIG: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\" }\n";

fn token(s: &Stack, admin: &str, uses: u32) -> String {
    s.enrollment_token(admin, &json!({ "uses": uses })).1
}

fn started(s: &Stack, admin: &str, name: &str, extra: &str) -> AgentProc {
    let mut a = AgentProc::new(s, name, &token(s, admin, 1), extra);
    a.start();
    a
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn collections(a: &AgentProc) -> f64 {
    wait_until(
        &format!("{}'s /metrics", a.name),
        Duration::from_secs(30),
        || a.metric("phoenix_agent_collections_total"),
    )
}

/// The single task of `kind` the agent `agent` was given, once finished.
fn finished_task(s: &Stack, token: &str, agent: &str, kind: &str) -> Value {
    wait_until(
        &format!("the {kind} task finished"),
        Duration::from_secs(60),
        || {
            let r = s.get(Some(token), &format!("/api/v1/tasks?agent={agent}"));
            assert_eq!(r.status, 200, "{r:?}");
            let tasks: Vec<&Value> = r
                .body
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"] == kind)
                .collect();
            assert!(tasks.len() <= 1, "one {kind} task: {tasks:#?}");
            let id = tasks.first()?["id"].as_str()?.to_owned();
            let t = s.get(Some(token), &format!("/api/v1/tasks/{id}")).body;
            matches!(t["state"].as_str(), Some("succeeded" | "failed")).then_some(t)
        },
    )
}

/// `kill -9` as a task arrives, then again with an hour's worth of
/// collections and a result waiting for an API that is away: on restart the
/// experiment goes on, the task is reported once, and every collection made
/// before the kill reaches Prometheus at its time.
#[test]
fn a_kill_9_mid_task_and_with_a_full_queue_loses_nothing_written() {
    let s = Stack::start_without_pushgateway(CONFIG);
    let users = s.users();
    let mut a = started(&s, &users.admin, "crash", "");
    let id = a.id();
    collections(&a);

    let r = s.post(
        Some(&users.operator),
        "/api/v1/experiments",
        &json!({
            "name": "crash",
            "baseline": { "spec": { "stages": [] } },
            "candidate": { "spec": { "stages": [{ "type": "top_k", "k": 3, "by": "memory" }] } },
            "agents": [id],
            "duration": 600,
        }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let experiment = r.body["id"].as_str().unwrap().to_owned();
    let start = s.post(
        Some(&users.operator),
        &format!("/api/v1/experiments/{experiment}/start"),
        &json!({}),
    );
    assert_eq!(start.status, 200, "{start:?}");
    // Killed the moment the task is in its log, mid-way through running and
    // reporting it.
    wait_until("the task received", Duration::from_secs(60), || {
        a.log().contains("run_experiment").then_some(())
    });
    a.kill9();
    a.start();
    let task = finished_task(&s, &users.viewer, &id, "run_experiment");
    assert_eq!(task["state"], "succeeded", "{task:#}");
    assert_eq!(task["results"].as_array().unwrap().len(), 1, "{task:#}");
    assert_eq!(task["attempts"], 1, "{task:#}");

    // The API goes away; the queue fills; the agent is killed.
    let prom = s.ports.prometheus_url("");
    let other = format!(
        "phoenix_process_memory_bytes{{agent=\"{id}\",experiment=\"{experiment}\",variant=\"candidate\",process=\"other\"}}"
    );
    wait_until("candidate samples", Duration::from_secs(60), || {
        scalar(&prom, &format!("count_over_time({other}[10s])"))
    });
    let before = collections(&a);
    let t0 = now_ms();
    Supervisor::ok(&s.sup.ctl(&["stop", "api"]));
    std::thread::sleep(Duration::from_secs(15));
    let at_kill = collections(&a);
    let t1 = now_ms();
    a.kill9();
    let queued = a.status();
    assert!(
        queued["queue"]["batches"].as_i64().unwrap() >= 10,
        "{queued:#}"
    );
    assert_eq!(queued["experiments"].as_array().unwrap().len(), 1);

    Supervisor::ok(&s.sup.ctl(&["start", "api"]));
    a.start();
    wait_until("the queue drained", Duration::from_secs(120), || {
        a.drained_until(t1).then_some(())
    });
    let samples = raw_samples(&prom, &format!("{other}[5m]"));
    let stamps = samples[0]
        .1
        .iter()
        .filter(|(t, _)| (t0..=t1).contains(t))
        .count();
    let collected = at_kill - before;
    println!("{collected} collections before the kill, {stamps} samples stored for them");
    assert!(
        (stamps as f64 - collected).abs() <= 1.0,
        "every collection before the kill is stored: {stamps} of {collected}"
    );
    // The experiment goes on after the restart.
    let restarted = now_ms();
    wait_until(
        "candidate samples after the restart",
        Duration::from_secs(30),
        || {
            raw_samples(&prom, &format!("{other}[1m]"))[0]
                .1
                .iter()
                .any(|(t, _)| *t > restarted)
                .then_some(())
        },
    );
    assert_eq!(a.status()["queue"]["rejected_batches"], 0);
}

/// A revoked agent stops at once with exit 78, says how to enroll again,
/// and keeps what it queued; a refused enrollment token and an invalid
/// configuration also exit 78.
#[test]
fn a_revoked_credential_stops_the_agent_and_says_to_enroll_again() {
    let s = Stack::start_without_pushgateway("");
    let users = s.users();
    let mut a = started(&s, &users.admin, "revoked", "");
    let id = a.id();
    collections(&a);
    let r = s.delete(Some(&users.operator), &format!("/api/v1/agents/{id}"));
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    let status = a.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(78), "{}", a.log());
    let log = a.log();
    assert!(log.contains("refused this agent's credential"), "{log}");
    assert!(log.contains("enroll anew"), "{log}");
    // The credential and the queue are kept for the operator to look at.
    let st = a.status();
    assert_eq!(st["agent_id"], json!(id), "{st:#}");
    assert_eq!(st["queue"]["evicted_batches"], 0, "{st:#}");

    // What else retrying cannot fix ends the same way, so that systemd
    // does not restart it in a loop: a refused enrollment token...
    let mut refused = AgentProc::new(&s, "bad-token", "phxe_not-a-token", "");
    refused.start();
    let status = refused.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(78), "{}", refused.log());
    let log = refused.log();
    assert!(log.contains("enrollment refused"), "{log}");
    assert!(
        log.contains("ask an admin for a new enrollment token"),
        "{log}"
    );
    // ...and an invalid configuration, named with its line.
    let mut invalid = AgentProc::new(&s, "invalid", "unused", "[queue]\nmax_age = \"soon\"\n");
    invalid.start();
    let status = invalid.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "{}", invalid.log());
    let log = invalid.log();
    assert!(
        log.contains("agent.toml:"),
        "the file and line are named: {log}"
    );
    assert!(log.contains("queue.max_age"), "the key is named: {log}");
}

/// The wrong CA, and an API that is not listening: the agent says which,
/// keeps running and retrying, and enrolls once the fault is fixed.
#[test]
fn a_wrong_ca_and_an_absent_api_are_named_and_retried() {
    let s = Stack::start_without_pushgateway("");
    let users = s.users();
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new(dir.path(), "other");
    let token = token(&s, &users.admin, 2);

    let mut wrong_ca = AgentProc::new(&s, "wrong-ca", &token, "");
    let toml = std::fs::read_to_string(wrong_ca.config()).unwrap();
    let right = s.sup.path("state/tls/cert.pem");
    std::fs::write(
        wrong_ca.config(),
        toml.replace(
            &right.display().to_string(),
            &other.root.display().to_string(),
        ),
    )
    .unwrap();
    wrong_ca.start();

    let nowhere = format!("https://127.0.0.1:{}", free_port());
    let mut absent = AgentProc::with_api(&nowhere, Some(&right), "absent", &token, "");
    absent.start();

    wait_until("both say why", Duration::from_secs(30), || {
        (wrong_ca.log().contains("cannot reach the control plane")
            && absent.log().contains("cannot reach the control plane"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let wrong_log = wrong_ca.log();
    assert!(
        wrong_log.to_lowercase().contains("certificate"),
        "a wrong CA is named as a certificate problem: {wrong_log}"
    );
    let absent_log = absent.log();
    assert!(
        absent_log.contains("Connection refused") || absent_log.contains("connect"),
        "{absent_log}"
    );
    assert!(wrong_ca.running() && absent.running());
    for a in [&wrong_ca, &absent] {
        let tries = a.log().matches("cannot reach the control plane").count();
        assert!(tries >= 2, "{}: retried: {}", a.name, a.log());
        assert!(tries <= 10, "{}: backs off: {}", a.name, a.log());
    }

    // Fixed: the right CA, and it enrolls with the token it kept.
    wrong_ca.stop();
    std::fs::write(wrong_ca.config(), toml).unwrap();
    wrong_ca.start();
    let id = wrong_ca.id();
    let r = s.get(Some(&users.viewer), &format!("/api/v1/agents/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
}

/// A queue over its age bound while the API is away: the oldest batches
/// are evicted, counted in the status and /metrics and logged, and the
/// agent goes on; once the API is back the rest is delivered.
#[test]
fn a_queue_over_its_bound_evicts_the_oldest_and_counts_them() {
    let s = Stack::start_without_pushgateway("");
    let users = s.users();
    let a = started(&s, &users.admin, "bounded", "[queue]\nmax_age = \"5s\"\n");
    a.id();
    collections(&a);
    Supervisor::ok(&s.sup.ctl(&["stop", "api"]));
    let evicted = wait_until("evictions", Duration::from_secs(60), || {
        let st = a.status();
        let n = st["queue"]["evicted_batches"].as_i64().unwrap();
        (n >= 5).then_some(st)
    });
    assert!(
        evicted["oldest_age_secs"].as_i64().unwrap() <= 6,
        "nothing older than max_age stays: {evicted:#}"
    );
    assert!(
        evicted["queue"]["evicted_samples"].as_i64().unwrap() > 0,
        "{evicted:#}"
    );
    assert!(
        a.metric("phoenix_agent_evicted_batches_total").unwrap() >= 5.0,
        "{}",
        a.metrics()
    );
    assert!(
        a.log()
            .contains("evicted queued batches older than the queue's max_age"),
        "{}",
        a.log()
    );
    Supervisor::ok(&s.sup.ctl(&["start", "api"]));
    wait_until("the queue drained", Duration::from_secs(60), || {
        (a.status()["queue"]["batches"].as_i64().unwrap() <= 2).then_some(())
    });
}

/// A full disk under the state folder: the agent evicts its oldest batches
/// to go on queueing, counts them, and does not crash; once there is room
/// again it queues and delivers as before.
#[test]
fn a_full_disk_evicts_counts_and_does_not_crash() {
    if !root_or_opted_out("a tmpfs to fill") {
        return;
    }
    let s = Stack::start_without_pushgateway("");
    let users = s.users();
    let mut a = AgentProc::new(&s, "full-disk", &token(&s, &users.admin, 1), "");
    let mount = a.state();
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m,mode=0700",
            "phoenix-agent-test",
        ])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    let _unmount = Unmount(mount.clone());
    a.start();
    a.id();
    collections(&a);
    Supervisor::ok(&s.sup.ctl(&["stop", "api"]));
    // Fill what is left.
    let filler = mount.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let full_at = Instant::now();
    wait_until("evictions for a full disk", Duration::from_secs(60), || {
        a.log().contains("the disk is full").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.running(), "no crash: {}", a.log());
    let before = collections(&a);
    std::thread::sleep(Duration::from_secs(3));
    assert!(collections(&a) > before, "collection goes on");
    let unwritten = a.metric("phoenix_agent_collections_unwritten").unwrap();
    assert!(
        unwritten <= 2.0,
        "each collection is written or dropped (counted), none waits: {unwritten} wait\n{}",
        a.log()
    );
    assert!(
        a.metric("phoenix_agent_evicted_batches_total").unwrap() >= 1.0,
        "{}\n{}",
        a.metrics(),
        a.log()
    );
    println!("evicting {:?} after the disk filled", full_at.elapsed());
    // Room again: the API comes back and the queue drains.
    std::fs::remove_file(&filler).unwrap();
    Supervisor::ok(&s.sup.ctl(&["start", "api"]));
    wait_until("the queue drained", Duration::from_secs(60), || {
        (a.status()["queue"]["batches"].as_i64().unwrap() <= 2).then_some(())
    });
    assert!(a.running());
    a.stop();
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
