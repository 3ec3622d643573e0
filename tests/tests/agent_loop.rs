//! Real agents on this machine's real processes, against the real stack:
//! an experiment measured in Prometheus, a promotion that reaches a second
//! Prometheus (the user's backend) by remote write, a two-minute outage of
//! the API, a `kill -9`, and the bad inputs an agent meets.

use std::time::{Duration, Instant};

use phoenix_tests::agents::{AgentProc, Backend, raw_samples, scalar};
use phoenix_tests::{Stack, Supervisor, wait_until};
use serde_json::{Value, json};

/// A fast experiment driver.
const CONFIG: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\" }\n";

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn experiment(s: &Stack, token: &str, id: &str) -> Value {
    let r = s.get(Some(token), &format!("/api/v1/experiments/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn wait_state(s: &Stack, token: &str, id: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(&format!("experiment {state}"), timeout, || {
            last = experiment(s, token, id);
            (last["state"] == state).then(|| last.clone())
        })
    }));
    found.unwrap_or_else(|_| panic!("experiment never reached {state}; last seen: {last:#}"))
}

/// `n` agents of `s`, started and enrolled with one token.
fn agents(s: &Stack, admin: &str, names: &[&str], extra: &str) -> Vec<AgentProc> {
    let (_, token) = s.enrollment_token(admin, &json!({ "uses": names.len() }));
    names
        .iter()
        .map(|name| {
            let mut a = AgentProc::new(s, name, &token, extra);
            a.start();
            a
        })
        .collect()
}

fn create(s: &Stack, operator: &str, ids: &[String], candidate: Value, duration: u64) -> String {
    let r = s.post(
        Some(operator),
        "/api/v1/experiments",
        &json!({
            "name": format!("top-k on {} real hosts", ids.len()),
            "baseline": { "spec": { "stages": [] } },
            "candidate": { "spec": candidate },
            "agents": ids,
            "duration": duration,
            "min_reduction_pct": 90,
            "min_accuracy_pct": 99,
        }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_string()
}

/// Every task of `agent`, with its results.
fn tasks_of(s: &Stack, token: &str, agent: &str) -> Vec<Value> {
    let r = s.get(Some(token), &format!("/api/v1/tasks?agent={agent}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let d = s.get(
                Some(token),
                &format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()),
            );
            assert_eq!(d.status, 200, "{d:?}");
            d.body
        })
        .collect()
}

/// Every task finished as `succeeded` with exactly one result: none lost,
/// none run or reported twice.
fn each_task_once(s: &Stack, token: &str, agent: &AgentProc, kinds: &[&str]) {
    let id = agent.id();
    let tasks = wait_until(
        &format!("{}'s tasks finished", agent.name),
        Duration::from_secs(60),
        || {
            let tasks = tasks_of(s, token, &id);
            tasks
                .iter()
                .all(|t| t["state"] == "succeeded")
                .then_some(tasks)
        },
    );
    let mut seen: Vec<&str> = tasks.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    seen.sort();
    let mut want = kinds.to_vec();
    want.sort();
    assert_eq!(seen, want, "{}: {tasks:#?}", agent.name);
    for t in &tasks {
        assert_eq!(
            t["results"].as_array().unwrap().len(),
            1,
            "one result per task: {t:#}"
        );
        assert_eq!(t["attempts"], 1, "claimed once: {t:#}");
    }
    assert!(
        !agent.log().contains("task received again"),
        "{}",
        agent.log()
    );
}

