//! The offsite task: after every new local full backup, a full backup in
//! pgBackRest's second repository (repo2, S3) and the appliance's state
//! uploaded beside it (`appliance`). A failed step is retried with the
//! one backoff of Phoenix until it succeeds or a newer local full replaces
//! it; the local repository never waits for S3 (WAL goes to both through
//! archive-push, which PostgreSQL retries on its own).
//!
//! Policy: fulls only. Differential and incremental backups stay local;
//! WAL reaches S3 continuously, so a restore from S3 replays from the
//! newest offsite full to any time after it.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use phoenix_backoff::Backoff;
use tokio::sync::mpsc;

use super::info::{self, Inventory};
use super::job::Runner;
use super::{Clock, ms};
use crate::status::{OffsiteCopy, OffsiteStatus};

/// The copy's two steps, each retried on its own.
pub trait OffsiteWork: Clone + Send + Sync + 'static {
    /// A full backup in repo2; returns its label.
    fn repo_backup(
        &self,
        local: &str,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// The appliance's state to the bucket; returns the objects written.
    fn upload_state(
        &self,
        local: &str,
        remote: &str,
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// First retry after a minute, at most one an hour; `PHOENIX_OFFSITE_RETRY`
/// (humantime) sets the first delay, for tests.
pub fn retry_backoff() -> Backoff {
    let initial = std::env::var("PHOENIX_OFFSITE_RETRY")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(60));
    let max = Duration::from_secs(3600).max(initial);
    Backoff::try_new(initial, max, 0.2).expect("initial above zero and within max")
}

/// What the task starts from: the newest full of each repository, so that
/// a copy missed before a restart is made, and a done one is not redone.
pub fn starting_point(inventory: &Inventory) -> (Option<String>, Option<OffsiteCopy>) {
    let newest = |repo: u32| {
        inventory
            .backups
            .iter()
            .filter(|b| b.kind == "full" && b.repo == repo)
            .max_by_key(|b| b.stopped_at)
    };
    let remote = newest(2).map(|b| OffsiteCopy {
        local: b.copy_of.clone().unwrap_or_default(),
        remote: b.label.clone(),
        at_ms: (b.stopped_at.max(0) as u64) * 1000,
        state_objects: None,
    });
    let pending = match (newest(1), &remote) {
        (Some(local), Some(r)) if (local.stopped_at.max(0) as u64) * 1000 > r.at_ms => {
            Some(local.label.clone())
        }
        (Some(local), None) => Some(local.label.clone()),
        _ => None,
    };
    (pending, remote)
}

/// Runs until the process ends. `wanted` brings the label of each new
/// local full; `report` gets the status after every change.
pub async fn run<W: OffsiteWork, C: Clock>(
    work: W,
    backoff: Backoff,
    clock: C,
    mut status: OffsiteStatus,
    wanted: &mut mpsc::Receiver<String>,
    report: impl Fn(&OffsiteStatus),
) {
    // The repo2 full made for the pending local one, once made.
    let mut remote: Option<String> = None;
    let mut attempt = 0u32;
    loop {
        report(&status);
        let Some(local) = status.pending.clone() else {
            let Some(label) = wanted.recv().await else {
                return;
            };
            status.pending = Some(label);
            (remote, attempt) = (None, 0);
            continue;
        };
        status.running_since_ms = Some(ms(clock.now()));
        status.retry_at_ms = None;
        report(&status);
        let outcome = copy(&work, &local, &mut remote).await;
        status.running_since_ms = None;
        match outcome {
            Ok((remote_label, objects)) => {
                tracing::info!(
                    local,
                    remote = remote_label,
                    objects,
                    target = status.target,
                    "offsite copy made"
                );
                status.last_success = Some(OffsiteCopy {
                    local,
                    remote: remote_label,
                    at_ms: ms(clock.now()),
                    state_objects: Some(objects),
                });
                status.pending = None;
                status.last_error = None;
                status.failures = 0;
                (remote, attempt) = (None, 0);
            }
            Err(error) => {
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                status.failures += 1;
                status.failures_total += 1;
                status.retry_at_ms = Some(ms(clock.now()) + delay.as_millis() as u64);
                tracing::warn!(local, error, retry_in = ?delay, target = status.target, "offsite copy failed");
                status.last_error = Some(error);
                report(&status);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    newer = wanted.recv() => match newer {
                        // A newer local full: copy that one instead, at once.
                        Some(label) => {
                            status.pending = Some(label);
                            (remote, attempt) = (None, 0);
                        }
                        None => return,
                    },
                }
            }
        }
    }
}

