//! Pipelines, experiments, KPIs and cost, end to end on a real stack. The
//! agents' side (enroll, long-poll tasks, report results, write metrics by
//! remote write every second) is played over the agent listener exactly as
//! an agent would; the KPIs are then measured by the API in the real
//! Prometheus from what was written, and compared with numbers worked out
//! here from the written data.

use std::time::Duration;

use phoenix_tests::{Agent, Reply, Stack, Users, Writer, wait_until};
use serde_json::{Value, json};

/// A fast driver, and a price that is exact in binary.
const CONFIG: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\", PHOENIX_PRICE_PER_SERIES_MONTH = \"0.25\" }\n";
const PRICE: f64 = 0.25;
/// A fast driver, and measuring that gives up 3 s after the window when
/// data is missing.
const SHORT_GRACE: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\", PHOENIX_EXPERIMENT_ANALYSIS_GRACE = \"3s\" }\n";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Claim the agent's queued tasks (waiting up to 5 s for one).
fn poll(s: &Stack, agent: &Agent) -> Vec<Value> {
    let r = s.poll(&agent.credential, "wait=5");
    assert_eq!(r.status, 200, "{r:?}");
    r.body["tasks"].as_array().unwrap().clone()
}

fn report(s: &Stack, agent: &Agent, task: &Value, outcome: &str, error: Option<&str>) {
    let body = json!({ "result_id": uuid::Uuid::new_v4(), "outcome": outcome, "error": error });
    let r = s.report(&agent.credential, task["id"].as_str().unwrap(), &body);
    assert_eq!(r.status, 200, "{r:?}");
}

fn group_query(group: Option<(&str, &str)>) -> String {
    match group {
        Some((experiment, variant)) => format!("experiment={experiment}&variant={variant}"),
        None => String::new(),
    }
}

/// Writes the samples of Prometheus text once as `agent`, to an experiment
/// variant or (None) live.
fn write(s: &Stack, agent: &Agent, group: Option<(&str, &str)>, text: &str) {
    let query = group_query(group);
    let r = s.write_text(&agent.credential, &query, text);
    assert_eq!(r.status, 200, "write {query}: {r:?}");
}

/// What an agent writes: the group (experiment and variant, or None for
/// live) and its samples as Prometheus text.
type Group<'a> = (&'a Agent, Option<(&'a str, &'a str)>, String);

/// Writes the samples of each `(agent, group, text)` every second, as
/// running agents do, until the [`Writer`] is dropped.
fn writing(s: &Stack, groups: &[Group<'_>]) -> Writer {
    s.writer(
        groups
            .iter()
            .map(|(agent, group, text)| {
                (agent.credential.clone(), group_query(*group), text.clone())
            })
            .collect(),
        Duration::from_secs(1),
    )
}

/// Processes `proc-1` … `proc-n`, process i using i % CPU and i MiB.
fn processes(n: u32) -> Vec<(String, u32, f64, f64)> {
    (1..=n)
        .map(|i| {
            (
                format!("proc-{i}"),
                1000 + i,
                i as f64,
                i as f64 * 1048576.0,
            )
        })
        .collect()
}

/// The exposition text of `procs` as the agent's metrics; `other` (a
/// `top_k` remainder) has no pid.
fn exposition(procs: &[(String, u32, f64, f64)], other: Option<(f64, f64)>) -> String {
    let mut cpu = String::from("# TYPE phoenix_process_cpu_percent gauge\n");
    let mut mem = String::from("# TYPE phoenix_process_memory_bytes gauge\n");
    for (name, pid, c, m) in procs {
        cpu.push_str(&format!(
            "phoenix_process_cpu_percent{{process=\"{name}\",pid=\"{pid}\"}} {c}\n"
        ));
        mem.push_str(&format!(
            "phoenix_process_memory_bytes{{process=\"{name}\",pid=\"{pid}\"}} {m}\n"
        ));
    }
    if let Some((c, m)) = other {
        cpu.push_str(&format!(
            "phoenix_process_cpu_percent{{process=\"other\"}} {c}\n"
        ));
        mem.push_str(&format!(
            "phoenix_process_memory_bytes{{process=\"other\"}} {m}\n"
        ));
    }
    cpu + &mem
}

/// What `top_k {k, by: cpu}` makes of `procs`: the k busiest, the rest summed.
fn top_k(procs: &[(String, u32, f64, f64)], k: usize) -> String {
    let mut sorted = procs.to_vec();
    sorted.sort_by(|a, b| b.2.total_cmp(&a.2));
    let (kept, rest) = sorted.split_at(k);
    let other = rest.iter().fold((0.0, 0.0), |(c, m), p| (c + p.2, m + p.3));
    exposition(kept, Some(other))
}

fn experiment(s: &Stack, token: &str, id: &str) -> Value {
    let r = s.get(Some(token), &format!("/api/v1/experiments/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn wait_state(s: &Stack, token: &str, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            &format!("experiment {id} {state}"),
            Duration::from_secs(90),
            || {
                last = experiment(s, token, id);
                (last["state"] == state).then(|| last.clone())
            },
        )
    }));
    found.unwrap_or_else(|_| panic!("experiment never reached {state}; last seen: {last:#}"))
}

