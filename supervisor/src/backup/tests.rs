//! The backup task in virtual time, with a stand-in for pgBackRest that
//! takes as long as told.

use std::sync::{Arc, Mutex};

use super::*;
use crate::config::Schedule;

struct TestClock {
    base: DateTime<Utc>,
    t0: tokio::time::Instant,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.t0.elapsed()).unwrap()
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// When a backup started (day and time), its type and trigger.
type Started = (String, BackupKind, &'static str);

/// Records when each backup started (virtual wall-clock time) and takes
/// `takes` of virtual time.
#[derive(Clone)]
struct FakeWork {
    clock: Arc<TestClock>,
    takes: Duration,
    started: Arc<Mutex<Vec<Started>>>,
}

impl Work for FakeWork {
    async fn backup(
        &self,
        kind: BackupKind,
        trigger: &'static str,
    ) -> Result<(String, Option<String>), String> {
        let now = self.clock.now();
        self.started
            .lock()
            .unwrap()
            .push((now.format("%d %H:%M").to_string(), kind, trigger));
        tokio::time::sleep(self.takes).await;
        Ok((now.format("%Y%m%d-%H%M%SF").to_string(), None))
    }

    async fn list(&self) -> Result<Inventory, String> {
        Ok(Inventory::default())
    }

    async fn archiver(&self) -> Option<ArchiverStatus> {
        None
    }

    async fn verify(&self, _label: Option<String>) -> Result<String, String> {
        tokio::time::sleep(self.takes).await;
        Ok("ok".into())
    }

    async fn migrate(
        &self,
        _request: super::migrate::MigrateRequest,
        progress: restore::Progress,
    ) -> Result<String, String> {
        let _ = progress.send("migrating".into());
        Ok("migrated".into())
    }

    async fn restore(
        &self,
        _request: restore::RestoreRequest,
        progress: restore::Progress,
    ) -> Result<String, String> {
        let _ = progress.send("restoring".into());
        tokio::time::sleep(self.takes).await;
        Ok("restored".into())
    }
}

struct Harness {
    work: FakeWork,
    requests: mpsc::Sender<Request>,
    status: Arc<Mutex<BackupStatus>>,
}

fn start(base: &str, takes: Duration, schedules: &[(BackupKind, &str)]) -> Harness {
    let clock = Arc::new(TestClock {
        base: at(base),
        t0: tokio::time::Instant::now(),
    });
    let work = FakeWork {
        clock: clock.clone(),
        takes,
        started: Arc::default(),
    };
    let table = Timetable::new(
        &schedules
            .iter()
            .map(|(kind, cron)| Schedule {
                kind: *kind,
                cron: cron.to_string(),
            })
            .collect::<Vec<_>>(),
    );
    let (tx, rx) = mpsc::channel(8);
    let status = Arc::new(Mutex::new(BackupStatus::default()));
    let seen = status.clone();
    struct Shared(Arc<TestClock>);
    impl Clock for Shared {
        fn now(&self) -> DateTime<Utc> {
            self.0.now()
        }
    }
    let fake = work.clone();
    tokio::spawn(async move {
        let mut rx = rx;
        run(fake, table, Shared(clock), &mut rx, move |s| {
            *seen.lock().unwrap() = s.clone();
        })
        .await
    });
    Harness {
        work,
        requests: tx,
        status,
    }
}

async fn advance(d: Duration) {
    // In steps, so that every timer due on the way fires in its turn.
    let step = Duration::from_secs(30);
    let mut left = d;
    while !left.is_zero() {
        let now = left.min(step);
        tokio::time::sleep(now).await;
        left -= now;
    }
}

#[tokio::test(start_paused = true)]
async fn scheduled_backups_start_on_time_and_the_bigger_type_wins_a_shared_minute() {
    let h = start(
        "2026-12-01T00:30:00Z",
        Duration::from_secs(120),
        &[
            (BackupKind::Full, "0 2 * * *"),
            (BackupKind::Diff, "0 * * * *"),
        ],
    );
    advance(Duration::from_secs(4 * 3600)).await;
    let started = h.work.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            ("01 01:00".to_string(), BackupKind::Diff, "schedule"),
            ("01 02:00".to_string(), BackupKind::Full, "schedule"),
            ("01 03:00".to_string(), BackupKind::Diff, "schedule"),
            ("01 04:00".to_string(), BackupKind::Diff, "schedule"),
        ]
    );
    let status = h.status.lock().unwrap().clone();
    assert_eq!(
        status.last_success["full"].label.as_deref(),
        Some("20261201-020000F")
    );
    assert_eq!(status.last_success["full"].duration_ms, 120_000);
    assert_eq!(status.next.as_ref().map(|n| n.kind.as_str()), Some("diff"));
    assert_eq!(
        status.next.map(|n| n.at_ms),
        Some(ms(at("2026-12-01T05:00:00Z")))
    );
    assert_eq!((status.failures, status.skipped), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_backup_still_running_is_not_started_twice() {
    // A full that takes 90 minutes: the 03:00 differential finds it running.
    let h = start(
        "2026-12-01T01:59:00Z",
        Duration::from_secs(90 * 60),
        &[
            (BackupKind::Full, "0 2 * * *"),
            (BackupKind::Diff, "0 * * * *"),
        ],
    );
    advance(Duration::from_secs(5 * 60)).await;
    assert!(h.status.lock().unwrap().running.is_some());
    let (tx, rx) = oneshot::channel();
    h.requests
        .send(Request::Now {
            kind: BackupKind::Incr,
            reply: tx,
        })
        .await
        .ok()
        .unwrap();
    let refused = rx.await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("a full backup (schedule) is running since 2026-12-01T02:00:00Z: not starting a backup now"),
        "{refused}"
    );
    advance(Duration::from_secs(2 * 3600)).await;
    let started = h.work.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            ("01 02:00".to_string(), BackupKind::Full, "schedule"),
            ("01 04:00".to_string(), BackupKind::Diff, "schedule"),
        ],
        "03:00 was skipped"
    );
    assert_eq!(h.status.lock().unwrap().skipped, 1);
}

