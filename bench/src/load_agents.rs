//! phoenix-load: how many agents one appliance serves. Simulated agents
//! enroll, heartbeat every 15 s, long-poll for tasks, report results and send
//! metric batches of realistic size, against the real stack (PostgreSQL,
//! Prometheus, phoenix-api under phoenix-supervisor) on this machine. The
//! agent count grows in steps; each step reports p50/p99 of every request
//! kind, and the largest count whose p99 stays under the target is the
//! answer. Long-polls are held open, so every agent also holds a connection.
//!
//! Metric batches go by remote write (`POST /api/v1/agent/write`, what
//! agents send). The agents come from several loopback addresses, since the
//! agent listener bounds the connections of one source.
//!
//! Build with `cargo build --release --workspace`, run `target/release/phoenix-load`.
//! Exit codes: 0 the target count was reached; 1 the run failed; 3 it ran and
//! the largest passing count is below the target.

#![forbid(unsafe_code)]

#[path = "stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use rand::Rng;
use serde_json::{Value, json};
use stats::{Summary, ms};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "phoenix-load",
    about = "Simulate N agents against the Phoenix API and find the largest N with p99 under target"
)]
struct Args {
    /// Agent counts to try, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![250, 500, 1000, 2000, 3000])]
    steps: Vec<usize>,
    /// Seconds measured at each step (after every agent of the step has enrolled).
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Series per metric push (an agent's processes times metrics).
    #[arg(long, default_value_t = 200)]
    series: usize,
    /// Tasks created per second across all agents.
    #[arg(long, default_value_t = 10.0)]
    task_rate: f64,
    /// The p99 latency a step must stay under, in milliseconds.
    #[arg(long, default_value_t = 200)]
    target_p99_ms: u64,
    /// The agent count the run must reach.
    #[arg(long, default_value_t = 2000)]
    target_agents: usize,
    /// TOML appended to the stack's phoenix.toml, e.g.
    /// `[services.api]\nenv = { PHOENIX_DATABASE_MAX_CONNECTIONS = "20" }`.
    #[arg(long, default_value = "")]
    stack_config: String,
    /// API replicas on the stack's database (phase 3): the stack's own and
    /// `N - 1` more `phoenix-api` processes; agent `i` talks to replica
    /// `i mod N`, operators to the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    replicas: u32,
}

const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Samples {
    by_kind: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    recording: AtomicBool,
}

impl Samples {
    async fn record(&self, kind: &'static str, took: Duration, status: Result<u16, String>) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        match status {
            Ok(s) if s < 400 => self
                .by_kind
                .lock()
                .await
                .entry(kind)
                .or_default()
                .push(took),
            Ok(s) => {
                *self
                    .errors
                    .lock()
                    .await
                    .entry(format!("{kind}: HTTP {s}"))
                    .or_default() += 1
            }
            Err(e) => {
                *self
                    .errors
                    .lock()
                    .await
                    .entry(format!("{kind}: {e}"))
                    .or_default() += 1
            }
        }
    }
}

struct Target {
    /// The operator's client, on the user listener.
    client: reqwest::Client,
    /// The agents' clients, each from its own loopback address: the agent
    /// listener bounds the connections of one source (1024 by default), as
    /// agents on real hosts each have their own.
    agent_clients: Vec<reqwest::Client>,
    /// Each replica's agent listener.
    agent_bases: Vec<String>,
    api_base: String,
}

/// Agents sharing one source address; each holds up to two connections.
const AGENTS_PER_SOURCE: usize = 400;

impl Target {
    fn agent_client(&self, i: usize) -> reqwest::Client {
        self.agent_clients[i % self.agent_clients.len()].clone()
    }

    /// The agent listener of agent `i`'s replica.
    fn agent_base(&self, i: usize) -> String {
        self.agent_bases[i % self.agent_bases.len()].clone()
    }
}

