//! phoenix-console-bench: what the web console costs to open and to draw.
//!
//! Against the real stack on this machine, N simulated agents (2,000 by
//! default) enroll, take part in one experiment and write both variants
//! every 10 s through the agent listener, as agents do. While they write:
//!
//! - the console's chart queries through the API
//!   (`GET /api/v1/experiments/{id}/charts`, `GET /api/v1/cost/history`, the
//!   experiment's page with its charts drawn) against, as the baseline, the
//!   same four PromQL range queries sent straight to Prometheus;
//! - in headless Chromium, the console's pages (first load, then with the
//!   browser's cache) against Prometheus's own web UI in the same browser:
//!   time to the response's end, to interactive (`domContentLoadedEventEnd`,
//!   after the deferred script ran) and to `load`, and the bytes of the
//!   document and its assets.
//!
//! Build with `cargo build --release --workspace`, run
//! `target/release/phoenix-console-bench`.

#![forbid(unsafe_code)]

#[path = "stats.rs"]
mod stats;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use phoenix_tests::browser::Browser;
use phoenix_tests::{Agent, Stack, wait_until};
use serde_json::{Value, json};
use stats::{Summary, ms};

#[derive(Parser)]
#[command(
    name = "phoenix-console-bench",
    about = "The console's chart queries and page loads with N agents' data in Prometheus"
)]
struct Args {
    /// Simulated agents in the experiment.
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Processes per agent: the baseline sends two series per process.
    #[arg(long, default_value_t = 25)]
    processes: usize,
    /// How long the agents write before the measurement starts.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Requests of each kind measured.
    #[arg(long, default_value_t = 60)]
    requests: usize,
    /// Loads of each page in the browser (the first with an empty cache).
    #[arg(long, default_value_t = 5)]
    page_loads: usize,
}

/// A fast experiment driver, and room for many agents' connections.
const CONFIG: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"500ms\" }\n";
const WRITERS: usize = 4;
const EVERY: Duration = Duration::from_secs(10);

fn exposition(processes: usize, top: Option<usize>) -> String {
    let procs: Vec<(usize, f64, f64)> = (1..=processes)
        .map(|i| (i, (i % 7) as f64, i as f64 * 1_048_576.0))
        .collect();
    let (kept, rest) = match top {
        Some(k) => procs.split_at(k.min(procs.len())),
        None => (&procs[..], &[][..]),
    };
    let mut text = String::new();
    for (i, cpu, mem) in kept {
        text.push_str(&format!(
            "phoenix_process_cpu_percent{{process=\"proc-{i}\",pid=\"{}\"}} {cpu}\n\
             phoenix_process_memory_bytes{{process=\"proc-{i}\",pid=\"{}\"}} {mem}\n",
            1000 + i,
            1000 + i
        ));
    }
    if top.is_some() {
        let (cpu, mem) = rest.iter().fold((0.0, 0.0), |a, p| (a.0 + p.1, a.1 + p.2));
        text.push_str(&format!(
            "phoenix_process_cpu_percent{{process=\"other\"}} {cpu}\n\
             phoenix_process_memory_bytes{{process=\"other\"}} {mem}\n"
        ));
    }
    text
}

/// Enrolls `n` agents with one token, from several threads.
fn enroll(s: &Stack, admin: &str, n: usize) -> Result<Vec<Agent>> {
    let (_, token) = s.enrollment_token(admin, &json!({ "uses": n }));
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(n.div_ceil(8).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut agents = Vec::with_capacity(n);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let token = token.clone();
                scope.spawn(move || -> Result<Vec<Agent>> {
                    chunk
                        .iter()
                        .map(|i| {
                            let r = s.try_enroll(&token, &format!("bench-{i:05}"), json!({}));
                            ensure!(r.status == 201, "enroll: {r:?}");
                            Ok(Agent {
                                id: r.body["agent_id"].as_str().context("agent_id")?.into(),
                                credential: r.body["credential"]
                                    .as_str()
                                    .context("credential")?
                                    .into(),
                            })
                        })
                        .collect()
                })
            })
            .collect();
        for h in handles {
            agents.extend(h.join().expect("an enrolling thread")?);
        }
        Ok(())
    })?;
    Ok(agents)
}