/// The repo2 backup unless made already, then the state.
async fn copy<W: OffsiteWork>(
    work: &W,
    local: &str,
    remote: &mut Option<String>,
) -> Result<(String, u64), String> {
    let label = match remote {
        Some(label) => label.clone(),
        None => {
            let label = work
                .repo_backup(local)
                .await
                .map_err(|e| format!("full backup to S3: {e}"))?;
            *remote = Some(label.clone());
            label
        }
    };
    let objects = work
        .upload_state(local, &label)
        .await
        .map_err(|e| format!("the appliance's state (repo2 backup {label} is made): {e}"))?;
    Ok((label, objects))
}

/// The real work: pgBackRest for repo2, aws-sdk-s3 for the state.
#[derive(Clone)]
pub struct RealOffsite {
    pub runner: Runner,
    pub uploader: super::appliance::Uploader,
}

impl OffsiteWork for RealOffsite {
    async fn repo_backup(&self, local: &str) -> Result<String, String> {
        self.uploader.reachable().await?;
        let _only = self.runner.exclusive().await;
        let list = || self.runner.info(2);
        // Idempotent; makes repo2's stanza when the bucket is new or was
        // emptied since PostgreSQL started (backup-stanza ran then).
        // stanza-create takes no --repo: it checks or creates every one.
        self.runner
            .pgbackrest(&["stanza-create".into()], false)
            .await?;
        let before: Vec<String> = list()
            .await
            .map(|i| i.backups.into_iter().map(|b| b.label).collect())
            .unwrap_or_default();
        self.runner
            .pgbackrest(
                &[
                    "--log-level-console=info".into(),
                    "--repo=2".into(),
                    "--type=full".into(),
                    format!("--annotation={}=offsite", info::TRIGGER),
                    format!("--annotation={}={local}", info::COPY_OF),
                    "backup".into(),
                ],
                false,
            )
            .await?;
        // The bucket's retention (`[backup.s3] retention_full_days`).
        if let Err(e) = self
            .runner
            .pgbackrest(&["--repo=2".into(), "expire".into()], false)
            .await
        {
            tracing::error!(error = e, "expiring old backups in S3 failed");
        }
        let after = list().await?;
        after
            .backups
            .iter()
            .rev()
            .find(|b| b.repo == 2 && !before.contains(&b.label))
            .map(|b| b.label.clone())
            .ok_or_else(|| "pgbackrest reported success but lists no new backup in repo2".into())
    }

