//! The recovery point under a steady write load: one INSERT of the clock
//! every 1/rate s over one psql connection; the machine dies (every
//! process SIGKILLed) just before PostgreSQL's next `archive_timeout`
//! switch, which is the worst moment for the archive; the data directory
//! is lost; the supervisor starts again and the operator restores the
//! latest state. The RPO is the last acknowledged commit minus the newest
//! row that came back.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::pg::{Pg, pg_bin, timed};
use crate::interrupt;
use crate::phoenix::Phoenix;
use crate::scenarios::progress;

/// The kill comes this long before the next switch is due.
pub const KILL_BEFORE_SWITCH: Duration = Duration::from_secs(3);

/// What the writer had acknowledged: rows, and the newest commit's time
/// (Unix seconds, the server's clock).
#[derive(Debug, Default, Clone, Copy)]
pub struct Acked {
    pub rows: u64,
    pub last_at: f64,
}

/// INSERTs at a fixed rate over one `psql` connection; each row's
/// `clock_timestamp()` comes back once committed.
pub struct Writer {
    child: std::process::Child,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(pg: &Pg, database: &str, rate: u32) -> Result<Writer> {
        let mut cmd: Command = pg.command(pg_bin("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("start the writer's psql")?;
        let mut stdin = child.stdin.take().context("psql stdin")?;
        let stdout = child.stdout.take().context("psql stdout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(at) = line.trim().parse::<f64>() {
                        let mut a = acked.lock().expect("acked");
                        a.rows += 1;
                        a.last_at = a.last_at.max(at);
                    }
                }
            })
        };
        let writer = {
            let stop = stop.clone();
            let interval = Duration::from_secs(1) / rate.max(1);
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let line = "INSERT INTO rpo_probe DEFAULT VALUES \
                                RETURNING extract(epoch FROM at);\n";
                    if stdin
                        .write_all(line.as_bytes())
                        .and_then(|()| stdin.flush())
                        .is_err()
                    {
                        break;
                    }
                    i += 1;
                    if let Some(wait) =
                        (start + interval * i).checked_duration_since(Instant::now())
                    {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Ok(Writer {
            child,
            stop,
            acked,
            threads: vec![reader, writer],
        })
    }

    pub fn acked(&self) -> Acked {
        *self.acked.lock().expect("acked")
    }

    /// Stops writing and ends psql; what was acknowledged.
    pub fn stop(mut self) -> Acked {
        self.end();
        self.acked()
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.end();
    }
}

/// How a restore after the loss went.
pub struct Attempt {
    pub what: String,
    pub took: Duration,
    pub outcome: Result<String, String>,
}

pub struct Rpo {
    pub rate: u32,
    pub archive_timeout: Duration,
    /// Switch-to-archived latency of forced WAL switches before the load.
    pub archive_latency: Vec<Duration>,
    /// From the archive seen during the load to the kill.
    pub killed_after_archive: Duration,
    pub acked: Acked,
    /// `backup-stanza` after the start on an empty data directory.
    pub stanza_after_loss: String,
    pub attempts: Vec<Attempt>,
    /// Rows and newest row back after the restore that worked, if one did.
    pub restored: Option<(u64, f64)>,
    /// Which restore the figure comes from.
    pub restored_by: String,
}

impl Rpo {
    pub fn seconds(&self) -> Option<f64> {
        self.restored.map(|(_, newest)| self.acked.last_at - newest)
    }
}

fn archived(pg: &Pg) -> Result<String> {
    pg.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    )
}

/// Rows and the newest row's time in `rpo_probe` on the server at
/// `socket_dir`.
fn probe(pg: &Pg, socket_dir: &std::path::Path) -> Result<(u64, f64)> {
    let row = pg.psql_at(
        socket_dir,
        "bench",
        "SELECT count(*) || '|' || coalesce(extract(epoch FROM max(at))::text, '0') FROM rpo_probe",
    )?;
    let (n, at) = row
        .split_once('|')
        .with_context(|| format!("unexpected row `{row}`"))?;
    Ok((n.parse()?, at.parse()?))
}

