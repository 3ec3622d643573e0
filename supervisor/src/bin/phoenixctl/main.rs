//! Exit codes: 0 done (health: pass); 1 refused or failed (health: warn);
//! 2 health: fail, or the supervisor cannot be reached.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod dialog;
mod migrate;
mod restore;
use phoenix_supervisor::cli_docs::{Docs, ExitCodes};
use phoenix_supervisor::control::{Request, Response, call};
use phoenix_supervisor::health::{Status, certificate_check, health_document, service_status};
use phoenix_supervisor::status::{CertificateStatus, Level, ScalingStatus, Snapshot, now_ms};

/// The exit codes, for `--help` and the manual page (docs/supervisor.md has the table).
const EXIT_CODES: ExitCodes = ExitCodes(&[
    (0, "done; health, certs: pass; scaling: every trigger ok."),
    (
        1,
        "the supervisor refused, or the command failed; health, certs: warn; scaling: a trigger raised.",
    ),
    (
        2,
        "the supervisor cannot be reached; health, certs: fail; an invalid command line.",
    ),
]);

#[derive(Parser)]
#[command(
    name = "phoenixctl",
    version,
    about = "Controls a running phoenix-supervisor",
    after_long_help = EXIT_CODES.help()
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
    /// The capacity triggers: level, value, thresholds, recommendation.
    Scaling,
    /// The TLS certificate: names, issuer, expiry, next renewal, errors.
    Certs {
        #[command(subcommand)]
        action: Option<CertsCmd>,
    },
    /// Backups of the managed PostgreSQL (pgBackRest).
    Backup {
        #[command(subcommand)]
        action: BackupCmd,
    },
    /// Restore PostgreSQL to a point in time, a backup, or the latest state.
    ///
    /// Run bare in a terminal, it asks; the API and PostgreSQL are stopped
    /// meanwhile, and the old data directory is kept aside.
    Restore {
        /// The moment to restore: every transaction committed by then
        /// (RFC 3339, or "YYYY-MM-DD HH:MM:SS" in UTC).
        #[arg(long, conflicts_with_all = ["backup", "latest"])]
        to: Option<String>,
        /// A backup as it ended (a label from `phoenixctl backup list`).
        #[arg(long, conflicts_with = "latest")]
        backup: Option<String>,
        /// The newest backup and all archived WAL after it.
        #[arg(long)]
        latest: bool,
        /// The repository to restore from.
        #[arg(long, default_value = "local", value_parser = ["local", "s3"])]
        from: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Move the built-in database onto an external PostgreSQL (RDS ...).
    ///
    /// Checks the target (TLS verify-full, empty), stops the API, copies
    /// the database (pg_dump, then pg_restore in one transaction), compares
    /// every table's rows, writes [postgres] url, password_file and ca_file
    /// into the config file and reloads: the API runs on the target, the
    /// built-in PostgreSQL stops with its data kept. Audited.
    #[command(name = "migrate-database")]
    MigrateDatabase {
        /// The target, as [postgres] url takes it, without a password:
        /// postgres://phoenix@db.example:5432/phoenix.
        #[arg(long)]
        to: String,
        /// A file holding the target role's password.
        #[arg(long)]
        password_file: PathBuf,
        /// The CA bundle (PEM) the target's certificate must chain to.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Only check the target and say what would move.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    #[command(flatten)]
    Docs(Docs),
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Take a backup now and wait until it (and, for a full, its test restore) ends.
    Now {
        /// full, diff or incr.
        #[arg(long = "type", default_value = "full", value_parser = ["full", "diff", "incr"])]
        kind: String,
    },
    /// The backups in each repository, oldest first, with sizes and verification.
    List,
    /// Verify a backup again (`pgbackrest verify` and a test restore); the
    /// newest full when none is named. Exit 1 when it fails.
    Verify {
        /// A label from `phoenixctl backup list`.
        label: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Order a new certificate over ACME now (mode = "acme").
    Renew,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Docs(docs) = &cli.command {
        return docs.run(Cli::command(), &EXIT_CODES);
    }
    if let Cmd::Restore {
        to,
        backup,
        latest,
        from,
        yes,
    } = &cli.command
    {
        return restore::run(&cli.socket, to, backup, *latest, from, *yes);
    }
    if let Cmd::MigrateDatabase {
        to,
        password_file,
        ca_file,
        dry_run,
        yes,
    } = &cli.command
    {
        return migrate::run(&cli.socket, to, password_file, ca_file, *dry_run, *yes);
    }
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
        Cmd::Certs { action: None } | Cmd::Scaling => Request::Status,
        Cmd::Certs {
            action: Some(CertsCmd::Renew),
        } => Request::RenewCertificate,
        Cmd::Backup {
            action: BackupCmd::Now { kind },
        } => Request::BackupNow { kind: kind.clone() },
        Cmd::Backup {
            action: BackupCmd::List,
        } => Request::BackupList,
        Cmd::Backup {
            action: BackupCmd::Verify { label },
        } => Request::BackupVerify {
            label: label.clone(),
        },
        Cmd::Restore { .. } | Cmd::MigrateDatabase { .. } | Cmd::Docs(_) => {
            unreachable!("handled above")
        }
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
        (Response::Progress(step), _) => {
            // Only a reply comes here; progress lines are read before it.
            println!("{step}");
            ExitCode::from(1)
        }
        (Response::Backups(inventory), _) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&inventory).expect("json")
                );
            } else {
                print_backups(&inventory);
            }
            ExitCode::SUCCESS
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
        (Response::Snapshot(s), Cmd::Certs { .. }) => {
            let Some(cert) = &s.certificate else {
                eprintln!("error: the supervisor has not looked at the certificate yet");
                return ExitCode::from(1);
            };
            let (status, check) = certificate_check(cert, now_ms());
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&check).expect("json"));
            } else {
                print_certificate(cert, status);
            }
            ExitCode::from(status.exit_code())
        }
        (Response::Snapshot(s), Cmd::Scaling) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s.scaling).expect("json")
                );
            } else {
                print_scaling(&s.scaling);
            }
            let raised = s.scaling.iter().any(|t| t.level != Level::Ok);
            ExitCode::from(u8::from(raised))
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