fn http_client(source: Option<std::net::IpAddr>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(40))
        .pool_max_idle_per_host(usize::MAX)
        .local_address(source)
        .build()
}

/// An agent's batch: `series` process series, half CPU and half memory, as
/// a remote write stamped `now_ms`.
fn write_body(series: usize, now_ms: i64, rng: &mut impl Rng) -> Vec<u8> {
    use phoenix_wire::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
    let one = |name: &str, i: usize, value: f64| TimeSeries {
        labels: vec![
            Label::new("__name__", name),
            Label::new("pid", (1000 + i).to_string()),
            Label::new("process", format!("proc-{i}")),
        ],
        samples: vec![Sample {
            value,
            timestamp: now_ms,
        }],
        ..Default::default()
    };
    let mut timeseries = Vec::with_capacity(series);
    for i in 0..series / 2 {
        timeseries.push(one(
            "phoenix_process_cpu_percent",
            i,
            rng.gen_range(0.0..5.0),
        ));
    }
    for i in 0..series - series / 2 {
        timeseries.push(one(
            "phoenix_process_memory_bytes",
            i,
            rng.gen_range(1_000_000.0..500_000_000.0),
        ));
    }
    encode(&WriteRequest {
        timeseries,
        ..Default::default()
    })
}

async fn timed(req: reqwest::RequestBuilder) -> (Duration, Result<(u16, Value), String>) {
    let t0 = Instant::now();
    let r = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            Ok((status, body))
        }
        Err(e) => Err(if e.is_timeout() {
            "timeout".into()
        } else {
            e.to_string()
        }),
    };
    (t0.elapsed(), r)
}

/// One simulated agent, until `stop`.
async fn agent(
    base: String,
    client: reqwest::Client,
    credential: String,
    samples: Arc<Samples>,
    series: usize,
    stop: Arc<AtomicBool>,
) {
    let auth = format!("Bearer {credential}");
    let poller = {
        let (base, client, auth, samples, stop) = (
            base.clone(),
            client.clone(),
            auth.clone(),
            samples.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            // Agents start at different times: their polls are not in step.
            let phase = rand::thread_rng().gen_range(0.0..25.0);
            tokio::time::sleep(Duration::from_secs_f64(phase)).await;
            while !stop.load(Ordering::Relaxed) {
                let req = client
                    .get(format!("{base}/api/v1/agent/tasks?wait=25"))
                    .header("authorization", &auth);
                let (_, r) = timed(req).await;
                let tasks = match r {
                    Ok((200, body)) => body["tasks"].as_array().cloned().unwrap_or_default(),
                    Ok((s, _)) => {
                        samples.record("long-poll", Duration::ZERO, Ok(s)).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        samples.record("long-poll", Duration::ZERO, Err(e)).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                for task in tasks {
                    let id = task["id"].as_str().unwrap_or_default();
                    let body = json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "succeeded", "result": { "ok": true } });
                    let req = client
                        .post(format!("{base}/api/v1/agent/tasks/{id}/result"))
                        .header("authorization", &auth)
                        .json(&body);
                    let (took, r) = timed(req).await;
                    samples.record("task result", took, r.map(|(s, _)| s)).await;
                }
            }
        })
    };
    let mut rng = rand::rngs::StdRng::from_entropy();
    // Spread the agents over the interval, as real ones are.
    tokio::time::sleep(HEARTBEAT.mul_f64(rng.gen_range(0.0..1.0))).await;
    let mut every = tokio::time::interval(HEARTBEAT);
    while !stop.load(Ordering::Relaxed) {
        every.tick().await;
        let req = client
            .post(format!("{base}/api/v1/agent/heartbeat"))
            .header("authorization", &auth)
            .json(&json!({ "version": "load" }));
        let (took, r) = timed(req).await;
        samples.record("heartbeat", took, r.map(|(s, _)| s)).await;
        use phoenix_wire::remote_write as rw;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let req = client
            .post(format!("{base}/api/v1/agent/write"))
            .header("content-type", rw::CONTENT_TYPE)
            .header("content-encoding", rw::CONTENT_ENCODING)
            .header(rw::VERSION_HEADER, rw::VERSION)
            .body(write_body(series, now_ms, &mut rng));
        let kind = "metrics: remote write";
        let (took, r) = timed(req.header("authorization", &auth)).await;
        samples.record(kind, took, r.map(|(s, _)| s)).await;
    }
    poller.abort();
}