pub fn measure(sup: &mut Phoenix, pg: &Pg, rate: u32, work: &std::path::Path) -> Result<Rpo> {
    pg.psql(
        "bench",
        "CREATE TABLE rpo_probe (id bigserial PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )?;
    let timeout_s: u64 = pg
        .psql(
            "postgres",
            "SELECT setting FROM pg_settings WHERE name = 'archive_timeout'",
        )?
        .parse()
        .context("archive_timeout")?;
    let archive_timeout = Duration::from_secs(timeout_s);
    let mut archive_latency = Vec::new();
    for _ in 0..3 {
        pg.psql("bench", "INSERT INTO rpo_probe DEFAULT VALUES")?;
        archive_latency.push(pg.wait_archived(Duration::from_secs(120))?);
    }
    pg.psql("bench", "TRUNCATE rpo_probe")?;

    progress(&format!(
        "RPO: {rate} INSERTs/s; waiting for the next WAL segment archived by archive_timeout ({timeout_s} s)"
    ));
    let writer = Writer::start(pg, "bench", rate)?;
    let before = archived(pg)?;
    let deadline = Instant::now() + archive_timeout + Duration::from_secs(60);
    let seen = loop {
        interrupt::check()?;
        if archived(pg)? != before {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "no WAL segment was archived within {archive_timeout:?} + 60 s under the write load"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let kill_at = seen + archive_timeout - KILL_BEFORE_SWITCH;
    progress(&format!(
        "RPO: segment archived; the machine dies in {:.0} s",
        (kill_at - Instant::now()).as_secs_f64()
    ));
    while Instant::now() < kill_at {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(20).min(kill_at - Instant::now()));
    }
    let killed_after_archive = seen.elapsed();
    sup.crash()?;
    let acked = writer.stop();
    progress(&format!(
        "RPO: killed every process after {} acknowledged INSERTs; removing the data directory",
        acked.rows
    ));
    let data = sup.path("state/postgres/data");
    std::fs::remove_dir_all(&data).with_context(|| format!("remove {}", data.display()))?;

    sup.start_again();
    sup.wait_state("postgres", "ready", Duration::from_secs(300))?;
    // backup-stanza meets a repository of another cluster now.
    let settle = Instant::now() + Duration::from_secs(60);
    let stanza_after_loss = loop {
        let s = sup.state_of("backup-stanza");
        if matches!(s.as_str(), "exited" | "failed") || Instant::now() > settle {
            break s;
        }
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    };

    let mut attempts = Vec::new();
    let restore = |sup: &Phoenix, what: &str| -> Attempt {
        progress(&format!("RPO: {what}"));
        let mut cmd = sup.ctl_command(&["restore", "--latest", "--yes"]);
        let start = Instant::now();
        let outcome = timed(&mut cmd, "phoenixctl restore --latest --yes")
            .map(|(_, out)| out.lines().last().unwrap_or_default().to_string())
            .map_err(|e| format!("{e:#}"));
        Attempt {
            what: what.to_string(),
            took: start.elapsed(),
            outcome,
        }
    };
    attempts.push(restore(sup, "phoenixctl restore --latest --yes"));
    if attempts[0].outcome.is_err() {
        interrupt::check()?;
        // What an operator tries next: no fresh cluster to save WAL from.
        let stop = sup.ctl(&["stop", "postgres"]);
        let said = String::from_utf8_lossy(&stop.stderr).trim().to_string();
        let mut second = restore(
            sup,
            "phoenixctl stop postgres; phoenixctl restore --latest --yes",
        );
        if !stop.status.success() {
            second.outcome = Err(format!("phoenixctl stop postgres failed: {said}"));
        }
        attempts.push(second);
    }
    let (restored, restored_by) = if let Some(ok) = attempts.iter().find(|a| a.outcome.is_ok()) {
        sup.wait_state("postgres", "ready", Duration::from_secs(300))?;
        (Some(probe(pg, &pg.socket_dir)?), ok.what.clone())
    } else {
        progress("RPO: Phoenix could not restore; restoring by hand into a scratch directory");
        let scratch = work.join("rpo-restore");
        let hand = super::hand_restore(pg, &scratch, None, |socket| probe(pg, socket))?;
        (Some(hand.1), "pgbackrest restore by hand".to_string())
    };
    Ok(Rpo {
        rate,
        archive_timeout,
        archive_latency,
        killed_after_archive,
        acked,
        stanza_after_loss,
        attempts,
        restored,
        restored_by,
    })
}
