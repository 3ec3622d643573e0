//! Phase 3 of the growth path (docs/scaling.md): three API replicas on one
//! database: the stack's API and two more `phoenix-api` processes with its
//! settings. The singleton work (the experiment driver, the sweeps) runs on
//! the replica holding the advisory lock and moves within seconds when that
//! one is killed; a running experiment still completes and no task is
//! claimed twice; 300 simulated agents spread across the replicas are all
//! served; a login limit hit on one replica holds on the others.

use std::time::{Duration, Instant};

use phoenix_tests::agents::AgentProc;
use phoenix_tests::replicas::{Replica, singleton};
use phoenix_tests::{Stack, https, wait_until};
use serde_json::{Value, json};

/// A fast driver, two free failures per user name and source; the stack's
/// API, once killed, comes back only after the test has seen the handover.
const CONFIG: &str = "[services.api]\n\
    env = { PHOENIX_EXPERIMENT_TICK = \"300ms\", PHOENIX_LOGIN_FAILURES_PER_USER_SOURCE = \"2\" }\n\
    restart = { initial_delay = \"60s\", max_delay = \"60s\" }\n";

fn login(url: &str, user: &str, password: &str) -> reqwest::blocking::Response {
    https()
        .post(url)
        .json(&json!({ "username": user, "password": password }))
        .send()
        .unwrap()
}

