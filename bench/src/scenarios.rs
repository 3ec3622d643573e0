//! The three setups, run one after the other: each starts a supervisor on
//! fresh ports in a temp dir, takes its measurements and stops it (drop
//! guards), so no setup disturbs the next.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use phoenix_tests::free_port;

use crate::measure::{self, IdleUsage};
use crate::phoenix::{self, Phoenix};
use crate::runit::{Runit, RunitBins};
use crate::{Config, interrupt, load, procs};

/// Test programs per supervisor in the like-for-like setup.
pub const SERVICES: usize = 6;
/// Pause between "ready" and the idle window, for start-up work to finish.
const SETTLE: Duration = Duration::from_secs(3);
const FULL_STACK_READY_TIMEOUT: Duration = Duration::from_secs(180);
const TEST_PROGRAMS_READY_TIMEOUT: Duration = Duration::from_secs(30);

const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

/// The workspace's release binaries, next to this executable.
pub struct Binaries {
    pub testprog: PathBuf,
    pub api: PathBuf,
}

impl Binaries {
    pub fn locate() -> Result<Binaries> {
        let exe = std::env::current_exe().context("locate this executable")?;
        let dir = exe.parent().context("executable without a directory")?;
        for name in ["phoenix-supervisor", "phoenixctl", "phoenix-testprog"] {
            let path = dir.join(name);
            ensure!(
                path.is_file(),
                "{} is missing: build the workspace first with `cargo build --release --workspace`",
                path.display()
            );
        }
        Ok(Binaries {
            testprog: dir.join("phoenix-testprog"),
            api: dir.join("phoenix-api"),
        })
    }

    /// `phoenix-testprog serve PORT` per port: the child program of both supervisors.
    pub fn serve_argvs(&self, ports: &[u16]) -> Vec<Vec<String>> {
        ports
            .iter()
            .map(|p| {
                vec![
                    self.testprog.display().to_string(),
                    "serve".into(),
                    p.to_string(),
                ]
            })
            .collect()
    }
}

pub fn progress(what: &str) {
    eprintln!("phoenix-bench: {what}");
}

/// Sleep, but stop early when interrupted.
fn pause(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100).min(end - std::time::Instant::now()));
    }
    Ok(())
}

/// Why the full stack cannot run here, if it cannot.
pub fn full_stack_missing(bins: &Binaries) -> Option<String> {
    [POSTGRES, PROMETHEUS, PUSHGATEWAY]
        .into_iter()
        .map(PathBuf::from)
        .chain([bins.api.clone()])
        .find(|p| !p.is_file())
        .map(|p| format!("{} is not installed", p.display()))
}

/// As root the API runs as user `phoenix`, which must exist.
pub fn ensure_phoenix_user() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root()
        || nix::unistd::User::from_name("phoenix")
            .context("look up user phoenix")?
            .is_some()
    {
        return Ok(());
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "phoenix",
        ])
        .status()
        .context("run useradd")?;
    ensure!(
        status.success(),
        "useradd --system phoenix failed: {status}"
    );
    progress("created the system user `phoenix` (the API runs as it under a root supervisor)");
    Ok(())
}

pub struct PhoenixTestPrograms {
    pub version: Option<String>,
    pub limits_unavailable: Option<String>,
    pub idle: IdleUsage,
    pub status_cli: Vec<Duration>,
    pub restart: Vec<Duration>,
    pub health: load::LoadResult,
}

pub fn bench_phoenix_test_programs(
    config: &Config,
    bins: &Binaries,
) -> Result<PhoenixTestPrograms> {
    let ports: Vec<u16> = (0..SERVICES).map(|_| free_port()).collect();
    let argvs = bins.serve_argvs(&ports);
    let _strays = procs::Strays::new(argvs.clone());
    progress(&format!("phoenix: starting {SERVICES} test programs"));
    let sup = Phoenix::start(&phoenix::test_programs_config(&bins.testprog, &ports));
    sup.wait_ready(TEST_PROGRAMS_READY_TIMEOUT)?;
    measure::wait_ports(&ports, TEST_PROGRAMS_READY_TIMEOUT)?;
    let comm = procs::comm(sup.pid());
    ensure!(
        comm.starts_with("phoenix-super"),
        "pid {} is `{comm}`, not the supervisor",
        sup.pid()
    );
    pause(SETTLE)?;
    progress(&format!("phoenix: idle window of {:?}", config.idle));
    let idle = measure::idle_usage(&[sup.pid()], config.idle)?;
    progress("phoenix: phoenixctl status calls");
    let status_cli = measure::command_latency(config.iterations, || sup.ctl_status())?;
    progress(&format!(
        "phoenix: {} kill -9 / restart cycles",
        config.iterations
    ));
    let restart = measure::restart_latency(&argvs[0], ports[0], config.iterations)?;
    progress(&format!(
        "phoenix: GET /health at {} req/s for {:?}",
        config.rate, config.health
    ));
    let health = load::run(&sup.health_url(), config.rate, config.health)?;
    Ok(PhoenixTestPrograms {
        version: sup.version(),
        limits_unavailable: sup.limits_unavailable(),
        idle,
        status_cli,
        restart,
        health,
    })
}

pub struct RunitTestPrograms {
    pub processes: usize,
    pub idle: IdleUsage,
    pub status_cli: Vec<Duration>,
    pub restart: Vec<Duration>,
}

pub fn bench_runit(
    config: &Config,
    bins: &Binaries,
    runit_bins: &RunitBins,
) -> Result<RunitTestPrograms> {
    let ports: Vec<u16> = (0..SERVICES).map(|_| free_port()).collect();
    let argvs = bins.serve_argvs(&ports);
    let _strays = procs::Strays::new(argvs.clone());
    progress(&format!("runit: starting {SERVICES} test programs"));
    let runit = Runit::start(runit_bins, &argvs)?;
    runit.wait_supervisors(TEST_PROGRAMS_READY_TIMEOUT)?;
    measure::wait_ports(&ports, TEST_PROGRAMS_READY_TIMEOUT)?;
    pause(SETTLE)?;
    progress(&format!("runit: idle window of {:?}", config.idle));
    let pids = runit.supervisor_pids();
    let idle = measure::idle_usage(&pids, config.idle)?;
    progress("runit: sv status calls");
    let status_cli = measure::command_latency(config.iterations, || runit.sv_status())?;
    progress(&format!(
        "runit: {} kill -9 / restart cycles",
        config.iterations
    ));
    let restart = measure::restart_latency(&argvs[0], ports[0], config.iterations)?;
    Ok(RunitTestPrograms {
        processes: pids.len(),
        idle,
        status_cli,
        restart,
    })
}

pub struct FullStack {
    pub idle: IdleUsage,
    pub health: load::LoadResult,
}

pub fn bench_full_stack(config: &Config) -> Result<FullStack> {
    progress("phoenix: starting the full stack (PostgreSQL 15, Prometheus, Pushgateway, API)");
    let sup = Phoenix::start(&phoenix::full_stack_config());
    sup.wait_ready(FULL_STACK_READY_TIMEOUT)?;
    pause(SETTLE)?;
    progress(&format!(
        "phoenix full stack: idle window of {:?}",
        config.idle
    ));
    let idle = measure::idle_usage(&[sup.pid()], config.idle)?;
    progress(&format!(
        "phoenix full stack: GET /health at {} req/s for {:?}",
        config.rate, config.health
    ));
    let health = load::run(&sup.health_url(), config.rate, config.health)?;
    Ok(FullStack { idle, health })
}