fn print_certificate(c: &CertificateStatus, status: Status) {
    let when = |ms: Option<u64>| {
        ms.map_or("-".to_string(), |ms| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            let left = ms.saturating_sub(now_ms()) / 1000;
            let rel = if ms > now_ms() {
                format!(
                    " (in {})",
                    humantime::format_duration(std::time::Duration::from_secs(left / 3600 * 3600))
                )
            } else {
                String::new()
            };
            format!("{}{rel}", humantime::format_rfc3339_seconds(t))
        })
    };
    println!("status      {}", status.as_str());
    println!("mode        {}", c.mode);
    println!("file        {}", c.path);
    println!("names       {}", c.names.join(", "));
    println!("issuer      {}", c.issuer.as_deref().unwrap_or("-"));
    println!("expires     {}", when(c.not_after_ms));
    if c.mode == "acme" {
        println!("renews      {}", when(c.renew_at_ms));
        println!("last renew  {}", when(c.renewed_at_ms));
        println!("failures    {}", c.failures);
    }
    if let Some(addr) = &c.http_listen {
        println!("http        {addr}");
    }
    for e in [&c.error, &c.http_error].into_iter().flatten() {
        println!("error       {e}");
    }
}

fn print_scaling(triggers: &[ScalingStatus]) {
    if triggers.is_empty() {
        println!(
            "no capacity checks yet ([scaling] enable = false, or the first interval has not passed)"
        );
        return;
    }
    println!(
        "{:<12} {:<9} {:>14} {:>12} {:>12}  NOTE",
        "TRIGGER", "LEVEL", "VALUE", "WARNING", "CRITICAL"
    );
    for t in triggers {
        let value = t
            .value
            .map_or("-".to_string(), |v| format!("{v:.1} {}", t.unit));
        let note = t
            .recommendation
            .as_deref()
            .or(t.error.as_deref())
            .unwrap_or("");
        println!(
            "{:<12} {:<9} {:>14} {:>12} {:>12}  {note}",
            t.trigger,
            t.level.as_str(),
            value,
            t.warning,
            t.critical
        );
    }
}

pub(crate) fn print_backups(inv: &phoenix_supervisor::backup::info::Inventory) {
    for why in &inv.unreachable {
        println!("not listed, unreachable: {why}");
    }
    if inv.backups.is_empty() {
        println!("no backups yet ({})", inv.status);
        return;
    }
    println!(
        "{:<36} {:<5} {:<5} {:<20} {:>8} {:>10} {:>10}  VERIFIED",
        "LABEL", "TYPE", "REPO", "FINISHED (UTC)", "TOOK", "SIZE", "STORED"
    );
    for b in &inv.backups {
        let finished = chrono::DateTime::<chrono::Utc>::from_timestamp(b.stopped_at, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let repo = if b.repo == 1 { "local" } else { "s3" };
        println!(
            "{:<36} {:<5} {:<5} {:<20} {:>7}s {:>10} {:>10}  {}",
            b.label,
            b.kind,
            repo,
            finished,
            b.stopped_at - b.started_at,
            bytesize::ByteSize(b.size_bytes).to_string(),
            bytesize::ByteSize(b.repo_size_bytes).to_string(),
            b.verified.as_deref().unwrap_or("-")
        );
    }
    for w in &inv.wal {
        println!(
            "WAL in {}: {} to {}",
            if w.repo == 1 { "local" } else { "s3" },
            w.min,
            w.max
        );
    }
}