#[tokio::test(start_paused = true)]
async fn an_operator_backup_replies_when_it_is_taken() {
    let h = start(
        "2026-12-01T10:00:00Z",
        Duration::from_secs(42),
        &[(BackupKind::Full, "0 2 * * *")],
    );
    let (tx, rx) = oneshot::channel();
    h.requests
        .send(Request::Now {
            kind: BackupKind::Full,
            reply: tx,
        })
        .await
        .ok()
        .unwrap();
    let done = rx.await.unwrap().unwrap();
    assert_eq!(done, "full backup 20261201-100000F taken in 42.0 s");
    let started = h.work.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [("01 10:00".to_string(), BackupKind::Full, "operator")]
    );
    let status = h.status.lock().unwrap().clone();
    assert!(status.running.is_none());
    assert_eq!(status.last["full"].trigger, "operator");
}

#[tokio::test(start_paused = true)]
async fn a_restore_waits_for_no_backup_and_no_backup_starts_during_a_restore() {
    let h = start(
        "2026-12-01T01:59:00Z",
        Duration::from_secs(600),
        &[
            (BackupKind::Full, "0 2 * * *"),
            (BackupKind::Diff, "5 2 * * *"),
        ],
    );
    advance(Duration::from_secs(120)).await;
    let ask = |h: &Harness| {
        let (tx, rx) = oneshot::channel();
        let (progress, _) = mpsc::unbounded_channel();
        let sent = h.requests.try_send(Request::Restore {
            request: restore::RestoreRequest {
                target: restore::Target::Latest,
                repo: 1,
                dry_run: false,
            },
            progress,
            reply: tx,
        });
        assert!(sent.is_ok());
        rx
    };
    let refused = ask(&h).await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("a full backup (schedule) is running"),
        "{refused}"
    );
    // After the full (02:00 to 02:10), a restore from 02:11 to 02:21; the
    // 02:05 diff was skipped for the full, and a backup asked for during
    // the restore is refused.
    advance(Duration::from_secs(10 * 60)).await;
    let restore = ask(&h);
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        h.status
            .lock()
            .unwrap()
            .running
            .as_ref()
            .map(|r| r.kind.clone()),
        Some("restore".to_string())
    );
    let (tx, rx) = oneshot::channel();
    h.requests
        .try_send(Request::Now {
            kind: BackupKind::Full,
            reply: tx,
        })
        .ok()
        .unwrap();
    let refused = rx.await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("a restore (operator) is running since 2026-12-01T02:11:00Z"),
        "{refused}"
    );
    assert_eq!(h.status.lock().unwrap().skipped, 1);
    assert_eq!(restore.await.unwrap(), Ok("restored".to_string()));
    assert!(h.status.lock().unwrap().running.is_none());
}

