//! The `phoenix-agent` command; everything it does lives in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use phoenix_agent::{config, enroll, preview, queue, run};

#[derive(Parser)]
#[command(
    name = "phoenix-agent",
    version,
    about = "Phoenix agent: process metrics, reduction pipelines and experiments"
)]
struct Cli {
    /// The agent's TOML file.
    #[arg(
        long,
        short,
        global = true,
        env = "PHOENIX_AGENT_CONFIG",
        default_value = "/etc/phoenix-agent/agent.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration file and exit.
    Check,
    /// Enroll with the control plane if not enrolled yet, then exit.
    Enroll,
    /// Print the queue, the last deliveries and what runs, from the state folder.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline once on this host's processes and compare it with full fidelity.
    Preview {
        /// A template name (e.g. top_k_cpu_10) or a JSON file holding a pipeline.
        #[arg(long)]
        pipeline: String,
        /// How long to measure CPU over.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        sample_for: Duration,
        /// The collect interval to count samples per minute with (the
        /// configuration's when it can be read, else 15s).
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHOENIX_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phoenix-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_of(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phoenix-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_of(cli: Cli) -> anyhow::Result<ExitCode> {
    let load = || config::load(&cli.config).map_err(anyhow::Error::from);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            // What retrying cannot fix exits 78, which systemd does not restart.
            let stop = |reason: String| {
                tracing::error!("{reason}");
                eprintln!("phoenix-agent: {reason}");
                Ok(ExitCode::from(run::EXIT_REENROLL as u8))
            };
            let config = match load() {
                Ok(c) => c,
                Err(e) => return stop(format!("{e:#}")),
            };
            match run::run(config).await {
                Ok(None) => Ok(ExitCode::SUCCESS),
                Ok(Some(reason)) => stop(reason),
                Err(e) if e.downcast_ref::<run::NeedsOperator>().is_some() => {
                    stop(format!("{e:#}"))
                }
                Err(e) => Err(e),
            }
        }
        Command::Check => {
            let c = load()?;
            println!(
                "{}: valid (api {}, state {})",
                c.file.display(),
                c.api.url,
                c.state_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll => {
            let c = load()?;
            std::fs::create_dir_all(&c.state_dir)?;
            let client = phoenix_agent::client::http_client(c.api.ca_file.as_deref())?;
            let credential = enroll::credential(&c, &client).await?;
            println!("enrolled as agent {}", credential.agent_id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let c = load()?;
            let status = status(&c).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preview {
            pipeline,
            sample_for,
            interval,
            json,
        } => {
            let interval = interval
                .or_else(|| config::load(&cli.config).ok().map(|c| c.collect_interval))
                .unwrap_or(config::DEFAULT_COLLECT_INTERVAL);
            let (name, spec) = preview::load_pipeline(&pipeline)?;
            let p = preview::run(&name, &spec, sample_for, interval).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                preview::print(&p);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read from the state folder, so it works whether the agent runs or not.
async fn status(c: &config::Config) -> anyhow::Result<serde_json::Value> {
    let enrolled = enroll::stored(&c.state_dir)?;
    let q = queue::Queue::open_read_only(&c.state_dir).await?;
    let stats = q.stats().await?;
    let experiments: Vec<_> = q.experiments().await?.into_iter().map(|(id, _, _, until)| {
        serde_json::json!({"experiment_id": id, "running_until": chrono::DateTime::from_timestamp_millis(until)})
    }).collect();
    let live: serde_json::Value = match q.setting("live_pipeline").await? {
        Some(text) => serde_json::from_str(&text)?,
        None => serde_json::json!({"stages": []}),
    };
    let now = phoenix_agent::collect::now_ms();
    Ok(serde_json::json!({
        "agent_id": enrolled.map(|c| c.agent_id),
        "api": c.api.url,
        "state_dir": c.state_dir,
        "queue": stats,
        "oldest_age_secs": stats.oldest_collected_at_ms.map(|t| (now - t).max(0) / 1000),
        "live_pipeline": live,
        "experiments": experiments,
    }))
}

fn print_status(s: &serde_json::Value) {
    let q = &s["queue"];
    println!(
        "agent          {}",
        s["agent_id"].as_str().unwrap_or("not enrolled")
    );
    println!("control plane  {}", s["api"].as_str().unwrap_or(""));
    println!("state          {}", s["state_dir"].as_str().unwrap_or(""));
    println!(
        "queue          {} batches, {} bytes, {} samples, oldest {}",
        q["batches"],
        q["bytes"],
        q["samples"],
        s["oldest_age_secs"]
            .as_i64()
            .map_or("-".to_owned(), |a| format!("{a} s ago"))
    );
    println!(
        "results        {} waiting for the control plane; {} tasks running",
        q["results"], q["tasks"]
    );
    println!(
        "dropped        {} batches ({} samples) evicted, {} refused",
        q["evicted_batches"], q["evicted_samples"], q["rejected_batches"]
    );
    println!("live pipeline  {}", s["live_pipeline"]);
    println!("experiments    {}", s["experiments"]);
}