fn act(s: &Stack, token: &str, id: &str, action: &str) -> Reply {
    s.post(
        Some(token),
        &format!("/api/v1/experiments/{id}/{action}"),
        &json!({}),
    )
}

fn transitions(e: &Value) -> Vec<(String, String, String)> {
    e["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ev| {
            (
                ev["to_state"].as_str().unwrap().to_string(),
                ev["action"].as_str().unwrap().to_string(),
                ev["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn tasks_of(e: &Value, kind: &str) -> Vec<Value> {
    e["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == kind)
        .cloned()
        .collect()
}

/// The candidate of most experiments here: the ten busiest processes and
/// the rest summed.
fn top10() -> Value {
    json!({ "stages": [{ "type": "top_k", "k": 10, "by": "cpu" }] })
}

/// Creates (as `operator`) an experiment of a full-fidelity baseline and
/// `candidate` on `agents`, 3 seconds long; its id.
fn create(s: &Stack, operator: &str, name: &str, agents: &[&Agent], candidate: Value) -> String {
    let ids: Vec<&str> = agents.iter().map(|x| x.id.as_str()).collect();
    let r = s.post(
        Some(operator),
        "/api/v1/experiments",
        &json!({
            "name": name,
            "baseline": { "spec": { "stages": [] } },
            "candidate": { "spec": candidate },
            "agents": ids,
            "duration": 3,
        }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_string()
}

/// An experiment run to `completed` by [`completed_experiment`].
struct Completed {
    /// `web-1` and `db-1`, in the experiment, and `cache-1`, in none.
    agents: Vec<Agent>,
    id: String,
    /// The experiment as it completed, with its KPIs.
    experiment: Value,
}

/// A saved full-fidelity baseline against [`top10`] on `web-1` (100
/// processes) and `db-1` (50) for 4 s: defined, started, deployed and
/// written by both agents as an agent would, each step checked, until the
/// driver has measured it.
fn completed_experiment(s: &Stack, users: &Users) -> Completed {
    let Users {
        admin,
        operator,
        viewer,
    } = users;
    let agents = s.enroll(admin, &["web-1", "db-1", "cache-1"]);
    let (a, b) = (&agents[0], &agents[1]);

    let baseline = s.post(
        Some(operator),
        "/api/v1/pipelines",
        &json!({ "name": "full", "spec": { "stages": [] } }),
    );
    assert_eq!(baseline.status, 201);
    let candidate_spec = top10();
    let new = json!({
        "name": "top 10 on web and db",
        "baseline": { "pipeline_id": baseline.body["id"] },
        "candidate": { "spec": candidate_spec },
        "agents": [a.id, b.id],
        "duration": "4s",
    });
    assert_eq!(
        s.post(Some(viewer), "/api/v1/experiments", &new).status,
        403
    );
    let created = s.post(Some(operator), "/api/v1/experiments", &new);
    assert_eq!(created.status, 201, "{created:?}");
    let e = created.body;
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["state"], "created");
    assert_eq!(e["allowed_actions"], json!(["start"]));
    assert_eq!(e["duration_seconds"], 4);
    assert_eq!(
        (f(&e["min_reduction_pct"]), f(&e["min_accuracy_pct"])),
        (70.0, 98.0)
    );
    assert_eq!(e["baseline"]["spec"], json!({ "stages": [] }));
    assert_eq!(e["candidate"]["spec"], candidate_spec);

    let started = act(s, operator, &id, "start");
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(started.body["state"], "deploying");

    // Each agent gets its run_experiment task, starts writing both variants,
    // then confirms.
    let procs_a = processes(100);
    let procs_b = processes(50);
    let mut writers = Vec::new();
    for (agent, procs) in [(a, &procs_a), (b, &procs_b)] {
        let tasks = poll(s, agent);
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!(task["kind"], "run_experiment");
        assert_eq!(task["payload"]["experiment_id"], id.as_str());
        assert_eq!(task["payload"]["baseline"], json!({ "stages": [] }));
        assert_eq!(task["payload"]["candidate"], candidate_spec);
        assert_eq!(task["payload"]["duration_seconds"], 4);
        writers.push(writing(
            s,
            &[
                (agent, Some((&id, "baseline")), exposition(procs, None)),
                (agent, Some((&id, "candidate")), top_k(procs, 10)),
            ],
        ));
        report(s, agent, task, "succeeded", None);
    }
    let running = wait_state(s, viewer, &id, "running");
    assert_eq!(running["allowed_actions"], json!(["stop"]));
    let completed = wait_state(s, viewer, &id, "completed");
    drop(writers);
    assert_eq!(completed["allowed_actions"], json!(["promote", "rollback"]));
    assert_eq!(completed["error"], Value::Null);
    Completed {
        id,
        experiment: completed,
        agents,
    }
}

#[test]
fn pipeline_templates_are_listed_and_invalid_specs_and_texts_are_refused_with_a_code() {
    let s = Stack::start(CONFIG);
    let Users {
        operator, viewer, ..
    } = s.users();

    let templates = s.get(Some(&viewer), "/api/v1/pipeline-templates");
    assert_eq!(templates.status, 200, "{templates:?}");
    let names: Vec<&str> = templates
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "full_fidelity",
            "top_k_cpu_10",
            "top_k_memory_10",
            "aggregate_by_name",
            "drop_pid"
        ]
    );
    assert_eq!(templates.body[0]["spec"], json!({ "stages": [] }));
    assert_eq!(
        templates.body[1]["spec"],
        json!({ "stages": [{ "type": "top_k", "k": 10, "by": "cpu" }] })
    );

    let created = s.post(
        Some(&operator),
        "/api/v1/pipelines",
        &json!({ "name": "Top 10 CPU", "spec": {} }),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_string();
    // PostgreSQL cannot store NUL: refused as input, on create and on update,
    // with the code of every NUL refusal.
    let nul = json!({ "name": "nul", "description": "a\u{0}b", "spec": {} });
    let r = s.post(Some(&operator), "/api/v1/pipelines", &nul);
    assert_eq!((r.status, r.code()), (400, "invalid_text"), "{r:?}");
    let r = s.put(Some(&operator), &format!("/api/v1/pipelines/{id}"), &nul);
    assert_eq!((r.status, r.code()), (400, "invalid_text"), "{r:?}");
    let lines = json!({ "name": "lines", "description": "one\ntwo\tthree", "spec": {} });
    let r = s.post(Some(&operator), "/api/v1/pipelines", &lines);
    assert_eq!(r.status, 201, "line breaks and tabs are fine: {r:?}");
    assert_eq!(
        s.delete(
            Some(&operator),
            &format!("/api/v1/pipelines/{}", r.body["id"].as_str().unwrap())
        )
        .status,
        204
    );

    let invalid = [
        (
            json!({ "stages": [{ "type": "filter", "include": "(" }] }),
            "invalid_regex",
        ),
        (
            json!({ "stages": [{ "type": "top_k", "k": 0, "by": "cpu" }] }),
            "invalid_k",
        ),
        (
            json!({ "stages": [{ "type": "sample", "rate": 2 }] }),
            "unknown_stage",
        ),
        (
            json!({ "stages": [{ "type": "top_k", "k": 3, "by": "disk" }] }),
            "invalid_stage",
        ),
        (
            json!({ "stages": [{ "type": "drop_labels", "labels": ["process"] }] }),
            "required_label",
        ),
        (
            json!({ "stages": [{ "type": "drop_labels", "labels": ["variant"] }] }),
            "required_label",
        ),
        (json!({ "stages": [{ "type": "filter" }] }), "empty_filter"),
        (json!({ "steps": [] }), "invalid_pipeline"),
    ];
    for (spec, want) in invalid {
        let r = s.post(
            Some(&operator),
            "/api/v1/pipelines",
            &json!({ "name": "bad", "spec": spec }),
        );
        assert_eq!((r.status, r.code()), (400, want), "{spec}: {r:?}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert!(r.body["detail"].as_str().unwrap().len() > 10, "{r:?}");
    }
    let no_name = s.post(
        Some(&operator),
        "/api/v1/pipelines",
        &json!({ "name": " ", "spec": {} }),
    );
    assert_eq!((no_name.status, no_name.code()), (400, "invalid_name"));
    let no_spec = s.post(
        Some(&operator),
        "/api/v1/pipelines",
        &json!({ "name": "x" }),
    );
    assert_eq!((no_spec.status, no_spec.code()), (400, "invalid_body"));

    let r = s.put(
        Some(&operator),
        &format!("/api/v1/pipelines/{id}"),
        &json!({ "name": "x", "spec": { "stages": [{ "type": "top_k", "k": 100001, "by": "memory" }] } }),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_k"));
}

#[test]
fn pipelines_are_saved_replaced_and_deleted_by_operators_only_and_audited() {
    let s = Stack::start(CONFIG);
    let Users {
        admin,
        operator,
        viewer,
    } = s.users();

    let spec = json!({ "stages": [
        { "type": "filter", "exclude": "kworker/.*" },
        { "type": "top_k", "k": 10, "by": "cpu" },
    ]});
    let new = json!({ "name": "Top 10 CPU", "description": "busiest ten", "spec": spec });
    let denied = s.post(Some(&viewer), "/api/v1/pipelines", &new);
    assert_eq!((denied.status, denied.code()), (403, "forbidden"));
    let created = s.post(Some(&operator), "/api/v1/pipelines", &new);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["spec"], spec);
    assert_eq!(created.body["created_by"], "user:olivia");
    let id = created.body["id"].as_str().unwrap().to_string();
    let again = s.post(
        Some(&operator),
        "/api/v1/pipelines",
        &json!({ "name": "top 10 cpu", "spec": {} }),
    );
    assert_eq!((again.status, again.code()), (409, "pipeline_exists"));

    let list = s.get(Some(&viewer), "/api/v1/pipelines");
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let one = s.get(Some(&viewer), &format!("/api/v1/pipelines/{id}"));
    assert_eq!((one.status, &one.body["name"]), (200, &json!("Top 10 CPU")));

    let replaced = json!({ "name": "Drop pid", "spec": { "stages": [{ "type": "drop_labels", "labels": ["pid"] }] } });
    let r = s.put(Some(&viewer), &format!("/api/v1/pipelines/{id}"), &replaced);
    assert_eq!(r.status, 403);
    let r = s.put(
        Some(&operator),
        &format!("/api/v1/pipelines/{id}"),
        &replaced,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "Drop pid");
    assert_eq!(r.body["spec"], replaced["spec"]);

    assert_eq!(
        s.delete(Some(&viewer), &format!("/api/v1/pipelines/{id}"))
            .status,
        403
    );
    assert_eq!(
        s.delete(Some(&operator), &format!("/api/v1/pipelines/{id}"))
            .status,
        204
    );
    let gone = s.get(Some(&viewer), &format!("/api/v1/pipelines/{id}"));
    assert_eq!((gone.status, gone.code()), (404, "not_found"));

    let audit = s.audit(&admin, &format!("target=pipeline:{id}"));
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["pipelines.delete", "pipelines.update", "pipelines.create"]
    );
    assert!(audit.iter().all(|e| e["actor"] == "user:olivia"));

    let doc = s.get(None, "/api/v1/openapi.json");
    for path in [
        "/api/v1/pipelines",
        "/api/v1/pipelines/{id}",
        "/api/v1/pipeline-templates",
        "/api/v1/experiments",
        "/api/v1/experiments/{id}/promote",
        "/api/v1/cost/summary",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} not documented");
    }
}

#[test]
fn a_completed_experiment_is_measured_from_the_written_data_and_refuses_late_batches() {
    let s = Stack::start(CONFIG);
    let Completed {
        agents,
        id,
        experiment: completed,
    } = completed_experiment(&s, &s.users());
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    let procs_a = processes(100);

    // 100 and 50 processes with two metrics each; top 10 plus `other`.
    let k = &completed["kpis"];
    assert_eq!(k["baseline"]["series"], 300, "{k:#}");
    assert_eq!(k["candidate"]["series"], 44, "{k:#}");
    assert_eq!(k["baseline"]["series_by_agent"][&a.id], 200);
    assert_eq!(k["baseline"]["series_by_agent"][&b.id], 100);
    assert_eq!(k["candidate"]["series_by_agent"][&a.id], 22);
    assert_eq!(k["candidate"]["series_by_agent"][&b.id], 22);
    assert!(
        close(f(&k["reduction_pct"]), 100.0 * 256.0 / 300.0),
        "{k:#}"
    );
    // `other` carries everything top_k left out: host totals are exact.
    assert_eq!(f(&k["accuracy_pct"]), 100.0, "{k:#}");
    let totals = k["totals"].as_array().unwrap();
    assert_eq!(totals.len(), 4);
    for t in totals {
        let n = if t["agent"] == a.id.as_str() {
            100.0
        } else {
            50.0
        };
        let cpu_total = n * (n + 1.0) / 2.0;
        let want = if t["metric"] == "phoenix_process_cpu_percent" {
            cpu_total
        } else {
            cpu_total * 1048576.0
        };
        assert_eq!((f(&t["baseline"]), f(&t["candidate"])), (want, want), "{t}");
    }
    assert!(close(f(&k["baseline"]["cost_per_month"]), 300.0 * PRICE));
    assert!(close(f(&k["candidate"]["cost_per_month"]), 44.0 * PRICE));
    assert!(close(f(&k["savings_per_month"]), 256.0 * PRICE));
    assert_eq!(f(&k["price_per_series_month"]), PRICE);
    // Both variants are written together, so every series has as many
    // samples as there were writes in the window (one a second).
    let window = f(&k["window_seconds"]);
    assert_eq!(window, 4.0);
    let base_sps = f(&k["baseline"]["samples_per_second"]);
    let cand_sps = f(&k["candidate"]["samples_per_second"]);
    // Each agent writes on its own clock, so web-1 (200 baseline series,
    // 22 candidate) and db-1 (100 and 22) may have a different number of
    // writes in the window: at least one each, at most one a second (plus
    // the edges), the same for both variants of an agent.
    let (base, cand) = (base_sps * window, cand_sps * window);
    let writes = (1..=6)
        .flat_map(|wa| (1..=6).map(move |wb| (wa, wb)))
        .find(|&(wa, wb)| {
            close(base, f64::from(200 * wa + 100 * wb)) && close(cand, f64::from(22 * (wa + wb)))
        });
    assert!(writes.is_some(), "{k:#}");
    assert_eq!(k["recommendation"]["action"], "promote");
    assert_eq!(completed["recommendation"], "promote");
    let queries: Vec<&str> = k["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["promql"].as_str().unwrap())
        .collect();
    let baseline_series = format!(
        "count by (agent) (last_over_time({{__name__!~\"push_time_seconds|push_failure_time_seconds\",job=\"phoenix-agent\",experiment=\"{id}\",variant=\"baseline\"}}[4s]))"
    );
    assert!(queries.contains(&baseline_series.as_str()), "{queries:#?}");

    // The window is over: batches collected after it are refused.
    let late = |agent: &Agent| {
        let group = format!("experiment={id}&variant=baseline");
        s.write_text(&agent.credential, &group, &exposition(&procs_a, None))
    };
    let r = late(a);
    assert_eq!(
        (r.status, r.code()),
        (409, "experiment_not_running"),
        "{r:?}"
    );
    let r = late(c);
    assert_eq!((r.status, r.code()), (409, "not_in_experiment"), "{r:?}");
    // One spelling of an experiment id, or its series would be split.
    let group = format!("experiment={}&variant=baseline", id.to_uppercase());
    let r = s.write_text(&a.credential, &group, "m 1\n");
    assert_eq!((r.status, r.code()), (400, "invalid_group"), "{r:?}");
}

/// Phase 2 of the growth path (docs/scaling.md): Prometheus sends every
/// sample on to a remote store (a second Prometheus with the remote-write
/// receiver), and the API measures the experiment there (`query_url`).
/// The KPIs are those measured from the appliance's own Prometheus, which
/// the test above checks against the written data.
#[test]
fn kpis_measured_in_a_remote_store_equal_those_of_the_appliance() {
    let store = phoenix_tests::agents::Backend::start();
    let ports = phoenix_tests::StackPorts::free();
    let prometheus = format!(
        "query_url = \"{}\"\n[[prometheus.remote_write]]\nurl = \"{}\"\n",
        store.url(""),
        store.write_url()
    );
    // Measured 10 s after the window (30 s by default with a query_url).
    let config = CONFIG.replace(
        "PHOENIX_EXPERIMENT_TICK",
        "PHOENIX_EXPERIMENT_ANALYSIS_DELAY = \"10s\", PHOENIX_EXPERIMENT_TICK",
    );
    let s = Stack::started(
        phoenix_tests::Supervisor::config(&ports.config_with(&prometheus, &config)),
        ports,
    );
    let Completed {
        agents,
        id,
        experiment: completed,
    } = completed_experiment(&s, &s.users());
    let (a, b) = (&agents[0], &agents[1]);
    let k = &completed["kpis"];
    assert_eq!(k["baseline"]["series"], 300, "{k:#}");
    assert_eq!(k["candidate"]["series"], 44, "{k:#}");
    assert_eq!(k["baseline"]["series_by_agent"][&a.id], 200);
    assert_eq!(k["candidate"]["series_by_agent"][&b.id], 22);
    assert!(
        close(f(&k["reduction_pct"]), 100.0 * 256.0 / 300.0),
        "{k:#}"
    );
    assert_eq!(f(&k["accuracy_pct"]), 100.0, "{k:#}");

    // Both servers hold the same series and samples of the experiment.
    let selector = format!("{{experiment=\"{id}\"}}[10m]");
    let held = |base: &str| {
        let mut series: Vec<(String, usize)> = phoenix_tests::agents::raw_samples(base, &selector)
            .into_iter()
            .map(|(labels, samples)| (labels.to_string(), samples.len()))
            .collect();
        series.sort();
        series
    };
    let local = held(&s.ports.prometheus_url(""));
    assert_eq!(local.len(), 344, "series written to the appliance");
    assert_eq!(held(&store.url("")), local, "the store holds every sample");
}

#[test]
fn a_promoted_experiment_sends_its_candidate_and_is_costed_and_audited() {
    let s = Stack::start(CONFIG);
    let users = s.users();
    let Completed {
        agents,
        id,
        experiment: completed,
    } = completed_experiment(&s, &users);
    let Users {
        admin,
        operator,
        viewer,
    } = users;
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    let procs_a = processes(100);
    let k = &completed["kpis"];

    let promoted = act(&s, &operator, &id, "promote");
    assert_eq!(promoted.status, 200, "{promoted:?}");
    assert_eq!(promoted.body["state"], "promoted");
    assert_eq!(promoted.body["allowed_actions"], json!([]));
    let apply = tasks_of(&promoted.body, "apply_pipeline");
    assert_eq!(apply.len(), 2, "{:#}", promoted.body);
    for agent in [a, b] {
        let tasks = poll(&s, agent);
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0]["kind"], "apply_pipeline");
        assert_eq!(tasks[0]["payload"]["variant"], "candidate");
        assert_eq!(tasks[0]["payload"]["spec"], top10());
        report(&s, agent, &tasks[0], "succeeded", None);
    }
    assert_eq!(
        transitions(&promoted.body),
        [
            ("created", "create", "user:olivia"),
            ("deploying", "start", "user:olivia"),
            ("running", "deployed", "system:driver"),
            ("analyzing", "window_ended", "system:driver"),
            ("completed", "analyzed", "system:driver"),
            ("promoted", "promote", "user:olivia"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );

    // Live series after the promotion: web-1 writes its top 10 (22 series);
    // db-1 has not written live yet; cache-1, in no experiment, 10 processes.
    write(&s, a, None, &top_k(&procs_a, 10));
    write(&s, c, None, &exposition(&processes(10), None));
    let cost = wait_until("live series in Prometheus", Duration::from_secs(30), || {
        let r = s.get(Some(&viewer), "/api/v1/cost/summary");
        assert_eq!(r.status, 200, "{r:?}");
        let live: Vec<u64> = r.body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["current_series"].as_u64().unwrap())
            .collect();
        (live.iter().sum::<u64>() == 42).then_some(r.body)
    });
    let by_name = |name: &str| {
        cost["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["agent_name"] == name)
            .unwrap()
            .clone()
    };
    let web = by_name("web-1");
    assert_eq!(web["before"]["series"], 200, "{cost:#}");
    assert_eq!(web["before"]["source"], "experiment_baseline");
    assert_eq!(web["before"]["experiment_id"], id.as_str());
    assert_eq!(web["before"]["measured_at"], k["measured_at"]);
    assert_eq!(web["after"]["series"], 22);
    assert_eq!(web["after"]["source"], "live");
    assert!(close(f(&web["savings_pct"]), 89.0));
    assert!(close(f(&web["before"]["cost_per_month"]), 200.0 * PRICE));
    assert!(close(f(&web["after"]["cost_per_month"]), 22.0 * PRICE));
    assert_eq!(web["promoted_experiment"]["id"], id.as_str());
    let db = by_name("db-1");
    assert_eq!(db["current_series"], 0);
    assert_eq!(
        (&db["before"]["series"], &db["after"]["series"]),
        (&json!(100), &json!(22))
    );
    assert_eq!(db["after"]["source"], "experiment_candidate");
    assert!(close(f(&db["savings_pct"]), 78.0));
    let cache = by_name("cache-1");
    assert_eq!(cache["promoted_experiment"], Value::Null);
    assert_eq!(
        (&cache["before"]["series"], &cache["after"]["series"]),
        (&json!(20), &json!(20))
    );
    assert_eq!(cache["before"]["source"], "live");
    let total = &cost["total"];
    assert_eq!(
        (&total["before_series"], &total["after_series"]),
        (&json!(320), &json!(64))
    );
    assert!(close(f(&total["savings_pct"]), 80.0), "{cost:#}");
    assert!(close(f(&total["before_cost_per_month"]), 320.0 * PRICE));
    assert!(close(f(&total["after_cost_per_month"]), 64.0 * PRICE));
    assert!(close(f(&total["savings_per_month"]), 256.0 * PRICE));

    // Every transition is in the audit log, by the right actor.
    let audit = s.audit(&admin, &format!("target=experiment:{id}"));
    let mut entries: Vec<(String, String)> = audit
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    entries.reverse();
    assert_eq!(
        entries,
        [
            ("experiments.create", "user:olivia"),
            ("experiments.start", "user:olivia"),
            ("experiments.deployed", "system:driver"),
            ("experiments.window_ended", "system:driver"),
            ("experiments.analyzed", "system:driver"),
            ("experiments.promote", "user:olivia"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let analyzed = audit
        .iter()
        .find(|e| e["action"] == "experiments.analyzed")
        .unwrap();
    assert_eq!(analyzed["details"]["recommendation"], "promote");
}

#[test]
fn bad_definitions_and_illegal_actions_are_refused_and_a_failing_agent_fails_the_deployment() {
    let s = Stack::start(SHORT_GRACE);
    let Users {
        admin,
        operator,
        viewer,
    } = s.users();
    let agents = s.enroll(&admin, &["a-1"]);
    let a = &agents[0];

    // Bad definitions.
    let body = |agents: Value, duration: Value, extra: Value| {
        let mut b = json!({
            "name": "x", "baseline": { "spec": {} }, "candidate": { "spec": {} },
            "agents": agents, "duration": duration,
        });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let unknown = "00000000-0000-4000-8000-000000000000";
    for (b, want) in [
        (
            body(json!([unknown]), json!(60), json!({})),
            "unknown_agents",
        ),
        (body(json!([]), json!(60), json!({})), "invalid_agents"),
        (
            body(json!([a.id]), json!("soon"), json!({})),
            "invalid_duration",
        ),
        (body(json!([a.id]), json!(0), json!({})), "invalid_duration"),
        (
            body(json!([a.id]), json!(60), json!({ "min_accuracy_pct": 101 })),
            "invalid_criteria",
        ),
        (
            body(
                json!([a.id]),
                json!(60),
                json!({ "candidate": { "spec": { "stages": [{ "type": "top_k", "k": 0, "by": "cpu" }] } } }),
            ),
            "invalid_k",
        ),
        (
            body(json!([a.id]), json!(60), json!({ "candidate": {} })),
            "invalid_pipeline_ref",
        ),
        (
            body(
                json!([a.id]),
                json!(60),
                json!({ "candidate": { "pipeline_id": unknown } }),
            ),
            "unknown_pipeline",
        ),
    ] {
        let r = s.post(Some(&operator), "/api/v1/experiments", &b);
        assert_eq!((r.status, r.code()), (400, want), "{b}: {r:?}");
    }

    // An agent that cannot run the experiment fails it.
    let e1 = create(&s, &operator, "fails", &[a], top10());
    let r = act(&s, &operator, &e1, "promote");
    assert_eq!((r.status, r.code()), (409, "illegal_transition"), "{r:?}");
    assert_eq!(r.body["allowed"], json!(["start"]));
    assert_eq!(act(&s, &viewer, &e1, "start").status, 403);
    assert_eq!(act(&s, &operator, &e1, "start").status, 200);
    let r = act(&s, &operator, &e1, "start");
    assert_eq!(
        (r.status, &r.body["allowed"]),
        (409, &json!(["stop"])),
        "{r:?}"
    );
    let tasks = poll(&s, a);
    assert_eq!(tasks.len(), 1);
    report(
        &s,
        a,
        &tasks[0],
        "failed",
        Some("no permission to read /proc"),
    );
    let failed = wait_state(&s, &viewer, &e1, "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("no permission to read /proc") && error.contains(&a.id),
        "{error}"
    );
    assert_eq!(
        transitions(&failed).last().unwrap(),
        &(
            "failed".into(),
            "deploy_failed".into(),
            "system:driver".into()
        )
    );
    // It was the only attempt: the failed agent is told to stop.
    assert_eq!(tasks_of(&failed, "stop_experiment").len(), 1);
    let r = act(&s, &operator, &e1, "stop");
    assert_eq!((r.status, &r.body["allowed"]), (409, &json!([])), "{r:?}");
    assert!(
        r.body["detail"].as_str().unwrap().contains("final"),
        "{r:?}"
    );

    // Refused transitions are audited as failures.
    let refused = s.audit(&admin, &format!("target=experiment:{e1}&outcome=failure"));
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e["details"]["reason"] == "illegal_transition")
    );
}

/// Stopping a deployment cancels the task that was not picked up; batches
/// collected after the stop are refused, and the agent's series count of
/// the experiment is forgotten by the API's housekeeping.
#[test]
fn stopping_a_deployment_cancels_its_task_refuses_late_batches_and_forgets_its_series() {
    let s = Stack::start(SHORT_GRACE);
    let Users {
        admin,
        operator,
        viewer,
    } = s.users();
    let agents = s.enroll(&admin, &["b-1"]);
    let b = &agents[0];

    let e2 = create(&s, &operator, "stopped", &[b], top10());
    assert_eq!(act(&s, &operator, &e2, "start").status, 200);
    write(
        &s,
        b,
        Some((&e2, "baseline")),
        &exposition(&processes(3), None),
    );
    let series = || {
        let r = s.get(Some(&viewer), &format!("/api/v1/agents/{}", b.id));
        assert_eq!(r.status, 200, "{r:?}");
        r.body["pushed_series"].as_i64().unwrap()
    };
    assert_eq!(series(), 6);
    let stopped = act(&s, &operator, &e2, "stop");
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(stopped.body["state"], "stopped");
    assert_eq!(
        tasks_of(&stopped.body, "run_experiment")[0]["state"],
        "cancelled"
    );
    assert_eq!(
        tasks_of(&stopped.body, "stop_experiment")[0]["state"],
        "queued"
    );
    let tasks = poll(&s, b);
    assert_eq!(
        (tasks.len(), &tasks[0]["kind"]),
        (1, &json!("stop_experiment")),
        "{tasks:?}"
    );
    let group = format!("experiment={e2}&variant=baseline");
    let r = s.write_text(&b.credential, &group, "late 1\n");
    assert_eq!(
        (r.status, r.code()),
        (409, "experiment_not_running"),
        "{r:?}"
    );
    wait_until(
        "the stopped experiment's series forgotten",
        Duration::from_secs(45),
        || (series() == 0).then_some(()),
    );
}

#[test]
fn the_analysis_recommends_a_rollback_or_fails_without_candidate_data() {
    let s = Stack::start(SHORT_GRACE);
    let Users {
        admin,
        operator,
        viewer,
    } = s.users();
    let agents = s.enroll(&admin, &["b-1", "c-1"]);
    let (b, c) = (&agents[0], &agents[1]);

    // A candidate that filters processes away loses host totals: measured,
    // recommended for rollback, and rolled back.
    let filter = json!({ "stages": [{ "type": "filter", "include": "proc-(1[1-9]|20)" }] });
    let e3 = create(&s, &operator, "filtered", &[c], filter);
    let busy = create(&s, &operator, "busy", &[c], top10());
    assert_eq!(act(&s, &operator, &e3, "start").status, 200);
    let r = act(&s, &operator, &busy, "start");
    assert_eq!((r.status, r.code()), (409, "agents_busy"), "{r:?}");
    let procs = processes(20);
    let tasks = poll(&s, c);
    let writer = writing(
        &s,
        &[
            (c, Some((&e3, "baseline")), exposition(&procs, None)),
            (c, Some((&e3, "candidate")), exposition(&procs[10..], None)),
        ],
    );
    report(&s, c, &tasks[0], "succeeded", None);
    let r = act(&s, &operator, &e3, "rollback");
    assert_eq!(r.status, 409, "{r:?}");
    let completed = wait_state(&s, &viewer, &e3, "completed");
    drop(writer);
    let k = &completed["kpis"];
    assert_eq!(
        (&k["baseline"]["series"], &k["candidate"]["series"]),
        (&json!(40), &json!(20))
    );
    assert!(close(f(&k["reduction_pct"]), 50.0), "{k:#}");
    // Processes 11..20 keep 155 of 210 % CPU (and the same share of memory).
    assert!(close(f(&k["accuracy_pct"]), 100.0 * 155.0 / 210.0), "{k:#}");
    assert_eq!(completed["recommendation"], "rollback");
    let reasons = k["recommendation"]["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| r.as_str().unwrap().contains("below")),
        "{reasons:?}"
    );
    let rolled = act(&s, &operator, &e3, "rollback");
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert_eq!(rolled.body["state"], "rolled_back");
    let tasks = poll(&s, c);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["kind"], "apply_pipeline");
    assert_eq!(tasks[0]["payload"]["variant"], "baseline");
    assert_eq!(tasks[0]["payload"]["spec"], json!({ "stages": [] }));
    let r = act(&s, &operator, &e3, "promote");
    assert_eq!((r.status, &r.body["allowed"]), (409, &json!([])), "{r:?}");
    let list = s.get(Some(&viewer), "/api/v1/experiments?state=rolled_back");
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["id"], e3.as_str());

    // An agent that confirms but never writes its candidate: the analysis
    // fails, saying why, once the grace after the window is spent.
    let e4 = create(
        &s,
        &operator,
        "silent candidate",
        &[b],
        json!({ "stages": [] }),
    );
    assert_eq!(act(&s, &operator, &e4, "start").status, 200);
    let tasks = poll(&s, b);
    assert_eq!(tasks[0]["kind"], "run_experiment", "{tasks:?}");
    let writer = writing(
        &s,
        &[(b, Some((&e4, "baseline")), exposition(&processes(5), None))],
    );
    report(&s, b, &tasks[0], "succeeded", None);
    let failed = wait_state(&s, &viewer, &e4, "failed");
    drop(writer);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("no candidate series") && error.contains(&b.id),
        "{error}"
    );
    assert_eq!(
        transitions(&failed).last().unwrap(),
        &(
            "failed".into(),
            "analysis_failed".into(),
            "system:driver".into()
        )
    );
    assert_eq!(failed["kpis"], Value::Null);
}