#[test]
fn pg_stat_archiver_rows_read_as_failing_or_not() {
    let ok = parse_archiver("12|0|1796090565000||", 1).unwrap();
    assert_eq!(
        (ok.archived_count, ok.last_archived_ms),
        (12, Some(1796090565000))
    );
    assert!(!ok.failing());
    let bad = parse_archiver(
        "12|3|1796090565000|1796090600000|000000010000000000000009",
        1,
    )
    .unwrap();
    assert!(bad.failing());
    assert_eq!(
        bad.last_failed_wal.as_deref(),
        Some("000000010000000000000009")
    );
    let recovered = parse_archiver(
        "13|3|1796090700000|1796090600000|000000010000000000000009",
        1,
    )
    .unwrap();
    assert!(!recovered.failing());
    let never = parse_archiver("0|2||1796090600000|000000010000000000000001", 1).unwrap();
    assert!(never.failing());
    assert!(parse_archiver("garbage", 1).is_none());
}

#[tokio::test(start_paused = true)]
async fn changed_schedules_take_effect_without_a_restart() {
    let h = start(
        "2026-12-01T00:30:00Z",
        Duration::from_secs(60),
        &[(BackupKind::Diff, "0 * * * *")],
    );
    advance(Duration::from_secs(20 * 60)).await;
    // As `phoenixctl reload` would: incrementals every 15 minutes instead.
    h.requests
        .send(Request::Reschedule(Timetable::new(&[Schedule {
            kind: BackupKind::Incr,
            cron: "*/15 * * * *".into(),
        }])))
        .await
        .ok()
        .unwrap();
    advance(Duration::from_secs(72 * 60)).await;
    let started = h.work.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            ("01 01:00".to_string(), BackupKind::Incr, "schedule"),
            ("01 01:15".to_string(), BackupKind::Incr, "schedule"),
            ("01 01:30".to_string(), BackupKind::Incr, "schedule"),
            ("01 01:45".to_string(), BackupKind::Incr, "schedule"),
            ("01 02:00".to_string(), BackupKind::Incr, "schedule"),
        ],
        "the 01:00 hourly diff of the old schedule is not taken"
    );
    let next = h.status.lock().unwrap().next.clone().unwrap();
    assert_eq!(
        (next.kind.as_str(), next.at_ms),
        ("incr", ms(at("2026-12-01T02:15:00Z")))
    );
}

#[test]
fn retention_waits_while_the_newest_full_is_not_verified() {
    let full = |label: &str, stopped_at: i64, verified: Option<&str>| info::Backup {
        label: label.into(),
        kind: "full".into(),
        repo: 1,
        started_at: stopped_at - 10,
        stopped_at,
        size_bytes: 1,
        repo_size_bytes: 1,
        prior: None,
        timeline: 1,
        stop_lsn: 0,
        trigger: None,
        verified: verified.map(str::to_string),
        copy_of: None,
    };
    let inventory = |backups| Inventory {
        backups,
        ..Inventory::default()
    };
    let ok = "ok at 2026-12-01T02:03:00Z: users 1";
    let verified_last = inventory(vec![full("A", 100, Some(ok)), full("B", 200, Some(ok))]);
    assert_eq!(retention_hold(&verified_last, 1, true), None);
    let failed_last = inventory(vec![
        full("A", 100, Some(ok)),
        full(
            "B",
            200,
            Some("failed at 2026-12-02T02:03:00Z: it did not start"),
        ),
    ]);
    let why = retention_hold(&failed_last, 1, true).unwrap();
    assert!(why.contains("B, is not verified (failed at"), "{why}");
    let skipped_last = inventory(vec![
        full("A", 100, Some(ok)),
        full("B", 200, Some("skipped at 2026-12-02T02:03:00Z: disk")),
    ]);
    assert!(retention_hold(&skipped_last, 1, true).is_some());
    // Verification off: nothing is ever verified, pgBackRest's rule holds.
    assert_eq!(retention_hold(&failed_last, 1, false), None);
    // The S3 copies are not verified there; their retention is the bucket's.
    assert_eq!(retention_hold(&failed_last, 2, true), None);
    assert_eq!(retention_hold(&inventory(vec![]), 1, true), None);
}