#[test]
fn three_replicas_share_the_work_hand_the_singleton_over_and_share_login_limits() {
    let stack = Stack::start_without_pushgateway(CONFIG);
    let replicas = [Replica::start(&stack, 2), Replica::start(&stack, 3)];
    let first = stack.ports.api_url("/health");
    let urls = [
        first.clone(),
        replicas[0].url("/health"),
        replicas[1].url("/health"),
    ];
    let holders = |urls: &[String]| -> Vec<String> { urls.iter().map(|u| singleton(u)).collect() };
    let seen = wait_until(
        "one replica to hold the singleton lock",
        Duration::from_secs(20),
        || {
            let h = holders(&urls);
            (h.iter().filter(|s| *s == "held").count() == 1
                && h.iter().all(|s| s == "held" || s == "standby"))
            .then_some(h)
        },
    );
    println!("singleton: {seen:?}");
    assert_eq!(seen[0], "held", "the stack's API started first and took it");

    // A login limit hit on one replica holds on the others.
    let login_urls = [
        stack.ports.api_url("/api/v1/auth/login"),
        replicas[0].url("/api/v1/auth/login"),
        replicas[1].url("/api/v1/auth/login"),
    ];
    let mut refused_on_first = None;
    for attempt in 1..=6 {
        let r = login(&login_urls[0], "admin", "not-the-password");
        if r.status() == 429 {
            refused_on_first = Some(attempt);
            break;
        }
        assert_eq!(r.status(), 401);
    }
    assert_eq!(refused_on_first, Some(4), "2 free failures, then a wait");
    let mut retry_after = 0;
    for url in &login_urls[1..] {
        let r = login(url, "admin", &stack.admin_password());
        assert_eq!(r.status(), 429, "{url}: the limit holds on every replica");
        retry_after = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    assert!(retry_after >= 1);
    assert_eq!(
        login(&login_urls[2], "someone-else", "wrong").status(),
        401,
        "another user name from the same source is not held back"
    );

    // 300 simulated agents, enrolled and beating through the three replicas.
    // Honouring Retry-After (each refused attempt would double the wait).
    std::thread::sleep(Duration::from_millis(retry_after * 1000 + 300));
    let admin = stack_login(&replicas[0], &stack.admin_password());
    let (_, token) = stack.enrollment_token(&admin, &json!({ "uses": 303 }));
    let agent_ports = [stack.ports.agent, replicas[0].agent, replicas[1].agent];
    let t0 = Instant::now();
    for i in 0..300 {
        let port = agent_ports[i % 3];
        let r = https()
            .post(format!("https://127.0.0.1:{port}/api/v1/agents/enroll"))
            .json(&json!({ "token": token, "name": format!("sim-{i}"), "hostname": format!("sim-{i}.example"), "labels": {}, "version": "0.1.0" }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "enroll sim-{i} on port {port}");
        let credential = r.json::<Value>().unwrap()["credential"]
            .as_str()
            .unwrap()
            .to_string();
        let beat = https()
            .post(format!(
                "https://127.0.0.1:{}/api/v1/agent/heartbeat",
                agent_ports[(i + 1) % 3]
            ))
            .bearer_auth(&credential)
            .json(&json!({}))
            .send()
            .unwrap();
        assert!(
            beat.status().is_success(),
            "heartbeat of sim-{i}: {}",
            beat.status()
        );
    }
    println!(
        "300 agents enrolled and beating across 3 replicas in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let agents = stack.get(Some(&admin), "/api/v1/agents");
    assert_eq!(agents.status, 200, "{agents:?}");
    let listed = agents
        .body
        .as_array()
        .map(Vec::len)
        .or_else(|| agents.body["agents"].as_array().map(Vec::len));
    assert!(listed.is_some_and(|n| n >= 300), "{listed:?}");

    // Three real agents, each on another replica, in an experiment.
    let ca = stack.sup.path("state/tls/cert.pem");
    let mut real: Vec<AgentProc> = agent_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut a = AgentProc::with_api(
                &format!("https://127.0.0.1:{port}"),
                Some(&ca),
                &format!("real-{i}"),
                &token,
                "",
            );
            a.start();
            a
        })
        .collect();
    let ids: Vec<String> = real.iter().map(|a| a.id()).collect();
    let r = stack.post(
        Some(&admin),
        "/api/v1/experiments",
        &json!({
            "name": "across replicas",
            "baseline": { "spec": { "stages": [] } },
            "candidate": { "spec": { "stages": [{ "type": "top_k", "k": 5, "by": "memory" }] } },
            "agents": ids,
            "duration": 20,
        }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        stack
            .post(
                Some(&admin),
                &format!("/api/v1/experiments/{id}/start"),
                &json!({})
            )
            .status,
        200
    );
    let state = |admin: &str| {
        stack
            .get(Some(admin), &format!("/api/v1/experiments/{id}"))
            .body
    };
    wait_until("the experiment to run", Duration::from_secs(60), || {
        (state(&admin)["state"] == "running").then_some(())
    });

    // Kill -9 the holder; another replica takes the lock within 10 s.
    let killed = stack.sup.pid_of("api");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    let others = [replicas[0].url("/health"), replicas[1].url("/health")];
    let taken = wait_until(
        "another replica to take the lock",
        Duration::from_secs(10),
        || {
            let h = holders(&others);
            (h.iter().filter(|s| *s == "held").count() == 1).then_some(h)
        },
    );
    let handover = t0.elapsed();
    println!(
        "the singleton moved in {:.1} s: {taken:?}",
        handover.as_secs_f64()
    );
    assert!(handover < Duration::from_secs(10));

    // The experiment completes, driven by the new holder.
    let admin2 = stack_login(&replicas[0], &stack.admin_password());
    let done = wait_until(
        "the experiment to complete",
        Duration::from_secs(120),
        || {
            let e = https()
                .get(replicas[0].url(&format!("/api/v1/experiments/{id}")))
                .bearer_auth(&admin2)
                .send()
                .ok()?
                .json::<Value>()
                .ok()?;
            (e["state"] == "completed").then_some(e)
        },
    );
    assert!(
        done["kpis"]["reduction_pct"].as_f64().unwrap() > 0.0,
        "{done:#}"
    );

    // No task claimed twice, none reported twice.
    for a in &real {
        let tasks = https()
            .get(replicas[0].url(&format!("/api/v1/tasks?agent={}", a.id())))
            .bearer_auth(&admin2)
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap();
        let tasks = tasks.as_array().unwrap();
        assert!(!tasks.is_empty(), "{}: no task", a.name);
        for t in tasks {
            assert!(t["attempts"].as_i64().unwrap() <= 1, "claimed once: {t:#}");
        }
        assert!(!a.log().contains("task received again"), "{}", a.log());
    }
    for a in &mut real {
        a.stop();
    }
    for r in &replicas {
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(!log.contains("panicked"), "{log}");
    }
}

fn stack_login(r: &Replica, password: &str) -> String {
    let resp = login(&r.url("/api/v1/auth/login"), "admin", password);
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}
