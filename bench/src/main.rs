//! phoenix-bench: the Phoenix supervisor measured beside runit on the same
//! child programs, in one invocation:
//!
//! (a) restart latency from `kill -9` of a child to its port accepting again;
//! (b) supervisor RSS and idle CPU, with six test programs and with the full stack;
//! (c) `GET /health` latency under a fixed, open-loop request rate.
//!
//! `phoenix-bench backup` is another mode: backups and restores of the
//! appliance's PostgreSQL beside pgBackRest by hand and pg_dump, the RPO,
//! and API latency during a backup (`backup/`).
//!
//! It runs the release binaries next to its own executable; build them with
//! `cargo build --release --workspace`. The figures go to stdout as tables,
//! progress to stderr; nothing is written outside temp dirs.
//!
//! Exit codes: 0 every target met; 1 the benchmark could not run (missing
//! binaries or runit, a supervisor that did not come up, interrupted);
//! 2 bad command line; 3 it ran and at least one target was missed.

#![forbid(unsafe_code)]

mod backup;
mod figures;
mod interrupt;
mod load;
mod measure;
mod phoenix;
mod procs;
mod report;
mod runit;
mod scenarios;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use clap::{Parser, Subcommand};

use figures::HEALTH_TARGET_RATE;
use runit::RunitBins;
use scenarios::{Binaries, progress};

#[derive(Parser)]
#[command(
    name = "phoenix-bench",
    about = "Benchmark the Phoenix supervisor beside runit: restart latency, memory, idle CPU, /health latency",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// kill -9 / restart cycles per supervisor (also the number of status CLI calls)
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Length of the idle window for RSS and CPU, in seconds
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Length of the /health load, in seconds
    #[arg(long, default_value_t = 10)]
    health_secs: u64,
    /// /health requests per second
    #[arg(long, default_value_t = HEALTH_TARGET_RATE)]
    rate: u32,
    /// Skip the full-stack rows even when PostgreSQL 15, Prometheus and the Pushgateway are installed
    #[arg(long)]
    no_full_stack: bool,
    /// Also print the tables as Markdown (for docs/benchmarks.md)
    #[arg(long)]
    markdown: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Backups on a pgbench database: Phoenix beside pgBackRest by hand and pg_dump, restores, RPO, API latency during a backup
    Backup(backup::Args),
}

struct Config {
    iterations: usize,
    idle: Duration,
    health: Duration,
    rate: u32,
    full_stack: bool,
    markdown: bool,
}

impl Config {
    fn from_args(a: Args) -> Result<Config> {
        ensure!(a.iterations >= 1, "--iterations must be at least 1");
        ensure!(a.idle_secs >= 1, "--idle-secs must be at least 1");
        ensure!(a.health_secs >= 1, "--health-secs must be at least 1");
        ensure!(
            (1..=100_000).contains(&a.rate),
            "--rate must be between 1 and 100000"
        );
        Ok(Config {
            iterations: a.iterations,
            idle: Duration::from_secs(a.idle_secs),
            health: Duration::from_secs(a.health_secs),
            rate: a.rate,
            full_stack: !a.no_full_stack,
            markdown: a.markdown,
        })
    }

    fn flags(&self) -> String {
        format!(
            "--iterations {} --idle-secs {} --health-secs {} --rate {}{}",
            self.iterations,
            self.idle.as_secs(),
            self.health.as_secs(),
            self.rate,
            if self.full_stack {
                ""
            } else {
                " --no-full-stack"
            }
        )
    }
}

struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |k| k.trim().to_string()),
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = Args::parse();
    if let Some(Mode::Backup(b)) = args.mode.take() {
        return backup::run(b);
    }
    let config = Config::from_args(args)?;
    let bins = Binaries::locate()?;
    let runit_bins = RunitBins::locate()?;
    interrupt::install()?;
    let full_stack = config.full_stack
        && match scenarios::full_stack_missing(&bins) {
            None => {
                scenarios::ensure_phoenix_user()?;
                true
            }
            Some(why) => {
                progress(&format!("full stack skipped: {why}"));
                false
            }
        };

    let phoenix = scenarios::bench_phoenix_test_programs(&config, &bins)?;
    let runit = scenarios::bench_runit(&config, &bins, &runit_bins)?;
    let stack = if full_stack {
        Some(scenarios::bench_full_stack(&config)?)
    } else {
        None
    };

    let machine = Machine::probe();
    let header = [
        format!(
            "date: {}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        ),
        format!(
            "machine: {} CPUs, {}, Linux {}",
            machine.cpus, machine.model, machine.kernel
        ),
        format!(
            "supervisors: phoenix-supervisor {}, runit {}",
            phoenix.version.as_deref().unwrap_or("?"),
            RunitBins::version().as_deref().unwrap_or("?")
        ),
        format!("flags: {}", config.flags()),
        format!(
            "cgroup limits: {}",
            phoenix
                .limits_unavailable
                .as_deref()
                .map_or("applied".into(), |why| format!("not applied ({why})"))
        ),
    ];
    let mut verdicts = Vec::new();
    let tables = [
        figures::restart_table(&phoenix, &runit, &mut verdicts)?,
        figures::memory_table(&phoenix, &runit, stack.as_ref(), &mut verdicts),
        figures::health_table(&config, &phoenix, stack.as_ref(), &mut verdicts),
        figures::status_cli_table(&phoenix, &runit)?,
    ];
    Ok(crate::report::print(
        "Phoenix supervisor benchmark",
        &header,
        &tables,
        &verdicts,
        config.markdown,
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phoenix-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_validated() {
        let parse = |args: &[&str]| {
            Config::from_args(Args::parse_from(
                std::iter::once("phoenix-bench").chain(args.iter().copied()),
            ))
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--iterations", "0"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(
            Args::try_parse_from(["phoenix-bench", "--iterations", "5", "backup"]).is_err(),
            "the backup mode takes its own flags"
        );
        match Args::parse_from(["phoenix-bench", "backup", "--scale", "5"]).mode {
            Some(Mode::Backup(b)) => assert_eq!(
                backup::Settings::from_args(b).unwrap().flags(),
                "backup --scale 5 --rounds 3 --api-rate 100 --write-rate 10"
            ),
            None => panic!("no backup mode"),
        }
        assert_eq!(
            parse(&["--iterations", "5", "--no-full-stack"])
                .unwrap()
                .flags(),
            "--iterations 5 --idle-secs 10 --health-secs 10 --rate 500 --no-full-stack"
        );
    }
}