use rand::SeedableRng;

/// CPU time (user and system) of `pids` so far, in seconds.
fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // After the command's closing parenthesis: the state is field 3,
            // utime and stime fields 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / tick
}

/// Microseconds this machine's tasks have stalled so far, from the
/// kernel's pressure stall information: waiting for a CPU (some), for I/O
/// (some) and with every task waiting for I/O (full). None without PSI.
fn stalled_us() -> Option<[u64; 3]> {
    let total = |file: &str, kind: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/pressure/{file}"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(kind))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("total="))?
            .parse()
            .ok()
    };
    Some([
        total("cpu", "some")?,
        total("io", "some")?,
        total("io", "full")?,
    ])
}

/// Samples [`stalled_us`] every second until `stop`, and returns the
/// share of the whole span and of its worst second that each was stalled.
async fn pressure(stop: Arc<AtomicBool>) -> Option<([f64; 3], [f64; 3])> {
    let first = stalled_us()?;
    let (t0, mut last, mut worst) = (Instant::now(), first, [0.0f64; 3]);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        every.tick().await;
        let now = stalled_us()?;
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        for i in 0..3 {
            worst[i] = worst[i].max((now[i] - last[i]) as f64 / (secs * 1e6));
        }
        (last, at) = (now, Instant::now());
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let whole = std::array::from_fn(|i| (last[i] - first[i]) as f64 / (secs * 1e6));
    Some((whole, worst))
}

/// The processes whose parent is `parent` (PostgreSQL's backends).
fn children_of(parent: i32) -> Vec<i32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')').is_some_and(|i| {
                    stat[i + 2..].split_whitespace().nth(1) == Some(parent.as_str())
                })
            })
        })
        .collect()
}

