//! phoenix-agent-bench: what the agent costs on a host and what it saves,
//! measured on this machine in one run:
//!
//! (a) CPU (share of one core) and RSS of `phoenix-agent` collecting every
//!     process and sending to a real stack, beside `prometheus-process-exporter`
//!     (Debian package), the usual per-process exporter, scraped at the same
//!     interval over the same window;
//! (b) each pipeline template's series reduction and accuracy of host CPU and
//!     memory totals on this host's processes (`phoenix-agent preview`);
//! (c) delivery after an outage of the API: the agent keeps collecting; once
//!     the API is back, the time until its queue is drained, and the
//!     collections of the outage missing from Prometheus (lost samples).
//!
//! Targets: the agent under 0.5 % of a core and under 20 MiB RSS, below the
//! exporter on both, and nothing lost.
//!
//! Build with `cargo build --release --workspace`, run
//! `target/release/phoenix-agent-bench`. Figures go to stdout as Markdown
//! tables, progress to stderr. Exit codes: 0 every target met; 1 the run
//! failed; 3 it ran and a target was missed.

#![forbid(unsafe_code)]

#[path = "procs.rs"]
#[allow(dead_code)]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use phoenix_tests::agents::{AgentProc, metric_in, raw_samples};
use phoenix_tests::{Stack, bin, free_port};
use serde_json::{Value, json};

const TARGET_CPU_PCT: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 20.0;