#[test]
fn an_experiment_on_real_processes_is_measured_promoted_and_reaches_the_users_backend() {
    let s = Stack::start_without_pushgateway(CONFIG);
    let users = s.users();
    let backend = Backend::start();
    let extra = format!(
        "[remote_write]\nurl = \"{}\"\nlabels = {{ cluster = \"test\" }}\n",
        backend.write_url()
    );
    let agents = agents(&s, &users.admin, &["host-a", "host-b", "host-c"], &extra);
    let ids: Vec<String> = agents.iter().map(|a| a.id()).collect();

    // Before any decision the live pipeline is full fidelity, here and at
    // the backend.
    let prom = s.ports.prometheus_url("");
    let live_series = |base: &str, agent_label: &str, who: &str| {
        scalar(
            base,
            &format!(
                "count(last_over_time(phoenix_process_cpu_percent{{{agent_label}=\"{who}\"}}[3s]))"
            ),
        )
    };
    let full = wait_until(
        "full-fidelity series at the backend",
        Duration::from_secs(60),
        || live_series(&backend.url(""), "instance", "host-a").filter(|n| *n > 20.0),
    );
    let full_here = wait_until(
        "live series in the appliance",
        Duration::from_secs(60),
        || live_series(&prom, "agent", &ids[0]),
    );
    assert!(
        (full_here - full).abs() <= 0.1 * full,
        "{full_here} vs {full}"
    );
    let labels = &backend.query("phoenix_process_memory_bytes{instance=\"host-a\"}")[0]["metric"];
    assert_eq!(
        (&labels["job"], &labels["cluster"]),
        (&json!("phoenix-agent"), &json!("test")),
        "{labels}"
    );

    // A full-fidelity baseline against the five processes using the most
    // memory (a ranking that holds still, unlike CPU's).
    let k = 5;
    let candidate = json!({ "stages": [{ "type": "top_k", "k": k, "by": "memory" }] });
    let id = create(&s, &users.operator, &ids, candidate.clone(), 20);
    assert_eq!(
        s.post(
            Some(&users.operator),
            &format!("/api/v1/experiments/{id}/start"),
            &json!({})
        )
        .status,
        200
    );
    let done = wait_state(
        &s,
        &users.viewer,
        &id,
        "completed",
        Duration::from_secs(120),
    );
    let kpis = &done["kpis"];
    println!("KPIs on this machine: {kpis:#}");
    let (base, cand) = (
        f(&kpis["baseline"]["series"]),
        f(&kpis["candidate"]["series"]),
    );
    // k processes and `other`, two metrics, three agents; more if the
    // ranking changed during the window.
    assert!(cand >= 3.0 * 2.0 * (k as f64 + 1.0), "{kpis:#}");
    assert!(base > cand, "{kpis:#}");
    assert!(
        f(&kpis["reduction_pct"]) >= 90.0,
        "at least 90 % fewer series: {kpis:#}"
    );
    assert!(
        f(&kpis["accuracy_pct"]) >= 99.0,
        "at least 99 % of CPU and memory kept: {kpis:#}"
    );
    assert_eq!(kpis["recommendation"]["action"], "promote", "{kpis:#}");

    // Promote: the agents run the candidate live, the backend receives it,
    // and the cost summary counts it.
    let promoted = s.post(
        Some(&users.operator),
        &format!("/api/v1/experiments/{id}/promote"),
        &json!({}),
    );
    assert_eq!(promoted.status, 200, "{promoted:?}");
    let reduced = 2.0 * (k as f64 + 1.0);
    for a in &agents {
        wait_until(
            &format!("{}'s reduced series at the backend", a.name),
            Duration::from_secs(60),
            // `live_series` counts the CPU metric's series.
            || {
                (live_series(&backend.url(""), "instance", &a.name) == Some(k as f64 + 1.0))
                    .then_some(())
            },
        );
    }
    let cost = wait_until(
        "the cost summary of the promoted pipeline",
        Duration::from_secs(60),
        || {
            let r = s.get(Some(&users.viewer), "/api/v1/cost/summary");
            assert_eq!(r.status, 200, "{r:?}");
            let agents = r.body["agents"].as_array().unwrap().clone();
            agents
                .iter()
                .all(|x| x["current_series"].as_f64() == Some(reduced))
                .then_some(r.body)
        },
    );
    for x in cost["agents"].as_array().unwrap() {
        assert_eq!(x["after"]["source"], "live", "{cost:#}");
        assert!(f(&x["savings_pct"]) >= 90.0, "{cost:#}");
    }
    for a in &agents {
        each_task_once(&s, &users.viewer, a, &["run_experiment", "apply_pipeline"]);
        let status = a.status();
        assert_eq!(status["live_pipeline"], candidate, "{status:#}");
        assert_eq!(status["queue"]["rejected_batches"], 0, "{status:#}");
        assert_eq!(status["queue"]["evicted_batches"], 0, "{status:#}");
        // Its own health, on loopback.
        assert!(
            a.metric("phoenix_agent_collections_total").unwrap() > 10.0,
            "{}",
            a.metrics()
        );
        assert!(
            a.metric("phoenix_agent_last_success_timestamp_seconds{destination=\"external\"}")
                .unwrap()
                > 0.0,
            "{}",
            a.metrics()
        );
    }
}

