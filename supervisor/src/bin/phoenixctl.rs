//! Exit codes: 0 done (health: pass); 1 refused or failed (health: warn);
//! 2 health: fail, or the supervisor cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phoenix_supervisor::control::{Request, Response, call};
use phoenix_supervisor::health::{Status, health_document, service_status};
use phoenix_supervisor::status::{Snapshot, now_ms};

#[derive(Parser)]
#[command(
    name = "phoenixctl",
    version,
    about = "Controls a running phoenix-supervisor"
)]
struct Cli {
    /// Control socket of the supervisor.
    #[arg(
        long,
        env = "PHOENIX_SOCKET",
        default_value = "/run/phoenix/control.sock"
    )]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every service with its state, pid, restarts and uptime.
    Status,
    /// The health checks as a table; exit 0 pass, 1 warn, 2 fail.
    Health,
    /// Start a stopped or failed service (resets its start limit).
    Start { service: String },
    /// Stop a service; it stays stopped until started.
    Stop { service: String },
    /// Stop and start a service.
    Restart { service: String },
    /// Re-read the config file; restart only services whose settings changed.
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Cmd::Status => Request::Status,
        Cmd::Health => Request::Health,
        Cmd::Start { service } => Request::Start {
            service: service.clone(),
        },
        Cmd::Stop { service } => Request::Stop {
            service: service.clone(),
        },
        Cmd::Restart { service } => Request::Restart {
            service: service.clone(),
        },
        Cmd::Reload => Request::Reload,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let response = match runtime.block_on(call(&cli.socket, &request)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match (response, &cli.command) {
        (Response::Ok(msg), _) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        (Response::Error(msg), _) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        (Response::Snapshot(s), Cmd::Health) => {
            let (status, doc) = health_document(&s);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
            } else {
                print_health(&s, status);
            }
            ExitCode::from(status.exit_code())
        }
        (Response::Snapshot(s), _) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&s).expect("json"));
            } else {
                print_status(&s);
            }
            ExitCode::SUCCESS
        }
    }
}

fn uptime(started_at_ms: Option<u64>) -> String {
    match started_at_ms {
        Some(t) => {
            let secs = now_ms().saturating_sub(t) / 1000;
            humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
        }
        None => "-".into(),
    }
}

fn print_status(s: &Snapshot) {
    println!(
        "{:<16} {:<10} {:>8} {:>8}  {:<14} NOTE",
        "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME"
    );
    for svc in &s.services {
        let note = if !svc.depends_on.is_empty() {
            format!("waiting for {}", svc.depends_on.join(", "))
        } else {
            svc.last_error.clone().unwrap_or_default()
        };
        println!(
            "{:<16} {:<10} {:>8} {:>8}  {:<14} {}",
            svc.name,
            svc.state.as_str(),
            svc.pid.map_or("-".into(), |p| p.to_string()),
            svc.restarts,
            uptime(svc.started_at_ms),
            note
        );
    }
}

fn print_health(s: &Snapshot, overall: Status) {
    println!(
        "{:<16} {:<6} {:<10} {:>8}  DETAIL",
        "CHECK", "STATUS", "STATE", "RESTARTS"
    );
    for svc in &s.services {
        let status = service_status(svc.state, svc.wanted);
        println!(
            "{:<16} {:<6} {:<10} {:>8}  {}",
            svc.name,
            status.as_str(),
            svc.state.as_str(),
            svc.restarts,
            svc.last_error.clone().unwrap_or_default()
        );
    }
    if let Some(why) = &s.limits_unavailable {
        println!("note: resource limits are not applied: {why}");
    }
    println!("overall: {}", overall.as_str());
}