#[derive(Parser)]
#[command(
    name = "phoenix-agent-bench",
    about = "phoenix-agent beside prometheus-process-exporter: CPU, RSS, each template's reduction, delivery after an outage"
)]
struct Args {
    /// How often the agent collects and the exporter is scraped.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long CPU is measured over, after a warm-up of two intervals.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long the API is stopped for (c).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// The peer exporter's binary.
    #[arg(long, default_value = "/usr/bin/prometheus-process-exporter")]
    exporter: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("phoenix-agent-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Result<String> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(url)
        .send()?
        .error_for_status()?
        .text()?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CPU time and RSS of one process over a window, RSS sampled every second
/// (its peak is reported).
struct Usage {
    cpu_pct: f64,
    rss_peak_mib: f64,
}

fn measure(pids: &[i32], window: Duration) -> Result<Vec<Usage>> {
    let hz = procs::ticks_per_second()? as f64;
    let start: Vec<u64> = pids
        .iter()
        .map(|&p| procs::cpu_ticks(p))
        .collect::<Result<_>>()?;
    let mut peak = vec![0u64; pids.len()];
    let began = Instant::now();
    while began.elapsed() < window {
        for (i, &p) in pids.iter().enumerate() {
            peak[i] = peak[i].max(procs::rss_kib(p)?);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let secs = began.elapsed().as_secs_f64();
    pids.iter()
        .enumerate()
        .map(|(i, &p)| {
            let ticks = procs::cpu_ticks(p)? - start[i];
            Ok(Usage {
                cpu_pct: ticks as f64 / hz / secs * 100.0,
                rss_peak_mib: peak[i] as f64 / 1024.0,
            })
        })
        .collect()
}

fn start_exporter(exe: &Path, dir: &Path) -> Result<(Proc, u16)> {
    ensure!(
        exe.exists(),
        "{} is not installed (Debian package prometheus-process-exporter; scripts/setup.sh)",
        exe.display()
    );
    // Every process, grouped by its name: what the exporter can do per process.
    let config = dir.join("process-exporter.yml");
    std::fs::write(
        &config,
        "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n    - '.+'\n",
    )?;
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("-config.path={}", config.display()))
        .arg(format!("-web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok((Proc(child), port))
}

fn series_of(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn run(args: &Args) -> Result<bool> {
    let mut met = true;
    eprintln!("phoenix-agent-bench: starting the stack");
    let stack = Stack::start_without_pushgateway("");
    let admin = stack.admin_token();
    let r = stack.post(
        Some(&admin),
        "/api/v1/enrollment-tokens",
        &json!({ "description": "agent bench", "uses": 1, "expires_in_secs": 3600 }),
    );
    ensure!(r.status == 201, "creating an enrollment token: {r:?}");
    let token = r.body["token"].as_str().context("token")?.to_owned();

    let mut agent = AgentProc::every(&stack, "bench", &token, args.interval, "");
    agent.start();
    // A series the agent has not written yet is an error here.
    let value = |agent: &AgentProc, series: &str| {
        agent
            .metric(series)
            .with_context(|| format!("no {series} in the agent's /metrics"))
    };
    let scratch = tempfile::tempdir()?;
    let (exporter, exporter_port) = start_exporter(&args.exporter, scratch.path())?;
    let exporter_url = format!("http://127.0.0.1:{exporter_port}/metrics");

    // Scrape the exporter at the agent's interval, as a Prometheus would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scraper = {
        let (stop, scraped, url, every) = (
            stop.clone(),
            scraped.clone(),
            exporter_url.clone(),
            args.interval,
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = get(&url) {
                    scraped.store(series_of(&text), std::sync::atomic::Ordering::Relaxed);
                }
                let until = Instant::now() + every;
                while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };

    eprintln!(
        "phoenix-agent-bench: warming up for {:?}",
        args.interval * 2
    );
    let ready = Instant::now() + Duration::from_secs(60);
    while agent
        .metric("phoenix_agent_collections_total")
        .unwrap_or(0.0)
        < 1.0
    {
        ensure!(
            Instant::now() < ready,
            "the agent did not collect: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(args.interval * 2);
    eprintln!(
        "phoenix-agent-bench: measuring CPU and RSS for {:?}",
        args.window
    );
    let usage = measure(&[agent.pid(), exporter.0.id() as i32], args.window)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = scraper.join();
    drop(exporter);
    let full = preview(&agent, "full_fidelity", args.interval)?;

    println!(
        "## Agent cost, collecting every {} for {} ({} processes)\n",
        humantime::format_duration(args.interval),
        humantime::format_duration(args.window),
        full["processes"]
    );
    println!("| collector | CPU (% of one core) | RSS peak (MiB) | series per collection |");
    println!("|---|---:|---:|---:|");
    let (a, e) = (&usage[0], &usage[1]);
    println!(
        "| phoenix-agent (full fidelity, sent by remote write) | {:.3} | {:.1} | {} |",
        a.cpu_pct, a.rss_peak_mib, full["series_before"]
    );
    println!(
        "| prometheus-process-exporter (grouped by name, scraped) | {:.3} | {:.1} | {} |",
        e.cpu_pct,
        e.rss_peak_mib,
        scraped.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "\nagent / exporter: CPU {:.2}x, RSS {:.2}x (targets: agent < {TARGET_CPU_PCT} % and < {TARGET_RSS_MIB} MiB, below the exporter on both)\n",
        a.cpu_pct / e.cpu_pct,
        a.rss_peak_mib / e.rss_peak_mib
    );
    met &= a.cpu_pct < TARGET_CPU_PCT
        && a.rss_peak_mib < TARGET_RSS_MIB
        && a.cpu_pct < e.cpu_pct
        && a.rss_peak_mib < e.rss_peak_mib;

    println!("## Templates on this host's processes\n");
    println!(
        "| template | series before | series after | reduction | samples/min after | CPU total kept | memory total kept |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for t in phoenix_wire::pipeline::templates() {
        let p = preview(&agent, t.name, args.interval)?;
        let pct = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {:.1} % | {} | {:.2} % | {:.2} % |",
            t.name,
            p["series_before"],
            p["series_after"],
            pct("reduction_pct"),
            p["samples_per_minute_after"],
            pct("cpu_accuracy_pct"),
            pct("memory_accuracy_pct")
        );
    }

    eprintln!(
        "phoenix-agent-bench: stopping the API for {:?}",
        args.outage
    );
    let id = agent.id();
    let collections = || value(&agent, "phoenix_agent_collections_total");
    let before = collections()?;
    let t0 = now_ms();
    let out = stack.sup.ctl(&["stop", "api"]);
    ensure!(out.status.success(), "stopping the API: {out:?}");
    std::thread::sleep(args.outage);
    let after = collections()?;
    let t1 = now_ms();
    let queued = value(&agent, "phoenix_agent_queue_batches")?;
    let restarted = Instant::now();
    let out = stack.sup.ctl(&["start", "api"]);
    ensure!(out.status.success(), "starting the API: {out:?}");
    // Drained: at most the batch of the current collection waits.
    let oldest_ok = args.interval.as_secs_f64() * 2.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let m = agent.metrics();
        let waiting = metric_in(&m, "phoenix_agent_queue_batches").unwrap_or(f64::MAX);
        let oldest = metric_in(&m, "phoenix_agent_queue_oldest_age_seconds").unwrap_or(f64::MAX);
        if waiting <= 1.0 && oldest <= oldest_ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the queue did not drain in 10 minutes: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let drained = restarted.elapsed();
    // Every collection of the outage stored at its time: the distinct
    // timestamps of the agent's samples in the outage.
    let range = (now_ms() - t0) / 1000 + 30;
    let samples = raw_samples(
        &stack.ports.prometheus_url(""),
        &format!("phoenix_process_memory_bytes{{agent=\"{id}\"}}[{range}s]"),
    );
    let mut stamps: Vec<i64> = samples
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(t, _)| *t))
        .filter(|t| (t0..=t1).contains(t))
        .collect();
    stamps.sort_unstable();
    stamps.dedup();
    let collected = (after - before) as i64;
    // A collection may straddle t0 or t1 by a tick.
    let lost = (collected - stamps.len() as i64 - 1).max(0);
    let evicted = value(&agent, "phoenix_agent_evicted_samples_total")?;
    println!(
        "\n## Delivery after an outage of {}\n",
        humantime::format_duration(args.outage)
    );
    println!(
        "| collections in the outage | batches queued | stored at their time | drained after the API's restart | samples lost | evicted |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {collected} | {queued} | {} | {:.1} s | {lost} | {evicted} |",
        stamps.len(),
        drained.as_secs_f64()
    );
    met &= lost == 0 && evicted == 0.0;
    Ok(met)
}

/// `phoenix-agent preview --json` of one template.
fn preview(agent: &AgentProc, template: &str, interval: Duration) -> Result<Value> {
    let out = Command::new(bin("phoenix-agent"))
        .args(["preview", "--json", "--pipeline", template, "--interval"])
        .arg(humantime::format_duration(interval).to_string())
        .arg("--config")
        .arg(agent.config())
        .output()?;
    ensure!(
        out.status.success(),
        "phoenix-agent preview {template}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
