//! The measurements, each applied the same way to either supervisor: it is
//! told only pids, ports and command lines, never which supervisor it is.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{interrupt, procs};

/// Readiness as seen from outside, identical for both supervisors: the
/// program's port accepts a TCP connection.
pub fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

pub fn wait_ports(ports: &[u16], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for &port in ports {
        while !accepts(port) {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!("port {port} did not accept connections within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// How long a child runs before each kill. runsv restarts a service at once
/// unless it ran for less than a second, in which case it sleeps 1 s first
/// (runsv.c); spacing kills further apart measures its immediate path, and
/// crashes in production are rarely less than a second apart.
pub const KILL_SPACING: Duration = Duration::from_millis(1200);

/// Readiness is polled this often after the kill.
pub const POLL: Duration = Duration::from_millis(1);

/// `iterations` times: SIGKILL the process running `argv`, then time until
/// `port` accepts again. The clock starts just before kill(2). The old
/// process is first seen dead (its listening socket is closed by then), so a
/// connection accepted afterwards is the new process's.
pub fn restart_latency(argv: &[String], port: u16, iterations: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        interrupt::check()?;
        std::thread::sleep(KILL_SPACING);
        let pid = match procs::find_by_argv(argv).as_slice() {
            [pid] => *pid,
            [] => bail!("no process runs `{}` (iteration {i})", argv.join(" ")),
            many => bail!("several processes run `{}`: {many:?}", argv.join(" ")),
        };
        let start = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("kill -9 {pid}"))?;
        procs::wait_dead(pid, Duration::from_secs(5))?;
        while !accepts(port) {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "`{}` did not accept connections on port {port} within 10 s after kill -9 \
                     (iteration {i})",
                    argv.join(" ")
                );
            }
            std::thread::sleep(POLL);
        }
        samples.push(start.elapsed());
    }
    Ok(samples)
}

#[derive(Debug, Clone, Copy)]
pub struct IdleUsage {
    /// Largest sum of VmRSS over the processes, sampled once a second.
    pub rss_kib: u64,
    /// Sum of Pss at the end of the window.
    pub pss_kib: u64,
    pub cpu_ticks: u64,
    pub ticks_per_second: u64,
    pub window: Duration,
}

impl IdleUsage {
    /// CPU time over wall time, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu_ticks as f64 / self.ticks_per_second as f64 / self.window.as_secs_f64() * 100.0
    }

    /// The resolution of `cpu_percent`: one clock tick over the window.
    pub fn one_tick_percent(&self) -> f64 {
        100.0 / self.ticks_per_second as f64 / self.window.as_secs_f64()
    }
}

/// Memory and CPU time of `pids` (summed) over an idle window.
pub fn idle_usage(pids: &[i32], window: Duration) -> Result<IdleUsage> {
    let ticks = || -> Result<u64> { pids.iter().map(|&p| procs::cpu_ticks(p)).sum() };
    let rss = || -> Result<u64> { pids.iter().map(|&p| procs::rss_kib(p)).sum() };
    let start = Instant::now();
    let ticks_before = ticks()?;
    let mut rss_kib = rss()?;
    while start.elapsed() < window {
        interrupt::check()?;
        std::thread::sleep(Duration::from_secs(1).min(window.saturating_sub(start.elapsed())));
        rss_kib = rss_kib.max(rss()?);
    }
    let cpu_ticks = ticks()? - ticks_before;
    let window = start.elapsed();
    let pss_kib = pids
        .iter()
        .map(|&p| procs::pss_kib(p))
        .sum::<Result<u64>>()?;
    Ok(IdleUsage {
        rss_kib,
        pss_kib,
        cpu_ticks,
        ticks_per_second: procs::ticks_per_second()?,
        window,
    })
}

/// Wall time of `n` sequential runs of a status command.
pub fn command_latency(n: usize, mut run: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        interrupt::check()?;
        let start = Instant::now();
        run()?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}
