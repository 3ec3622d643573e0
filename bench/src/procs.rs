//! What the benchmark reads from /proc — memory and CPU time of a process,
//! processes found by their exact command line — and the last-resort guard
//! that kills child programs a supervisor left behind.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A `VmRSS:`-style line of /proc/PID/status or smaps_rollup, in KiB.
fn kib_field(path: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// Resident set size: every page mapped, shared libraries counted in full.
pub fn rss_kib(pid: i32) -> Result<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size: shared pages divided among the processes sharing
/// them, so a sum over several processes does not count libc twice.
pub fn pss_kib(pid: i32) -> Result<u64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// User plus system CPU time in clock ticks, threads (also exited ones) included.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // "pid (comm) state ppid ..." — comm may contain spaces, so split after ") ".
    // Counted from state (field 3), utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    Ok(tick(11)? + tick(12)?)
}

pub fn ticks_per_second() -> Result<u64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .context("CLK_TCK is not defined")?;
    Ok(u64::try_from(hz).unwrap_or(100))
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Live processes whose command line is exactly `argv`.
pub fn find_by_argv(argv: &[String]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let args: Vec<&[u8]> = raw
                    .strip_suffix(b"\0")
                    .unwrap_or(&raw)
                    .split(|&b| b == 0)
                    .collect();
                args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes())
            })
        })
        .filter(|&pid| phoenix_tests::process_alive(pid))
        .collect()
}

/// Kills, when dropped, every process still running one of these command
/// lines: the child programs of a benchmark run must not outlive it, even
/// when a supervisor under test failed to stop them.
pub struct Strays {
    argvs: Vec<Vec<String>>,
}

impl Strays {
    pub fn new(argvs: Vec<Vec<String>>) -> Strays {
        Strays { argvs }
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for argv in &self.argvs {
            for pid in find_by_argv(argv) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Wait until `pid` has exited (zombie or gone).
pub fn wait_dead(pid: i32, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while phoenix_tests::process_alive(pid) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "process {pid} still alive {timeout:?} after SIGKILL"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}