/// Batches the API forwarded and the requests they went in (stored ones),
/// and the total time and count of Prometheus's remote-write handler.
async fn forwarding(
    client: &reqwest::Client,
    api_metrics: &str,
    prometheus_metrics: &str,
) -> Result<[f64; 14], String> {
    let text = async |url: &str| -> Result<String, String> {
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    };
    let (api, prometheus) = (text(api_metrics).await?, text(prometheus_metrics).await?);
    let value = |exposition: &str, name: &str| -> Result<f64, String> {
        phoenix_tests::agents::metric_in(exposition, name)
            .ok_or_else(|| format!("{name} is not exposed"))
    };
    let handler = "{code=\"204\",handler=\"/api/v1/write\"}";
    // A histogram's count, and its count above 200 ms, over the series
    // whose labels contain `filter`.
    let histogram = |exposition: &str, family: &str, filter: &str| -> (f64, f64) {
        let sum = |suffix: &str, also: &str| -> f64 {
            exposition
                .lines()
                .filter(|l| l.starts_with(&format!("{family}{suffix}")))
                .filter(|l| l.contains(filter) && l.contains(also))
                .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
                .sum()
        };
        let count = sum("_count", "");
        (count, count - sum("_bucket", "le=\"0.2\""))
    };
    let (handled, handled_slow) = histogram(
        &api,
        "phoenix_api_http_request_duration_seconds",
        "route=\"/api/v1/agent/write\"",
    );
    let (waited, waited_slow) =
        histogram(&api, "phoenix_api_remote_write_forward_wait_seconds", "");
    let (requested, requested_slow) = histogram(
        &api,
        "phoenix_api_remote_write_request_duration_seconds",
        "",
    );
    let (received, received_slow) = histogram(
        &prometheus,
        "prometheus_http_request_duration_seconds",
        "handler=\"/api/v1/write\"",
    );
    let (forwarded, forwarded_slow) = histogram(
        &api,
        "phoenix_api_remote_write_forward_duration_seconds",
        "",
    );
    Ok([
        value(
            &api,
            "phoenix_api_remote_write_batches_total{outcome=\"stored\"}",
        )?,
        value(
            &api,
            "phoenix_api_remote_write_requests_total{outcome=\"stored\"}",
        )?,
        value(
            &prometheus,
            &format!("prometheus_http_request_duration_seconds_sum{handler}"),
        )
        .or_else(|_| {
            value(
                &prometheus,
                "prometheus_http_request_duration_seconds_sum{handler=\"/api/v1/write\"}",
            )
        })?,
        value(
            &prometheus,
            &format!("prometheus_http_request_duration_seconds_count{handler}"),
        )
        .or_else(|_| {
            value(
                &prometheus,
                "prometheus_http_request_duration_seconds_count{handler=\"/api/v1/write\"}",
            )
        })?,
        handled,
        handled_slow,
        forwarded,
        forwarded_slow,
        received,
        received_slow,
        waited,
        waited_slow,
        requested,
        requested_slow,
    ])
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phoenix-load: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    ensure!(
        !args.steps.is_empty() && args.steps.windows(2).all(|w| w[0] < w[1]),
        "--steps must be increasing"
    );
    // Every agent holds connections; the supervisor passes the raised limit on to the API.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let max = *args.steps.last().expect("steps");
    ensure!(
        hard as usize > max * 4,
        "open files limit {hard} is too low for {max} agents"
    );

    eprintln!("phoenix-load: starting the stack");
    let stack = phoenix_tests::Stack::start_without_pushgateway(&args.stack_config);
    let replicas: Vec<phoenix_tests::replicas::Replica> = (2..=args.replicas)
        .map(|n| phoenix_tests::replicas::Replica::start(&stack, n))
        .collect();
    let mut agent_bases = vec![stack.ports.agent_url("")];
    agent_bases.extend(replicas.iter().map(|r| r.agent_url("")));
    let admin = stack.admin_token();
    let token = stack.post(
        Some(&admin),
        "/api/v1/enrollment-tokens",
        &json!({ "description": "load", "uses": max, "expires_in_secs": 86400 }),
    );
    ensure!(
        token.status == 201,
        "creating an enrollment token: {token:?}"
    );
    let enroll_token = token.body["token"].as_str().context("token")?.to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sources = max.div_ceil(AGENTS_PER_SOURCE);
    let target = Arc::new(Target {
        client: http_client(None)?,
        agent_clients: (0..sources)
            .map(|k| http_client(Some(std::net::Ipv4Addr::new(127, 0, 1, 1 + k as u8).into())))
            .collect::<reqwest::Result<_>>()?,
        agent_bases,
        api_base: stack.ports.api_url(""),
    });
    let samples = Arc::new(Samples::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut agent_ids = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut best = 0;
    let api_metrics = stack.ports.api_url("/metrics");
    // What each part of the stack spends, for the projection in scaling.md:
    // every API replica, every PostgreSQL process, Prometheus.
    let mut api_pids = vec![stack.sup.pid_of("api")];
    api_pids.extend(replicas.iter().map(|r| r.pid()));
    let postmaster = stack.sup.pid_of("postgres");
    let prometheus = stack.sup.pid_of("prometheus");
    type Pids = Box<dyn Fn() -> Vec<i32> + Send + Sync>;
    let components: Vec<(&str, Pids)> = vec![
        ("API", Box::new(move || api_pids.clone())),
        (
            "PostgreSQL",
            Box::new(move || {
                let mut pids = children_of(postmaster);
                pids.push(postmaster);
                pids
            }),
        ),
        ("Prometheus", Box::new(move || vec![prometheus])),
    ];
    let prometheus_metrics = stack.ports.prometheus_url("/metrics");

    // Ctrl-C or SIGTERM ends the run through an error, so that the stack
    // (its own process group) is stopped on the way out, not orphaned.
    let interrupted = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    };
    let work = async {
        // Operator load: tasks for random agents at a steady rate.
        let ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let created = Arc::new(AtomicU64::new(0));
        {
            let (t, ids, samples, stop, admin, created) = (
                target.clone(),
                ids.clone(),
                samples.clone(),
                stop.clone(),
                admin.clone(),
                created.clone(),
            );
            let period = Duration::from_secs_f64(1.0 / args.task_rate.max(0.1));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                while !stop.load(Ordering::Relaxed) {
                    every.tick().await;
                    let id = {
                        let ids = ids.lock().await;
                        if ids.is_empty() {
                            continue;
                        }
                        ids[rand::thread_rng().gen_range(0..ids.len())].clone()
                    };
                    let req = t
                        .client
                        .post(format!("{}/api/v1/agents/{id}/tasks", t.api_base))
                        .bearer_auth(&admin)
                        .json(&json!({ "kind": "noop", "payload": {} }));
                    let (took, r) = timed(req).await;
                    samples.record("task create", took, r.map(|(s, _)| s)).await;
                    created.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for &n in &args.steps {
            eprintln!("phoenix-load: {n} agents");
            let mut enroll_times = Vec::new();
            while agent_ids.len() < n {
                let i = agent_ids.len();
                let body = json!({ "token": enroll_token, "name": format!("load-{i}"), "hostname": format!("host-{i}") });
                let (took, r) = timed(
                    target
                        .agent_client(i)
                        .post(format!("{}/api/v1/agents/enroll", target.agent_base(i)))
                        .json(&body),
                )
                .await;
                let (status, body) = r.map_err(anyhow::Error::msg)?;
                ensure!(status == 201, "enrolling agent {i}: HTTP {status} {body}");
                enroll_times.push(took);
                let credential = body["credential"]
                    .as_str()
                    .context("credential")?
                    .to_string();
                agent_ids.push(body["agent_id"].as_str().context("agent_id")?.to_string());
                tokio::spawn(agent(
                    target.agent_base(i),
                    target.agent_client(i),
                    credential,
                    samples.clone(),
                    args.series,
                    stop.clone(),
                ));
            }
            *ids.lock().await = agent_ids.clone();
            // Long enough for new agents to settle into their rhythm (their
            // first polls are spread over 25 s), then measure.
            tokio::time::sleep(Duration::from_secs(30)).await;
            samples.by_kind.lock().await.clear();
            samples.errors.lock().await.clear();
            let before = forwarding(&target.client, &api_metrics, &prometheus_metrics).await;
            let cpu_before: Vec<f64> = components
                .iter()
                .map(|(_, pids)| cpu_seconds(&pids()))
                .collect();
            let t0 = Instant::now();
            samples.recording.store(true, Ordering::Relaxed);
            let window_over = Arc::new(AtomicBool::new(false));
            let stalls = tokio::spawn(pressure(window_over.clone()));
            tokio::time::sleep(Duration::from_secs(args.window_secs)).await;
            samples.recording.store(false, Ordering::Relaxed);
            window_over.store(true, Ordering::Relaxed);
            match stalls.await.ok().flatten() {
                Some((whole, worst)) => notes.push(format!(
                    "{n} agents: time stalled over the window (worst second): \
                     CPU some {:.0} % ({:.0} %), I/O some {:.0} % ({:.0} %), \
                     I/O full {:.0} % ({:.0} %)",
                    whole[0] * 100.0,
                    worst[0] * 100.0,
                    whole[1] * 100.0,
                    worst[1] * 100.0,
                    whole[2] * 100.0,
                    worst[2] * 100.0
                )),
                None => notes.push(format!(
                    "{n} agents: no pressure stall information (/proc/pressure)"
                )),
            }
            let after = forwarding(&target.client, &api_metrics, &prometheus_metrics).await;
            let elapsed = t0.elapsed().as_secs_f64();
            let used: Vec<f64> = components
                .iter()
                .zip(&cpu_before)
                .map(|((_, pids), before)| (cpu_seconds(&pids()) - before) / elapsed)
                .collect();
            let cores: Vec<String> = components
                .iter()
                .zip(&used)
                .map(|((name, _), used)| format!("{name} {used:.2}"))
                .collect();
            notes.push(format!(
                "{n} agents: cores used over the window: {}; {:.0} agents per core of the API",
                cores.join(", "),
                n as f64 / used[0].max(0.01)
            ));
            if let (Ok(a), Ok(b)) = (&after, &before) {
                let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
                let (batches, requests, handler_secs, handled) = (d[0], d[1], d[2], d[3]);
                notes.push(format!(
                    "{n} agents: {batches:.0} batches reached Prometheus in {requests:.0} requests \
                     ({:.2} per request); its write handler took {:.1} ms on average; over \
                     200 ms: {:.0} of {:.0} writes in the API's handler, {:.0} of {:.0} batches \
                     in its forwarder ({:.0} of {:.0} waiting for a request, {:.0} of {:.0} \
                     requests), {:.0} of {:.0} requests in Prometheus's handler",
                    batches / requests.max(1.0),
                    handler_secs * 1000.0 / handled.max(1.0),
                    d[5],
                    d[4],
                    d[7],
                    d[6],
                    d[11],
                    d[10],
                    d[13],
                    d[12],
                    d[9],
                    d[8]
                ));
            } else {
                notes.push(format!(
                    "{n} agents: forwarding figures unreadable: {after:?} {before:?}"
                ));
            }
            let by_kind = samples.by_kind.lock().await.clone();
            let errors = samples.errors.lock().await.clone();
            let target_p99 = Duration::from_millis(args.target_p99_ms);
            let mut pass = errors.is_empty();
            for (kind, s) in &by_kind {
                let sum = Summary::of(s).expect("samples");
                pass &= sum.p99 < target_p99;
                rows.push(format!(
                    "| {n} | {kind} | {} | {:.1} | {} | {} | {} |",
                    sum.count,
                    sum.count as f64 / args.window_secs as f64,
                    ms(sum.p50),
                    ms(sum.p99),
                    ms(sum.max)
                ));
            }
            if let Some(e) = Summary::of(&enroll_times) {
                rows.push(format!(
                    "| {n} | enroll (new agents) | {} | - | {} | {} | {} |",
                    e.count,
                    ms(e.p50),
                    ms(e.p99),
                    ms(e.max)
                ));
            }
            for (what, count) in &errors {
                rows.push(format!("| {n} | error: {what} | {count} | | | | |"));
            }
            rows.push(format!(
                "| {n} | **step {}** | | | | | |",
                if pass { "PASS" } else { "MISS" }
            ));
            if !pass {
                break;
            }
            best = n;
        }
        stop.store(true, Ordering::Relaxed);
        anyhow::Ok(())
    };
    runtime.block_on(async {
        tokio::select! {
            result = work => result,
            signal = interrupted => {
                signal?;
                anyhow::bail!("interrupted; stopping the stack")
            }
        }
    })?;

    println!("| agents | request | n | per s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    for note in &notes {
        println!("{note}");
    }
    let met = best >= args.target_agents;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nreplicas: {} on {cores} cores ({:.0} agents per replica, {:.0} per core at the largest passing count)",
        args.replicas,
        best as f64 / f64::from(args.replicas),
        best as f64 / cores as f64
    );
    println!(
        "largest agent count with every p99 < {} ms and no errors: {best} (target {}: {})",
        args.target_p99_ms,
        args.target_agents,
        if met { "PASS" } else { "MISS" }
    );
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(replicas);
    drop(stack);
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