    async fn upload_state(&self, local: &str, remote: &str) -> Result<u64, String> {
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        self.uploader.upload(local, remote, &at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use chrono::DateTime;

    /// Time that moves with tokio's paused clock.
    struct Paused(DateTime<Utc>, tokio::time::Instant);

    impl Clock for Paused {
        fn now(&self) -> DateTime<Utc> {
            self.0 + chrono::Duration::from_std(self.1.elapsed()).unwrap()
        }
    }

    /// S3 that is down until `up_at` (virtual time since the start), and
    /// the calls made, with the time of each.
    #[derive(Clone)]
    struct Fake {
        start: tokio::time::Instant,
        up_at: Duration,
        calls: Arc<Mutex<Vec<(String, Duration)>>>,
        state_fails_once: Arc<Mutex<bool>>,
    }

    impl Fake {
        fn new(up_at: Duration) -> Self {
            Fake {
                start: tokio::time::Instant::now(),
                up_at,
                calls: Arc::default(),
                state_fails_once: Arc::new(Mutex::new(false)),
            }
        }
        fn log(&self, what: String) -> bool {
            let t = self.start.elapsed();
            self.calls.lock().unwrap().push((what, t));
            t >= self.up_at
        }
    }

    impl OffsiteWork for Fake {
        async fn repo_backup(&self, local: &str) -> Result<String, String> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if self.log(format!("repo {local}")) {
                Ok(format!("{local}-r2"))
            } else {
                Err("connection refused".into())
            }
        }
        async fn upload_state(&self, local: &str, _remote: &str) -> Result<u64, String> {
            let up = self.log(format!("state {local}"));
            let mut once = self.state_fails_once.lock().unwrap();
            if *once {
                *once = false;
                return Err("503 slow down".into());
            }
            if up {
                Ok(7)
            } else {
                Err("connection refused".into())
            }
        }
    }

    fn backoff() -> Backoff {
        Backoff::try_new(Duration::from_secs(60), Duration::from_secs(3600), 0.0).unwrap()
    }

    fn start(
        fake: &Fake,
        initial: OffsiteStatus,
    ) -> (mpsc::Sender<String>, Arc<Mutex<Vec<OffsiteStatus>>>) {
        let (tx, mut rx) = mpsc::channel(4);
        let seen: Arc<Mutex<Vec<OffsiteStatus>>> = Arc::default();
        let (work, log) = (fake.clone(), seen.clone());
        let clock = Paused(
            DateTime::parse_from_rfc3339("2026-12-01T02:00:00Z")
                .unwrap()
                .into(),
            tokio::time::Instant::now(),
        );
        tokio::spawn(async move {
            run(work, backoff(), clock, initial, &mut rx, move |s| {
                log.lock().unwrap().push(s.clone())
            })
            .await
        });
        (tx, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_failing_while_s3_is_down_is_retried_with_backoff_until_it_succeeds() {
        // Down for the first 200 s: attempts at 5, 70 (5+60+5), 195
        // (70+120+5) fail; the one at 440 (195+240+5) succeeds.
        let fake = Fake::new(Duration::from_secs(200));
        let (tx, seen) = start(&fake, OffsiteStatus::default());
        tx.send("20261201-020000F".into()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let now = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(now.failures, 2);
        assert_eq!(
            now.last_error.as_deref(),
            Some("full backup to S3: connection refused")
        );
        assert_eq!(now.retry_at_ms.map(|t| t % 1000), Some(0));
        tokio::time::sleep(Duration::from_secs(400)).await;
        let times: Vec<u64> = fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.as_secs())
            .collect();
        assert_eq!(
            times,
            [5, 70, 195, 440, 440],
            "three failed repo backups, then repo and state"
        );
        let done = seen.lock().unwrap().last().cloned().unwrap();
        let copy = done.last_success.unwrap();
        assert_eq!(
            (copy.local.as_str(), copy.remote.as_str()),
            ("20261201-020000F", "20261201-020000F-r2")
        );
        assert_eq!(
            (done.failures, done.failures_total, done.pending),
            (0, 3, None)
        );
        assert!(done.last_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_state_upload_is_retried_without_a_second_repo_backup() {
        let fake = Fake::new(Duration::ZERO);
        *fake.state_fails_once.lock().unwrap() = true;
        let (tx, seen) = start(&fake, OffsiteStatus::default());
        tx.send("A".into()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let calls: Vec<String> = fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(calls, ["repo A", "state A", "state A"]);
        let done = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(done.last_success.unwrap().state_objects, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_full_replaces_the_one_waiting_for_a_retry() {
        let fake = Fake::new(Duration::from_secs(20));
        let (tx, seen) = start(&fake, OffsiteStatus::default());
        tx.send("A".into()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        tx.send("B".into()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let calls: Vec<String> = fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(
            calls,
            ["repo A", "repo B", "state B"],
            "B at once, A never retried"
        );
        let done = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(done.last_success.unwrap().local, "B");
    }

    #[test]
    fn after_a_restart_a_missed_copy_is_pending_and_a_made_one_is_not() {
        let backup = |label: &str, repo: u32, stopped_at: i64| info::Backup {
            label: label.into(),
            kind: "full".into(),
            repo,
            started_at: stopped_at - 10,
            stopped_at,
            size_bytes: 0,
            repo_size_bytes: 0,
            prior: None,
            trigger: None,
            verified: None,
            copy_of: (repo == 2).then(|| "L1".to_string()),
            timeline: 1,
            stop_lsn: 0,
        };
        let mut inv = Inventory {
            backups: vec![backup("L1", 1, 100), backup("R1", 2, 200)],
            ..Inventory::default()
        };
        let (pending, remote) = starting_point(&inv);
        assert_eq!(pending, None);
        assert_eq!(remote.unwrap().local, "L1");
        inv.backups.push(backup("L2", 1, 300));
        assert_eq!(starting_point(&inv).0.as_deref(), Some("L2"));
        inv.backups.retain(|b| b.repo == 1);
        assert_eq!(starting_point(&inv), (Some("L2".into()), None));
    }
}
