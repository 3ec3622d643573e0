//! The backup task: takes pgBackRest backups on the `[backup]` schedules
//! and when the operator asks (`phoenixctl backup now`), never two at once,
//! verifies every full by restoring it, and reports each outcome. pgBackRest
//! does the work (`job`); what it holds is read from `info` (`info`); when
//! the next backup is due is pure (`schedule`), and so is the status kept
//! here, which the event loop publishes. With `[backup.s3]`, each new
//! local full is then copied to S3 by the offsite task (`offsite`, with
//! the appliance's state through `appliance`).

pub mod appliance;
pub mod info;
pub mod job;
pub mod migrate;
pub mod offsite;
pub mod restore;
pub mod schedule;
pub mod sql;
pub mod verify;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::config::BackupKind;
pub use crate::status::{ArchiverStatus, BackupStatus, NewestFull, Next, Run, Running};
use info::Inventory;
use job::Runner;
use schedule::Timetable;
use verify::Verdict;

/// What the control socket asks of the task.
pub enum Request {
    /// Take a backup now; the reply comes when it (and its verification) ends.
    Now {
        kind: BackupKind,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// What the repositories hold.
    List {
        reply: oneshot::Sender<Result<Inventory, String>>,
    },
    /// Verify a backup again (the newest full when none is named).
    Verify {
        label: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Restore PostgreSQL; progress lines as it goes, the reply at the end.
    Restore {
        request: restore::RestoreRequest,
        progress: restore::Progress,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Move the built-in database onto an external PostgreSQL; progress
    /// lines as it goes, the reply at the end.
    Migrate {
        request: migrate::MigrateRequest,
        progress: restore::Progress,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The schedules changed (`phoenixctl reload`): what is due next is
    /// worked out again from now.
    Reschedule(Timetable),
}

/// Refuses `doing` while a backup, verification or restore runs: the
/// error says what runs and since when.
fn busy(status: &BackupStatus, doing: &str) -> Result<(), String> {
    let Some(running) = &status.running else {
        return Ok(());
    };
    let since = DateTime::<Utc>::from_timestamp_millis(running.started_ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    Err(format!(
        "a {} ({}) is running since {since}: not {doing} now; \
         `phoenixctl status` shows when it ends",
        running.what(),
        running.trigger,
    ))
}

fn ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

/// The time the task goes by: the wall clock, or in tests one that moves
/// with tokio's paused clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A backup's work: runs pgBackRest, and for a full the verification.
/// Returns the run's record.
pub trait Work: Clone + Send + Sync + 'static {
    fn backup(
        &self,
        kind: BackupKind,
        trigger: &'static str,
    ) -> impl std::future::Future<Output = Result<(String, Option<String>), String>> + Send;
    /// Every repository (S3 listed as unreachable when it does not answer).
    fn list(&self) -> impl std::future::Future<Output = Result<Inventory, String>> + Send;
    /// The local repository alone: what the task's status is made of.
    fn local(&self) -> impl std::future::Future<Output = Result<Inventory, String>> + Send {
        self.list()
    }
    /// pg_stat_archiver, when PostgreSQL answers.
    fn archiver(&self) -> impl std::future::Future<Output = Option<ArchiverStatus>> + Send;
    fn restore(
        &self,
        request: restore::RestoreRequest,
        progress: restore::Progress,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// Verifies a backup again; the annotation, or why it failed.
    fn verify(
        &self,
        label: Option<String>,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// `phoenixctl migrate-database`.
    fn migrate(
        &self,
        request: migrate::MigrateRequest,
        progress: restore::Progress,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
}

/// The schedule wakes at least this often to look at the clock again, so
/// that a clock set forward or back is followed.
const RECHECK: Duration = Duration::from_secs(60);

/// How often pg_stat_archiver is read; `PHOENIX_ARCHIVE_CHECK_INTERVAL`
/// (humantime) sets another, for tests.
pub const ARCHIVE_CHECK_INTERVAL: Duration = Duration::from_secs(60);

fn archive_check_interval() -> Duration {
    std::env::var("PHOENIX_ARCHIVE_CHECK_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(ARCHIVE_CHECK_INTERVAL)
}

/// Runs until the process ends. `report` gets the status after every change.
pub async fn run<W: Work, C: Clock>(
    work: W,
    mut timetable: Timetable,
    clock: C,
    requests: &mut mpsc::Receiver<Request>,
    report: impl Fn(&BackupStatus),
) {
    let mut status = BackupStatus {
        since_ms: ms(clock.now()),
        ..BackupStatus::default()
    };
    if let Ok(inventory) = work.local().await {
        status.newest_full = newest_full(&inventory);
    }
    let mut due = timetable.next_after(clock.now());
    let mut job: Option<tokio::task::JoinHandle<(BackupKind, Run)>> = None;
    let mut waiting: Vec<oneshot::Sender<Result<String, String>>> = Vec::new();
    let mut restoring: Option<tokio::task::JoinHandle<Result<String, String>>> = None;
    let mut archive_check = tokio::time::interval(archive_check_interval());
    archive_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut archiver: Option<tokio::task::JoinHandle<Option<ArchiverStatus>>> = None;
    let mut restore_reply: Option<oneshot::Sender<Result<String, String>>> = None;
    loop {
        status.next = due.map(|(at, kind)| Next {
            kind: kind.name().into(),
            at_ms: ms(at),
        });
        report(&status);
        let wait = due
            .map(|(at, _)| (at - clock.now()).to_std().unwrap_or_default())
            .unwrap_or(RECHECK)
            .min(RECHECK);
        tokio::select! {
            _ = archive_check.tick(), if archiver.is_none() => {
                let work = work.clone();
                archiver = Some(tokio::spawn(async move { work.archiver().await }));
                continue;
            }
            looked = async { archiver.as_mut().expect("polled only when asked").await }, if archiver.is_some() => {
                archiver = None;
                if let Ok(Some(mut seen)) = looked {
                    let before = status.archiver.as_ref().and_then(|a| a.failing_since_ms);
                    seen.failing_since_ms = match (seen.failing(), before) {
                        (false, _) => None,
                        (true, Some(since)) => Some(since),
                        (true, None) => {
                            tracing::warn!(
                                wal = seen.last_failed_wal.as_deref().unwrap_or_default(),
                                "PostgreSQL cannot archive WAL: see its log; WAL piles up in pg_wal until it can"
                            );
                            Some(seen.checked_ms)
                        }
                    };
                    status.archiver = Some(seen);
                }
            }
            () = tokio::time::sleep(wait) => {
                let Some((at, kind)) = due else { continue };
                let now = clock.now();
                if now < at {
                    continue;
                }
                due = timetable.next_after(now);
                if let Some(running) = &status.running {
                    status.skipped += 1;
                    tracing::warn!(
                        due = kind.name(),
                        running = running.kind,
                        "a scheduled backup is due while another is still running: not started twice"
                    );
                    continue;
                }
                job = Some(start(&work, &clock, kind, "schedule", &mut status));
            }
            Some(request) = requests.recv() => match request {
                Request::Now { kind, reply } => {
                    if let Err(e) = busy(&status, "starting a backup") {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    job = Some(start(&work, &clock, kind, "operator", &mut status));
                    waiting.push(reply);
                }
                Request::List { reply } => {
                    let work = work.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(work.list().await);
                    });
                }
                Request::Verify { label, reply } => {
                    if let Err(e) = busy(&status, "verifying") {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let work = work.clone();
                    restoring = Some(operate(&mut status, &clock, "verify", async move {
                        work.verify(label).await
                    }));
                    restore_reply = Some(reply);
                }
                Request::Restore { request, progress, reply } => {
                    if let Err(e) = busy(&status, "restoring") {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let work = work.clone();
                    restoring = Some(operate(&mut status, &clock, "restore", async move {
                        work.restore(request, progress).await
                    }));
                    restore_reply = Some(reply);
                }
                Request::Migrate { request, progress, reply } => {
                    if let Err(e) = busy(&status, "migrating the database") {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let work = work.clone();
                    restoring = Some(operate(&mut status, &clock, "migrate", async move {
                        work.migrate(request, progress).await
                    }));
                    restore_reply = Some(reply);
                }
                Request::Reschedule(new) => {
                    timetable = new;
                    due = timetable.next_after(clock.now());
                    tracing::info!(
                        next = ?due.map(|(at, kind)| format!("{} at {at}", kind.name())),
                        "backup schedules changed"
                    );
                }
            },
            done = async { restoring.as_mut().expect("polled only when restoring").await }, if restoring.is_some() => {
                restoring = None;
                status.running = None;
                let result = done.unwrap_or_else(|e| Err(format!("the job ended abnormally: {e}")));
                if let Ok(inventory) = work.local().await {
                    status.newest_full = newest_full(&inventory);
                }
                if let Some(reply) = restore_reply.take() {
                    let _ = reply.send(result);
                }
            }
            done = async { job.as_mut().expect("polled only when running").await }, if job.is_some() => {
                job = None;
                status.running = None;
                let (kind, record) = match done {
                    Ok(done) => done,
                    // The job panicked: nothing to record but the failure.
                    Err(e) => (BackupKind::Full, Run {
                        label: None,
                        trigger: "unknown".into(),
                        started_ms: ms(clock.now()),
                        duration_ms: 0,
                        error: Some(format!("the backup job ended abnormally: {e}")),
                        verified: None,
                    }),
                };
                let reply = match &record.error {
                    None => {
                        status.failures = 0;
                        status.last_success.insert(kind.name().into(), record.clone());
                        Ok(summary(kind, &record))
                    }
                    Some(e) => {
                        status.failures += 1;
                        Err(e.clone())
                    }
                };
                status.last.insert(kind.name().into(), record);
                if let Ok(inventory) = work.local().await {
                    status.newest_full = newest_full(&inventory);
                }
                for w in waiting.drain(..) {
                    let _ = w.send(reply.clone());
                }
            }
        }
    }
}

/// Marks an operator's verification or restore as running and starts it.
fn operate<C: Clock>(
    status: &mut BackupStatus,
    clock: &C,
    kind: &str,
    work: impl std::future::Future<Output = Result<String, String>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<String, String>> {
    status.running = Some(Running {
        kind: kind.into(),
        trigger: "operator".into(),
        started_ms: ms(clock.now()),
    });
    tokio::spawn(work)
}

/// A `psql -A -t` row of pg_stat_archiver: counts, times (ms) and the WAL
/// that last failed, `|`-separated.
fn parse_archiver(row: &str, checked_ms: u64) -> Option<ArchiverStatus> {
    let f: Vec<&str> = row.split('|').collect();
    if f.len() != 5 {
        return None;
    }
    let ms = |t: &str| t.parse::<u64>().ok();
    Some(ArchiverStatus {
        checked_ms,
        archived_count: f[0].parse().ok()?,
        failed_count: f[1].parse().ok()?,
        last_archived_ms: ms(f[2]),
        last_failed_ms: ms(f[3]),
        last_failed_wal: Some(f[4].to_string()).filter(|w| !w.is_empty()),
        failing_since_ms: None,
    })
}

/// Why retention must wait, if it must: pgBackRest's expiry keeps the
/// newest full, so it never removes the newest verified backup as long as
/// the newest full is verified (or verification is off). A newest full that
/// failed or skipped its verification holds expiry back until a verified
/// full follows it.
pub fn retention_hold(inventory: &Inventory, repo: u32, verify: bool) -> Option<String> {
    let newest = inventory
        .backups
        .iter()
        .filter(|b| b.kind == "full" && b.repo == repo)
        .max_by_key(|b| b.stopped_at)?;
    if !verify || repo != 1 || newest.verified_ok() {
        return None;
    }
    Some(format!(
        "the newest full backup, {}, is not verified ({})",
        newest.label,
        newest.verified.as_deref().unwrap_or("no verification yet")
    ))
}

/// The newest full of the local repository (repo1): the one verified.
fn newest_full(inventory: &Inventory) -> Option<NewestFull> {
    inventory
        .backups
        .iter()
        .filter(|b| b.kind == "full" && b.repo == 1)
        .max_by_key(|b| b.stopped_at)
        .map(|b| NewestFull {
            label: b.label.clone(),
            stopped_ms: (b.stopped_at.max(0) as u64) * 1000,
            verified: b.verified.clone(),
        })
}

fn summary(kind: BackupKind, run: &Run) -> String {
    let mut text = format!(
        "{} backup {} taken in {:.1} s",
        kind.name(),
        run.label.as_deref().unwrap_or("?"),
        run.duration_ms as f64 / 1000.0
    );
    if let Some(v) = &run.verified {
        text.push_str("; verification ");
        text.push_str(v);
    }
    text
}

fn start<W: Work, C: Clock>(
    work: &W,
    clock: &C,
    kind: BackupKind,
    trigger: &'static str,
    status: &mut BackupStatus,
) -> tokio::task::JoinHandle<(BackupKind, Run)> {
    let started = clock.now();
    status.running = Some(Running {
        kind: kind.name().into(),
        trigger: trigger.into(),
        started_ms: ms(started),
    });
    tracing::info!(r#type = kind.name(), trigger, "backup started");
    let work = work.clone();
    let t0 = tokio::time::Instant::now();
    tokio::spawn(async move {
        let result = work.backup(kind, trigger).await;
        let duration_ms = t0.elapsed().as_millis() as u64;
        let run = match result {
            Ok((label, verified)) => {
                tracing::info!(
                    r#type = kind.name(),
                    label,
                    duration_ms,
                    verified,
                    "backup taken"
                );
                Run {
                    label: Some(label),
                    trigger: trigger.into(),
                    started_ms: ms(started),
                    duration_ms,
                    error: None,
                    verified,
                }
            }
            Err(error) => {
                tracing::warn!(r#type = kind.name(), error, "backup failed");
                Run {
                    label: None,
                    trigger: trigger.into(),
                    started_ms: ms(started),
                    duration_ms,
                    error: Some(error),
                    verified: None,
                }
            }
        };
        (kind, run)
    })
}

/// The real work, with pgBackRest; `services` stops and starts the API and
/// PostgreSQL for a restore.
pub struct PgBackRest<S> {
    pub runner: Runner,
    /// The offsite task, told of each new local full; None without `[backup.s3]`.
    pub offsite: Option<mpsc::Sender<String>>,
    pub services: std::sync::Arc<S>,
    /// Where `migrate-database` writes its switch.
    pub switch: migrate::Switch,
}

impl<S> Clone for PgBackRest<S> {
    fn clone(&self) -> Self {
        PgBackRest {
            runner: self.runner.clone(),
            offsite: self.offsite.clone(),
            services: self.services.clone(),
            switch: self.switch.clone(),
        }
    }
}

impl<S: restore::Services> PgBackRest<S> {
    /// Takes the backup and, for a full, verifies it: its label and the
    /// verification's note.
    async fn take(
        &self,
        kind: BackupKind,
        trigger: &'static str,
    ) -> Result<(String, Option<String>), String> {
        let taken = {
            let _only = self.runner.exclusive().await;
            let taken = self.backup_here(kind, trigger).await;
            if taken.is_ok() {
                self.expire(1).await;
            }
            taken
        };
        if let (Ok((label, _)), Some(offsite)) = (&taken, &self.offsite)
            && kind == BackupKind::Full
            && offsite.try_send(label.clone()).is_err()
        {
            tracing::warn!(
                label,
                "the offsite task is busy: this full is not copied to S3"
            );
        }
        taken
    }

    /// Applies the retention to repository `repo`, unless its newest full
    /// is not verified (see `retention_hold`). A failure is logged: the
    /// backup itself stands.
    async fn expire(&self, repo: u32) {
        let verify = self.runner.settings().verify;
        let held = match self.runner.info(repo).await {
            Ok(inventory) => retention_hold(&inventory, repo, verify),
            Err(e) => Some(format!("the repository could not be listed: {e}")),
        };
        if let Some(why) = held {
            tracing::warn!(repo, why, "retention held back: older backups are kept");
            return;
        }
        if let Err(e) = self
            .runner
            .pgbackrest(
                &[
                    "--log-level-console=info".into(),
                    format!("--repo={repo}"),
                    "expire".into(),
                ],
                false,
            )
            .await
        {
            tracing::error!(repo, error = e, "expiring old backups failed");
        }
    }

    /// Verifies backup `label` of the local repository and annotates the
    /// result on it: the verdict, its note, and how the annotation went.
    async fn verify_and_annotate(&self, label: &str, size: u64) -> (Verdict, String, job::Outcome) {
        let verdict = verify::verify(&self.runner, label, size).await;
        let note = verdict.annotation(&Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        let annotated = self
            .runner
            .pgbackrest(
                &[
                    "--repo=1".into(),
                    format!("--set={label}"),
                    format!("--annotation={}={note}", info::VERIFIED),
                    "annotate".into(),
                ],
                false,
            )
            .await;
        (verdict, note, annotated)
    }

    /// A backup in the local repository (repo1, pgBackRest's default),
    /// verified when it is a full.
    async fn backup_here(
        &self,
        kind: BackupKind,
        trigger: &'static str,
    ) -> Result<(String, Option<String>), String> {
        let before = self.runner.info(1).await.ok();
        self.runner
            .pgbackrest(
                &[
                    "--log-level-console=info".into(),
                    "--repo=1".into(),
                    format!("--type={}", kind.name()),
                    format!("--annotation={}={trigger}", info::TRIGGER),
                    "backup".into(),
                ],
                false,
            )
            .await?;
        let after = self.runner.info(1).await?;
        // The new backup: the one not there before (pgBackRest may have
        // turned a diff into a full when there was no full yet).
        let known: Vec<&str> = before
            .iter()
            .flat_map(|b| b.backups.iter().map(|b| b.label.as_str()))
            .collect();
        let new = after
            .backups
            .iter()
            .rev()
            .find(|b| b.repo == 1 && !known.contains(&b.label.as_str()))
            .ok_or("pgbackrest reported success but lists no new backup")?;
        let label = new.label.clone();
        if new.kind != "full" || !self.runner.settings().verify {
            return Ok((label, None));
        }
        let (verdict, note, annotated) = self.verify_and_annotate(&label, new.size_bytes).await;
        match &verdict {
            Verdict::Ok(_) => {}
            Verdict::Skipped(why) => {
                tracing::warn!(label, why, "the test restore of a full backup was skipped")
            }
            Verdict::Failed(why) => {
                tracing::error!(label, why, "a full backup failed its verification")
            }
        }
        annotated.map_err(|e| {
            format!("backup {label} taken and verified ({note}), but not annotated: {e}")
        })?;
        // Taken either way; a failed verification shows in `verified`.
        Ok((label, Some(note)))
    }

    /// The newest timeline's history, from the repository.
    async fn lineage(&self, repo: u32, inv: &Inventory) -> Result<restore::Lineage, String> {
        let Some(id) = &inv.archive_id else {
            return Ok(restore::Lineage::first());
        };
        let dir = format!("archive/{}/{id}", self.runner.settings().stanza);
        let listing = self
            .runner
            .pgbackrest(
                &[format!("--repo={repo}"), "repo-ls".into(), dir.clone()],
                true,
            )
            .await?;
        let latest = listing
            .lines()
            .filter_map(|l| l.trim().strip_suffix(".history"))
            .filter_map(|h| u32::from_str_radix(h, 16).ok())
            .max();
        let Some(latest) = latest else {
            return Ok(restore::Lineage::first());
        };
        let history = self
            .runner
            .pgbackrest(
                &[
                    format!("--repo={repo}"),
                    "repo-get".into(),
                    format!("{dir}/{latest:08X}.history"),
                ],
                true,
            )
            .await?;
        Ok(restore::Lineage::parse(latest, &history))
    }
}

impl<S: restore::Services> Work for PgBackRest<S> {
    async fn backup(
        &self,
        kind: BackupKind,
        trigger: &'static str,
    ) -> Result<(String, Option<String>), String> {
        let result = self.take(kind, trigger).await;
        let (target, details) = match &result {
            Ok((label, verified)) => (
                label.clone(),
                serde_json::json!({ "type": kind.name(), "trigger": trigger, "verified": verified }),
            ),
            Err(e) => (
                kind.name().to_string(),
                serde_json::json!({ "type": kind.name(), "trigger": trigger, "error": e }),
            ),
        };
        // The database may be what failed: the log line says so then.
        if let Err(e) = sql::audit(
            &self.runner,
            &format!("backup.{}", kind.name()),
            &target,
            result.is_ok(),
            &details,
        )
        .await
        {
            tracing::warn!(error = e, "the backup is not in the audit log");
        }
        result
    }

    async fn restore(
        &self,
        request: restore::RestoreRequest,
        progress: restore::Progress,
    ) -> Result<String, String> {
        let inventory = self.runner.info(request.repo).await?;
        let lineage = self.lineage(request.repo, &inventory).await?;
        let plan = restore::plan(&inventory, &lineage, &request, Utc::now())?;
        if request.dry_run {
            return Ok(plan.describe);
        }
        let result = restore::run(
            &self.runner,
            self.services.as_ref(),
            &plan,
            request.repo,
            &inventory,
            &progress,
        )
        .await;
        match &result {
            Ok(done) => tracing::info!(done, "restore finished"),
            Err(e) => tracing::error!(error = e, "restore failed"),
        }
        result
    }

    async fn migrate(
        &self,
        request: migrate::MigrateRequest,
        progress: restore::Progress,
    ) -> Result<String, String> {
        let _one = self.runner.exclusive().await;
        let result = migrate::run(
            &self.runner,
            self.services.as_ref(),
            &self.switch,
            &request,
            &progress,
        )
        .await;
        match &result {
            Ok(done) => tracing::info!(done, "migrate-database finished"),
            Err(e) => tracing::error!(error = e, "migrate-database failed"),
        }
        result
    }

    async fn verify(&self, label: Option<String>) -> Result<String, String> {
        let inventory = self.runner.info(1).await?;
        let backup = match &label {
            Some(l) => inventory
                .backups
                .iter()
                .find(|b| &b.label == l && b.repo == 1),
            None => inventory
                .backups
                .iter()
                .filter(|b| b.kind == "full" && b.repo == 1)
                .max_by_key(|b| b.stopped_at),
        }
        .ok_or_else(|| match &label {
            Some(l) => format!("there is no backup {l}; `phoenixctl backup list` shows them"),
            None => "there is no full backup to verify yet".to_string(),
        })?;
        let label = backup.label.clone();
        let (verdict, note, annotated) = self.verify_and_annotate(&label, backup.size_bytes).await;
        let ok = !matches!(verdict, Verdict::Failed(_));
        let details = serde_json::json!({ "verified": note });
        if let Err(e) = sql::audit(&self.runner, "backup.verify", &label, ok, &details).await {
            tracing::warn!(error = e, "the verification is not in the audit log");
        }
        annotated.map_err(|e| format!("backup {label}: {note}; not annotated: {e}"))?;
        if ok {
            Ok(format!("backup {label}: {note}"))
        } else {
            tracing::error!(label, note, "a backup failed its verification");
            Err(format!("backup {label}: {note}"))
        }
    }

    async fn archiver(&self) -> Option<ArchiverStatus> {
        let sql = "SELECT archived_count, failed_count, \
                   coalesce((extract(epoch FROM last_archived_time) * 1000)::bigint::text, ''), \
                   coalesce((extract(epoch FROM last_failed_time) * 1000)::bigint::text, ''), \
                   coalesce(last_failed_wal, '') FROM pg_stat_archiver";
        let out = self
            .runner
            .run(sql::psql(&self.runner, "postgres", sql), true)
            .await
            .ok()?;
        parse_archiver(out.trim(), Utc::now().timestamp_millis().max(0) as u64)
    }

    async fn list(&self) -> Result<Inventory, String> {
        self.runner.info_all().await
    }

    async fn local(&self) -> Result<Inventory, String> {
        self.runner.info(1).await
    }
}

#[cfg(test)]
mod tests;