/// Each agent takes its `run_experiment` task and reports it done.
fn confirm(s: &Stack, agents: &[Agent]) -> Result<()> {
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = agents
            .chunks(agents.len().div_ceil(8).max(1))
            .map(|chunk| {
                scope.spawn(move || -> Result<()> {
                    for a in chunk {
                        let r = s.poll(&a.credential, "wait=5");
                        ensure!(r.status == 200, "poll: {r:?}");
                        for task in r.body["tasks"].as_array().context("tasks")? {
                            let body = json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "succeeded" });
                            let r = s.report(&a.credential, task["id"].as_str().context("id")?, &body);
                            ensure!(r.status == 200, "report: {r:?}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a confirming thread")?;
        }
        Ok(())
    })
}

fn time_get(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Duration> {
    let mut request = client.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let start = Instant::now();
    let r = request.send()?;
    let status = r.status();
    let body = r.bytes()?;
    let took = start.elapsed();
    ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(took)
}

fn line(what: &str, s: &Summary) {
    println!(
        "  {what:<58} n={:<4} p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms",
        s.count,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}

/// Navigation timing and bytes of the page the browser shows.
fn timing(b: &Browser) -> Value {
    b.script(
        "const n = performance.getEntriesByType('navigation')[0];
         const r = performance.getEntriesByType('resource');
         return {
           response: n.responseEnd - n.startTime,
           interactive: n.domContentLoadedEventEnd - n.startTime,
           load: n.loadEventEnd - n.startTime,
           document_bytes: n.decodedBodySize,
           transferred: n.transferSize + r.reduce((a, e) => a + e.transferSize, 0),
           asset_bytes: r.reduce((a, e) => a + e.decodedBodySize, 0),
           assets: r.length,
         };",
    )
}

/// Loads `url` `loads` times, waiting for `load` each time; the figures
/// of each load.
fn page_loads(b: &Browser, url: &str, loads: usize) -> Vec<Value> {
    (0..loads)
        .map(|_| {
            b.goto(url);
            wait_until("the load event", Duration::from_secs(30), || {
                let t = timing(b);
                (t["load"].as_f64().unwrap_or(0.0) > 0.0).then_some(t)
            })
        })
        .collect()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn median(loads: &[Value], k: &str) -> f64 {
    let mut v: Vec<f64> = loads.iter().map(|l| f(l, k)).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A first load with an empty cache.
fn report_cold(name: &str, load: &Value) {
    println!(
        "  {name:<34} response {:>6.1} ms, interactive {:>6.1} ms, load {:>6.1} ms; \
         {:>8} B transferred, {} assets, {:>8} B of document and assets",
        f(load, "response"),
        f(load, "interactive"),
        f(load, "load"),
        f(load, "transferred"),
        load["assets"],
        f(load, "asset_bytes") + f(load, "document_bytes"),
    );
}

/// Loads with the assets in the browser's cache: medians.
fn report_warm(name: &str, loads: &[Value]) {
    println!(
        "  {name:<34} response {:>6.1} ms, interactive {:>6.1} ms, load {:>6.1} ms; \
         document {:>7} B (medians of {})",
        median(loads, "response"),
        median(loads, "interactive"),
        median(loads, "load"),
        median(loads, "document_bytes"),
        loads.len()
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("starting the stack");
    let s = Stack::start_without_pushgateway(CONFIG);
    let admin = s.admin_token();
    println!("enrolling {} agents", args.agents);
    let agents = enroll(&s, &admin, args.agents)?;
    // An experiment takes at most 1,000 agents: one per thousand.
    let mut experiments = Vec::new();
    for (i, group) in agents.chunks(1000).enumerate() {
        let r = s.post(
            Some(&admin),
            "/api/v1/experiments",
            &json!({
                "name": format!("top-k, agents {}-{}", i * 1000, i * 1000 + group.len() - 1),
                "baseline": { "spec": { "stages": [] } },
                "candidate": { "spec": { "stages": [{ "type": "top_k", "k": 5, "by": "cpu" }] } },
                "agents": group.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
                "duration": "1h",
            }),
        );
        ensure!(r.status == 201, "create an experiment: {r:?}");
        let id = r.body["id"].as_str().context("id")?.to_owned();
        let r = s.post(
            Some(&admin),
            &format!("/api/v1/experiments/{id}/start"),
            &json!({}),
        );
        ensure!(r.status == 200, "start: {r:?}");
        experiments.push((id, group));
    }
    confirm(&s, &agents)?;
    for (id, _) in &experiments {
        wait_until("the experiments running", Duration::from_secs(60), || {
            let e = s.get(Some(&admin), &format!("/api/v1/experiments/{id}"));
            (e.body["state"] == "running").then_some(())
        });
    }
    let id = experiments[0].0.clone();

    let baseline = exposition(args.processes, None);
    let candidate = exposition(args.processes, Some(5));
    // Each agent sends both variants of its experiment, and its live
    // series (as after a promotion) for the cost chart.
    let mut groups: Vec<(String, String, String)> = Vec::new();
    for (id, group) in &experiments {
        for a in *group {
            for (query, text) in [
                (format!("experiment={id}&variant=baseline"), &baseline),
                (format!("experiment={id}&variant=candidate"), &candidate),
                (String::new(), &candidate),
            ] {
                groups.push((a.credential.clone(), query, text.clone()));
            }
        }
    }
    println!(
        "{} agents write {} + {} series to their experiment and {} live, every {} s; warming up for {}",
        agents.len(),
        baseline.lines().count(),
        candidate.lines().count(),
        candidate.lines().count(),
        EVERY.as_secs(),
        humantime::format_duration(args.warmup)
    );
    let per_writer = groups.len().div_ceil(WRITERS);
    let writers: Vec<_> = groups
        .chunks(per_writer)
        .map(|chunk| s.writer(chunk.to_vec(), EVERY))
        .collect();
    std::thread::sleep(args.warmup);

    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let bearer = format!("Bearer {admin}");
    let auth = [("authorization", bearer.as_str())];
    let charts: Value = client
        .get(s.ports.api_url(&format!("/api/v1/experiments/{id}/charts")))
        .header("authorization", &bearer)
        .send()?
        .json()?;
    let series_now = charts["charts"][0]["lines"][0]["points"]
        .as_array()
        .and_then(|p| p.last())
        .cloned()
        .unwrap_or(Value::Null);
    println!(
        "charts: {} points a line, baseline series now {series_now}",
        charts["charts"][0]["lines"][0]["points"]
            .as_array()
            .map_or(0, Vec::len)
    );
    let queries: Vec<String> = charts["charts"]
        .as_array()
        .context("charts")?
        .iter()
        .map(|c| c["promql"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(queries.len() == 4, "four charts: {charts}");
    let (start, end, step) = (
        charts["start"].as_str().context("start")?.to_owned(),
        charts["end"].as_str().context("end")?.to_owned(),
        charts["step_seconds"].as_u64().context("step")?,
    );

    // Session cookie for the page.
    let password = s.admin_password();
    let login = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(s.ports.api_url("/login"))
        .header("origin", s.ports.api_url(""))
        .form(&[("username", "admin"), ("password", password.trim())])
        .send()?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("a session cookie")?
        .to_owned();

    let mut api_charts = Vec::new();
    let mut direct = Vec::new();
    let mut history = Vec::new();
    let mut page = Vec::new();
    let prometheus = s.ports.prometheus_url("/api/v1/query_range");
    for _ in 0..args.requests {
        api_charts.push(time_get(
            &client,
            &s.ports.api_url(&format!("/api/v1/experiments/{id}/charts")),
            &auth,
        )?);
        let started = Instant::now();
        for q in &queries {
            let r = client
                .post(&prometheus)
                .form(&[
                    ("query", q.as_str()),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step.to_string()),
                ])
                .send()?;
            ensure!(r.status().is_success(), "Prometheus: {}", r.text()?);
            r.bytes()?;
        }
        direct.push(started.elapsed());
        history.push(time_get(
            &client,
            &s.ports.api_url("/api/v1/cost/history?hours=1"),
            &auth,
        )?);
        page.push(time_get(
            &client,
            &s.ports.api_url(&format!("/experiments/{id}")),
            &[("cookie", cookie.as_str())],
        )?);
    }
    let summary = |v: &[Duration]| Summary::of(v).expect("samples");
    let (a, d) = (summary(&api_charts), summary(&direct));
    println!(
        "\nChart queries with {} agents writing (sequential requests):",
        agents.len()
    );
    line(
        "the four range queries straight to Prometheus (baseline)",
        &d,
    );
    line("GET /api/v1/experiments/{id}/charts", &a);
    line("GET /api/v1/cost/history?hours=1", &summary(&history));
    line(
        "GET /experiments/{id} (the page, charts drawn)",
        &summary(&page),
    );
    println!(
        "  API ÷ Prometheus: p50 {:.2}×, p99 {:.2}×",
        a.p50.as_secs_f64() / d.p50.as_secs_f64(),
        a.p99.as_secs_f64() / d.p99.as_secs_f64()
    );

    println!("\nPage loads in headless Chromium over loopback:");
    println!(" first load, empty cache:");
    let b = Browser::start();
    let cold = page_loads(&b, &s.ports.api_url("/login"), 1).remove(0);
    report_cold("console: sign-in page", &cold);
    let prometheus_browser = Browser::start();
    let prometheus_cold =
        page_loads(&prometheus_browser, &s.ports.prometheus_url("/graph"), 1).remove(0);
    report_cold("Prometheus UI: /graph", &prometheus_cold);
    println!(
        "  the console's first load moves {:.1} % of the bytes of Prometheus's",
        100.0 * f(&cold, "transferred") / f(&prometheus_cold, "transferred")
    );
    println!(
        " signed in, assets cached ({} loads each):",
        args.page_loads
    );
    b.fill("#username", "admin");
    b.fill("#password", password.trim());
    b.click_button("Sign in");
    b.find("main h1");
    for (name, path) in [
        ("console: overview", "/".to_owned()),
        ("console: experiment (charts)", format!("/experiments/{id}")),
        ("console: cost", "/cost".to_owned()),
    ] {
        report_warm(
            name,
            &page_loads(&b, &s.ports.api_url(&path), args.page_loads),
        );
    }
    report_warm(
        "Prometheus UI: /graph",
        &page_loads(
            &prometheus_browser,
            &s.ports.prometheus_url("/graph"),
            args.page_loads,
        ),
    );
    drop(writers);
    Ok(())
}