/// The API is stopped for over two minutes during an experiment while the
/// agents go on collecting; once it is back, every sample collected
/// meanwhile is in Prometheus at the time it was collected, and every task
/// finished once.
#[test]
fn an_outage_of_the_api_loses_no_sample_and_repeats_no_task() {
    let s = Stack::start_without_pushgateway(CONFIG);
    let users = s.users();
    let agents = agents(&s, &users.admin, &["out-a", "out-b", "out-c"], "");
    let ids: Vec<String> = agents.iter().map(|a| a.id()).collect();
    let candidate = json!({ "stages": [{ "type": "top_k", "k": 3, "by": "memory" }] });
    let id = create(&s, &users.operator, &ids, candidate, 600);
    assert_eq!(
        s.post(
            Some(&users.operator),
            &format!("/api/v1/experiments/{id}/start"),
            &json!({})
        )
        .status,
        200
    );
    wait_state(&s, &users.viewer, &id, "running", Duration::from_secs(60));
    let prom = s.ports.prometheus_url("");
    let other = |agent: &str| {
        format!(
            "phoenix_process_memory_bytes{{agent=\"{agent}\",experiment=\"{id}\",variant=\"candidate\",process=\"other\"}}"
        )
    };
    for a in &ids {
        wait_until(
            "candidate samples in Prometheus",
            Duration::from_secs(60),
            || scalar(&prom, &format!("count_over_time({}[10s])", other(a))),
        );
    }

    let collections = |a: &AgentProc| a.metric("phoenix_agent_collections_total").unwrap();
    let before: Vec<f64> = agents.iter().map(collections).collect();
    let down_at = Instant::now();
    let t0 = chrono_ms();
    Supervisor::ok(&s.sup.ctl(&["stop", "api"]));
    std::thread::sleep(Duration::from_secs(125));
    let queued: Vec<Value> = agents.iter().map(|a| a.status()).collect();
    let after: Vec<f64> = agents.iter().map(collections).collect();
    let t1 = chrono_ms();
    Supervisor::ok(&s.sup.ctl(&["start", "api"]));
    println!("the API was down for {:?}", down_at.elapsed());
    for (a, q) in agents.iter().zip(&queued) {
        assert!(
            q["queue"]["batches"].as_i64().unwrap() > 100,
            "{}: batches wait: {q:#}",
            a.name
        );
    }

    // Drained: nothing older than a few seconds waits.
    let drain_started = Instant::now();
    for a in &agents {
        wait_until(
            &format!("{}'s queue drained", a.name),
            Duration::from_secs(120),
            || a.drained_until(t1).then_some(()),
        );
    }
    println!("the queues drained in {:?}", drain_started.elapsed());

    for (i, a) in agents.iter().enumerate() {
        let samples = raw_samples(&prom, &format!("{}[10m]", other(&ids[i])));
        assert_eq!(samples.len(), 1, "one series: {samples:?}");
        let stamps: Vec<i64> = samples[0]
            .1
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| (t0..=t1).contains(t))
            .collect();
        let collected = after[i] - before[i];
        println!(
            "{}: {} collections during the outage, {} samples stored for them",
            a.name,
            collected,
            stamps.len()
        );
        assert!(
            (stamps.len() as f64 - collected).abs() <= 1.0,
            "{}: every collection of the outage is stored at its time: {} stored, {collected} collected",
            a.name,
            stamps.len()
        );
        let widest = stamps.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            widest < 2_000,
            "{}: no gap in the outage's samples (widest {widest} ms)",
            a.name
        );
        let st = a.status();
        assert_eq!(st["queue"]["evicted_samples"], 0, "{st:#}");
        assert_eq!(st["queue"]["rejected_batches"], 0, "{st:#}");
    }

    // Stopping the experiment reaches every agent once.
    assert_eq!(
        s.post(
            Some(&users.operator),
            &format!("/api/v1/experiments/{id}/stop"),
            &json!({})
        )
        .status,
        200
    );
    for a in &agents {
        each_task_once(&s, &users.viewer, a, &["run_experiment", "stop_experiment"]);
        wait_until(
            "the experiment stopped on the agent",
            Duration::from_secs(30),
            || {
                a.status()["experiments"]
                    .as_array()
                    .unwrap()
                    .is_empty()
                    .then_some(())
            },
        );
    }
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
