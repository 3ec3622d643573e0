//! What the supervisor started, kept on disk, so that the next supervisor
//! can stop what a killed one left running.
//!
//! A supervisor killed with SIGKILL (not PID 1, not under systemd, whose
//! `KillMode=mixed` would end the whole cgroup) leaves its services running:
//! they hold their ports and data directories, and a new supervisor could
//! only fail to start them again. So the loop records every running service
//! process in `<run_dir>/services.json` (written atomically, mode 0600, in a
//! directory that only root writes), and [`stop_leftovers`] reads it at the
//! next start, before anything is checked or started: each recorded process
//! that still runs, the same process by its start time (a pid can be reused),
//! is stopped in reverse dependency order with its stop signal and timeout,
//! then its process group is killed.
//!
//! `PR_SET_PDEATHSIG` is not used instead: it fires when the *thread* that
//! forked the child exits (a tokio worker, not the process), reaches only
//! the direct child (PostgreSQL's backends would stay and hold its shared
//! memory), is cleared when a service execs a set-user-ID program, and
//! would kill the services at once instead of stopping them in order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The record's file in the run directory.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("services.json")
}

/// Whether `/proc` shows this process's PID namespace. Under `unshare
/// --pid` without a new `/proc`, pids read there would be another
/// namespace's: then nothing is recorded or stopped.
pub fn proc_matches() -> bool {
    static MATCHES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MATCHES.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    })
}

/// A process as the kernel knows it: its pid and when it started (clock
/// ticks after boot, from `/proc/<pid>/stat`), which together name one
/// process even when the pid is reused later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

impl Proc {
    /// The running process `pid`, when there is one (zombies are not).
    pub fn of(pid: i32) -> Option<Proc> {
        let stat = Stat::read(pid)?;
        Some(Proc {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process still runs.
    fn alive(&self) -> bool {
        Stat::read(self.pid).is_some_and(|s| s.start_time == self.start_time)
    }
}

/// One running service process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub service: String,
    pub process: Proc,
    /// Its process group (services start in their own: the pid).
    pub pgid: i32,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    /// Its place in the dependency order; stopped from the highest.
    pub order: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id`: a record from an earlier boot
    /// names no process of this one.
    pub boot_id: String,
    pub supervisor: Proc,
    pub services: Vec<Entry>,
}

impl Record {
    /// An empty record for this supervisor process.
    pub fn new() -> Record {
        let pid = std::process::id() as i32;
        Record {
            boot_id: boot_id(),
            supervisor: Proc::of(pid).unwrap_or(Proc { pid, start_time: 0 }),
            services: Vec::new(),
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::new()
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The fields of `/proc/<pid>/stat` used here.
struct Stat {
    pgid: i32,
    start_time: u64,
}

impl Stat {
    /// None when there is no such process, or it is a zombie.
    fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and ')'.
        let rest = text.get(text.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
            return None;
        }
        Some(Stat {
            pgid: fields.get(2)?.parse().ok()?,
            // Field 22 of the line; 20th after `state`, which is field 3.
            start_time: fields.get(19)?.parse().ok()?,
        })
    }
}

/// Processes, zombies aside, whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| Stat::read(*pid).is_some_and(|s| s.pgid == pgid))
        .collect()
}

/// Writes `record` atomically with mode 0600.
pub fn write(path: &Path, record: &Record) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::fsafe::write_atomic(path, &json, 0o600, None)
}

/// Reads the record, trusting it only when this user owns it and nobody
/// else can write it or its directory: the supervisor signals the pids it
/// names.
fn read(path: &Path) -> anyhow::Result<Option<Record>> {
    use std::os::unix::fs::MetadataExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |p: &Path| -> anyhow::Result<()> {
        let m = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
        if m.file_type().is_symlink() || m.uid() != me || m.mode() & 0o022 != 0 {
            bail!(
                "{} is a symlink, or not owned by uid {me}, or writable by others: not trusted",
                p.display()
            );
        }
        Ok(())
    };
    if !path.exists() {
        return Ok(None);
    }
    trusted(path.parent().unwrap_or(Path::new("/")))?;
    trusted(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_slice(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable record of an earlier supervisor's services; ignored");
            Ok(None)
        }
    }
}

/// Before anything starts: stop what a killed supervisor on this run
/// directory left running, in reverse dependency order. Refuses when that
/// supervisor still runs.
pub async fn stop_leftovers(run_dir: &Path) -> anyhow::Result<()> {
    let path = path(run_dir);
    let record = match read(&path) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the record of an earlier supervisor's services is ignored"
            );
            return Ok(());
        }
    };
    if record.boot_id != boot_id() || !proc_matches() {
        return Ok(());
    }
    let me = std::process::id() as i32;
    if record.supervisor.pid != me && record.supervisor.alive() {
        bail!(
            "another phoenix-supervisor (pid {}) runs on {}: stop it first (its services are its own)",
            record.supervisor.pid,
            run_dir.display()
        );
    }
    let mut entries = record.services;
    entries.sort_by_key(|e| std::cmp::Reverse(e.order));
    for entry in &entries {
        stop(entry).await;
    }
    Ok(())
}

/// Stops one recorded service process, if it is still the same process,
/// and kills what is left of its process group.
async fn stop(entry: &Entry) {
    let (service, pid) = (&entry.service, entry.process.pid);
    let main_alive = entry.process.alive();
    // The group is the service's while its leader lives, and after that as
    // long as any member does (Linux does not reuse a pid that is still a
    // group's id); a leader that is another process means it was reused.
    let group_ours = match Stat::read(entry.pgid) {
        Some(leader) => entry.pgid != pid || leader.start_time == entry.process.start_time,
        None => true,
    };
    let members = if group_ours {
        group_members(entry.pgid)
    } else {
        Vec::new()
    };
    if !main_alive && members.is_empty() {
        return;
    }
    let signal = Signal::try_from(entry.stop_signal).unwrap_or(Signal::SIGTERM);
    let timeout = Duration::from_millis(entry.stop_timeout_ms);
    tracing::warn!(
        service = %service,
        pid,
        signal = signal.as_str(),
        timeout = ?timeout,
        "a process left running by an earlier supervisor: stopping it before starting"
    );
    if main_alive {
        let _ = kill(Pid::from_raw(pid), signal);
        let stopped = wait_until(timeout, || !entry.process.alive()).await;
        if !stopped {
            tracing::warn!(service = %service, pid, "did not stop in time; sending SIGKILL");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if group_ours {
        let _ = killpg(Pid::from_raw(entry.pgid), Signal::SIGKILL);
    }
    let gone = wait_until(Duration::from_secs(5), || {
        !entry.process.alive() && (!group_ours || group_members(entry.pgid).is_empty())
    })
    .await;
    if gone {
        tracing::info!(service = %service, pid, "stopped what the earlier supervisor left");
    } else {
        tracing::error!(service = %service, pid, "processes left by an earlier supervisor survive SIGKILL");
    }
}

/// Polls `done` every 20 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_its_pid_and_start_time() {
        assert!(proc_matches());
        let me = Proc::of(std::process::id() as i32).unwrap();
        assert!(me.start_time > 0);
        assert!(me.alive());
        let reused = Proc {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.alive(), "same pid, another start: another process");
        let stat = Stat::read(me.pid).unwrap();
        assert_eq!(stat.pgid, nix::unistd::getpgrp().as_raw());
    }

    #[test]
    fn a_record_writable_by_others_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = path(dir.path());
        write(&file, &Record::new()).unwrap();
        assert_eq!(read(&file).unwrap(), Some(Record::new()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read(&file).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read(&file).is_err());
    }
}
