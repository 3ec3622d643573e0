//! `phoenixctl restore`: PostgreSQL back to a backup, a point in time, or
//! the end of the archived WAL. The current WAL is archived first, the API
//! and PostgreSQL are stopped through the event loop, pgBackRest restores
//! into `data.restoring` next to the data directory, and the two are
//! swapped in one step (`RENAME_EXCHANGE`): at every moment `data` is a
//! whole cluster, the old one until the swap, so an interrupted restore
//! leaves the old data in place and the stack startable. The old data
//! directory is kept as `data.before-restore-<UTC time>`, never deleted.
//! If the restored cluster does not come up, the swap is undone.

use std::ffi::OsStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::info::{Backup, Inventory};
use super::job::{Runner, rm_rf};
use super::sql::{self, psql};
use crate::fsafe;

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Target {
    /// Everything archived: the newest backup and all WAL after it.
    Latest,
    /// The state of this moment: every transaction committed by then.
    Time(String),
    /// The backup as it ended, no WAL after it.
    Backup(String),
}

/// A restore as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub target: Target,
    /// 1: the local repository; 2: S3.
    pub repo: u32,
    /// Only say what would be restored.
    #[serde(default)]
    pub dry_run: bool,
}

/// What pgBackRest will be told, decided from the inventory before
/// anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The backup set restored.
    pub set: String,
    /// pgBackRest's recovery options.
    pub recovery: Vec<String>,
    /// For the operator: what will be restored.
    pub describe: String,
}

/// Reads the operator's time: RFC 3339 (`2026-12-01T02:03:04Z`,
/// `2026-12-01T03:03:04+01:00`) or `2026-12-01 02:03:04` (UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "`{text}` is not a time: write it as 2026-12-01T02:03:04Z (RFC 3339) or \
         \"2026-12-01 02:03:04\" (UTC)"
    ))
}

fn show(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn ended(b: &Backup) -> DateTime<Utc> {
    DateTime::from_timestamp(b.stopped_at, 0).unwrap_or_default()
}

/// The history of the newest timeline: which timelines lead to it, and
/// up to which LSN each was followed. Each restore starts a new timeline;
/// a backup taken on a timeline that was left before it (a restore
/// branched off earlier) cannot be replayed into the newest one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub latest: u32,
    /// Ancestor timeline → the LSN where the next one branched off.
    pub ends: std::collections::BTreeMap<u32, u64>,
}

impl Lineage {
    /// Before any restore: timeline 1 only.
    pub fn first() -> Self {
        Lineage {
            latest: 1,
            ends: Default::default(),
        }
    }

    /// From `<latest>.history` as PostgreSQL writes it: per ancestor,
    /// `parent-timeline <TAB> switch-LSN <TAB> reason`.
    pub fn parse(latest: u32, history: &str) -> Self {
        let ends = history
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let tli = f.next()?.parse().ok()?;
                let lsn = super::info::parse_lsn(f.next()?)?;
                Some((tli, lsn))
            })
            .collect();
        Lineage { latest, ends }
    }

    /// Whether WAL from the end of `b` leads to the newest timeline.
    pub fn leads_on(&self, b: &Backup) -> bool {
        b.timeline == self.latest
            || self
                .ends
                .get(&b.timeline)
                .is_some_and(|end| b.stop_lsn <= *end)
    }
}

/// Checks the request against what the repository holds; pure.
pub fn plan(
    inv: &Inventory,
    lineage: &Lineage,
    req: &RestoreRequest,
    now: DateTime<Utc>,
) -> Result<Plan, String> {
    let repo_name = if req.repo == 1 { "local" } else { "S3" };
    let all: Vec<&Backup> = inv.backups.iter().filter(|b| b.repo == req.repo).collect();
    // A chosen backup is restored as it is, on its own timeline; a time or
    // the latest state follows the newest timeline.
    if let Target::Backup(label) = &req.target {
        let Some(b) = all.iter().find(|b| &b.label == label) else {
            return Err(format!(
                "there is no backup {label} in the {repo_name} repository; \
                 `phoenixctl backup list` shows them"
            ));
        };
        return Ok(Plan {
            set: b.label.clone(),
            recovery: vec![
                "--type=immediate".into(),
                "--target-action=promote".into(),
                "--recovery-option=recovery_target_timeline=current".into(),
            ],
            describe: format!(
                "backup {} as it ended ({}), from the {repo_name} repository",
                b.label,
                show(ended(b))
            ),
        });
    }
    let backups: Vec<&Backup> = all.into_iter().filter(|b| lineage.leads_on(b)).collect();
    let Some(newest) = backups.iter().max_by_key(|b| b.stopped_at) else {
        return Err(format!(
            "the {repo_name} repository holds no backup to restore ({})",
            inv.status
        ));
    };
    let oldest = backups
        .iter()
        .min_by_key(|b| b.stopped_at)
        .expect("not empty");
    match &req.target {
        Target::Latest => Ok(Plan {
            set: newest.label.clone(),
            recovery: vec!["--type=default".into()],
            describe: format!(
                "backup {} (ended {}) and all archived WAL after it, from the {repo_name} repository",
                newest.label,
                show(ended(newest))
            ),
        }),
        Target::Backup(_) => unreachable!("handled above"),
        Target::Time(text) => {
            let t = parse_time(text)?;
            if t > now {
                return Err(format!(
                    "{} is in the future (now is {}): nothing can be restored to it",
                    show(t),
                    show(now)
                ));
            }
            if t < ended(oldest) {
                return Err(format!(
                    "{} is before the oldest backup in the {repo_name} repository, {} (ended {}): \
                     the restorable window starts there",
                    show(t),
                    oldest.label,
                    show(ended(oldest))
                ));
            }
            // The newest backup that ended by then; WAL replays from it.
            let from = backups
                .iter()
                .filter(|b| ended(b) <= t)
                .max_by_key(|b| b.stopped_at)
                .expect("the oldest ended before t");
            Ok(Plan {
                set: from.label.clone(),
                recovery: vec![
                    "--type=time".into(),
                    format!("--target={}", t.format("%Y-%m-%d %H:%M:%S%.6f+00")),
                    "--target-action=promote".into(),
                ],
                describe: format!(
                    "the state of {} (every transaction committed by then): backup {} and the WAL after it, \
                     from the {repo_name} repository",
                    show(t),
                    from.label
                ),
            })
        }
    }
}

/// How the restore reaches the services: through the event loop, as the
/// control socket's start and stop do. `run.rs` provides it.
pub trait Services: Send + Sync + 'static {
    /// Stop (`false`) or start (`true`) a service, and wait until it is
    /// stopped, or ready.
    fn set(
        &self,
        service: &str,
        running: bool,
        within: Duration,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Whether the service is ready now.
    fn ready(&self, service: &str) -> impl std::future::Future<Output = bool> + Send;
    /// Reads the config file again, as `phoenixctl reload` does.
    fn reload(&self) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Progress lines for the operator.
pub type Progress = mpsc::UnboundedSender<String>;

fn say(progress: &Progress, text: impl Into<String>) {
    let text = text.into();
    tracing::info!(step = %text, "restore");
    let _ = progress.send(text);
}

/// Carries the restore out, as planned.
pub async fn run<S: Services>(
    runner: &Runner,
    services: &S,
    plan: &Plan,
    repo: u32,
    inventory: &Inventory,
    progress: &Progress,
) -> Result<String, String> {
    let s = runner.settings();
    let data = s.pg_data.clone();
    let (Some(parent), Some(data_name)) = (data.parent(), data.file_name()) else {
        return Err(format!("{}: not a data directory path", data.display()));
    };
    let restoring_name = format!("{}.restoring", data_name.to_string_lossy());
    let restoring = parent.join(&restoring_name);

    let running = if services.ready("postgres").await {
        Some(running_system_id(runner).await)
    } else {
        None
    };
    if let Some(running) = running {
        match (running, inventory.system_id) {
            (Ok(now), Some(backed_up)) if now != backed_up => say(
                progress,
                format!(
                    "the running PostgreSQL (system {now}) is not the cluster the repository holds \
                     (system {backed_up}), as on a new machine: its WAL is not archived, its data is kept aside"
                ),
            ),
            _ => {
                say(
                    progress,
                    "archiving the current WAL, so that nothing committed is left out",
                );
                let archive_id = inventory.archive_id.as_deref().unwrap_or_default();
                archive_current_wal(runner, repo, archive_id).await?;
            }
        }
    } else {
        say(
            progress,
            "PostgreSQL is not running: WAL it had not archived cannot be saved",
        );
    }
    for service in ["api", "postgres"] {
        say(progress, format!("stopping {service}"));
        services
            .set(service, false, Duration::from_secs(180))
            .await?;
    }
    // A half-restored copy from an earlier attempt goes first.
    let prepared = match runner.run(rm_rf(&restoring), true).await {
        Ok(_) => runner
            .run(
                vec![
                    "mkdir".into(),
                    "-m".into(),
                    "0700".into(),
                    restoring.display().to_string(),
                ],
                true,
            )
            .await
            .map(|_| ()),
        Err(e) => Err(format!("removing {}: {e}", restoring.display())),
    };
    if let Err(e) = prepared {
        restart_stack(services, progress).await;
        return Err(format!(
            "{e}; nothing was restored, the data directory is unchanged and the stack is started again"
        ));
    }
    say(
        progress,
        format!("restoring {} into {}", plan.describe, restoring.display()),
    );
    let mut args = vec![
        "--log-level-console=info".to_string(),
        format!("--repo={repo}"),
        format!("--set={}", plan.set),
        format!("--pg1-path={}", restoring.display()),
        // The restored cluster runs as `data`, not `data.restoring`.
        format!(
            "--recovery-option=restore_command={} --config-path={} --stanza={} archive-get %f \"%p\"",
            s.pgbackrest.display(),
            s.config_path.display(),
            s.stanza
        ),
    ];
    args.extend(plan.recovery.iter().cloned());
    args.push("restore".into());
    if let Err(e) = runner.pgbackrest(&args, false).await {
        // `data` was not touched: start the stack again as it was.
        restart_stack(services, progress).await;
        return Err(format!(
            "pgbackrest restore failed, the data directory is unchanged and the stack is started again: {e}"
        ));
    }

    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let kept_name = format!("{}.before-restore-{stamp}", data_name.to_string_lossy());
    let kept = parent.join(&kept_name);
    let dir = fsafe::open_dir(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    dir.exchange(OsStr::new(&restoring_name), data_name)
        .map_err(|e| {
            format!(
                "swapping {} and {}: {e}",
                restoring.display(),
                data.display()
            )
        })?;
    dir.rename_new(OsStr::new(&restoring_name), OsStr::new(&kept_name))
        .map_err(|e| format!("keeping the old data as {}: {e}", kept.display()))?;
    say(
        progress,
        format!("the old data directory is kept as {}", kept.display()),
    );

    say(
        progress,
        "starting PostgreSQL and replaying WAL to the target",
    );
    let up = match services
        .set("postgres", true, Duration::from_secs(1800))
        .await
    {
        Ok(()) => sql::wait_promoted(
            runner,
            &runner.settings().pg_socket_dir.display().to_string(),
            "postgres",
            Duration::from_secs(1800),
        )
        .await
        .map_err(|last| format!("still not promoted after 30 min: {last}")),
        Err(e) => Err(e),
    };
    if let Err(e) = up {
        say(
            progress,
            format!("the restored cluster did not come up ({e}); putting the old data back"),
        );
        let _ = services
            .set("postgres", false, Duration::from_secs(180))
            .await;
        let failed_name = format!("{}.failed-restore-{stamp}", data_name.to_string_lossy());
        let undo = dir
            .rename_new(data_name, OsStr::new(&failed_name))
            .and_then(|()| dir.rename_new(OsStr::new(&kept_name), data_name));
        restart_stack(services, progress).await;
        return Err(match undo {
            Ok(()) => format!(
                "the restored cluster did not come up: {e}; the old data is back in place and the \
                 restored copy is kept as {}",
                parent.join(&failed_name).display()
            ),
            Err(undo) => format!(
                "the restored cluster did not come up: {e}; putting the old data back failed too \
                 ({undo}): it is {}",
                kept.display()
            ),
        });
    }
    let details =
        serde_json::json!({ "restored": plan.describe, "old_data": kept.display().to_string() });
    if let Err(e) = sql::audit(runner, "database.restore", "postgres", true, &details).await {
        say(progress, e);
    }
    say(progress, "starting the API");
    services.set("api", true, Duration::from_secs(300)).await?;
    Ok(format!(
        "restored {}; the old data directory is {}",
        plan.describe,
        kept.display()
    ))
}

async fn restart_stack<S: Services>(services: &S, progress: &Progress) {
    for service in ["postgres", "api"] {
        if let Err(e) = services.set(service, true, Duration::from_secs(300)).await {
            say(progress, format!("{service} did not start again: {e}"));
        }
    }
}

/// Switches to a new WAL segment and waits (up to 60 s) until the one
/// closed is archived, so a restore to seconds ago finds its commits.
/// The running cluster's system identifier.
async fn running_system_id(runner: &Runner) -> Result<u64, String> {
    let out = runner
        .run(
            psql(
                runner,
                "postgres",
                "SELECT system_identifier FROM pg_control_system()",
            ),
            true,
        )
        .await?;
    out.trim()
        .parse()
        .map_err(|e| format!("system identifier `{}`: {e}", out.trim()))
}

/// Switches to a new WAL segment and waits (60 s at most) until the one
/// closed is in the repository restored from: `repo-ls` of that
/// repository, not pg_stat_archiver, which also counts the other
/// repository's failures.
async fn archive_current_wal(runner: &Runner, repo: u32, archive_id: &str) -> Result<(), String> {
    let closed = runner
        .run(
            psql(
                runner,
                "postgres",
                "SELECT pg_walfile_name(pg_switch_wal())",
            ),
            true,
        )
        .await
        .map_err(|e| format!("switching WAL: {e}"))?;
    let closed = closed.trim().to_string();
    let Some(folder) = closed.get(..16) else {
        return Err(format!("switching WAL: `{closed}` is not a segment name"));
    };
    let dir = format!("archive/{}/{archive_id}/{folder}", runner.settings().stanza);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listing = runner
            .pgbackrest(
                &[format!("--repo={repo}"), "repo-ls".into(), dir.clone()],
                true,
            )
            .await;
        if let Ok(listing) = &listing
            && listing
                .lines()
                .any(|f| f.trim().starts_with(&format!("{closed}-")))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "WAL segment {closed} did not reach the repository within 60 s{}; not restoring, \
                 nothing was stopped. See /health backup checks and the PostgreSQL log",
                listing.err().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(label: &str, kind: &str, stopped: &str) -> Backup {
        let t = parse_time(stopped).unwrap().timestamp();
        Backup {
            label: label.into(),
            kind: kind.into(),
            repo: 1,
            started_at: t - 10,
            stopped_at: t,
            size_bytes: 1,
            repo_size_bytes: 1,
            prior: None,
            trigger: None,
            verified: None,
            timeline: 1,
            stop_lsn: 0,
            copy_of: None,
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            backups: vec![
                backup("20261201-020000F", "full", "2026-12-01T02:00:10Z"),
                backup(
                    "20261201-020000F_20261201-030000D",
                    "diff",
                    "2026-12-01T03:00:10Z",
                ),
                backup("20261202-020000F", "full", "2026-12-02T02:00:10Z"),
            ],
            wal: Vec::new(),
            status: "ok".into(),
            archive_id: Some("15-1".into()),
            unreachable: Vec::new(),
            system_id: None,
        }
    }

    fn req(target: Target) -> RestoreRequest {
        RestoreRequest {
            target,
            repo: 1,
            dry_run: false,
        }
    }

    #[test]
    fn a_time_restores_from_the_newest_backup_that_ended_by_then() {
        let now = parse_time("2026-12-02T12:00:00Z").unwrap();
        let p = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Time("2026-12-01 03:30:00".into())),
            now,
        )
        .unwrap();
        assert_eq!(p.set, "20261201-020000F_20261201-030000D");
        assert_eq!(
            p.recovery,
            [
                "--type=time",
                "--target=2026-12-01 03:30:00.000000+00",
                "--target-action=promote"
            ]
        );
        let p = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Time("2026-12-02T03:00:30+01:00".into())),
            now,
        )
        .unwrap();
        assert_eq!(
            p.set, "20261202-020000F",
            "02:00:30 UTC, just after the second full ended"
        );
        let p = plan(&inventory(), &Lineage::first(), &req(Target::Latest), now).unwrap();
        assert_eq!(
            (p.set.as_str(), p.recovery[0].as_str()),
            ("20261202-020000F", "--type=default")
        );
        let p = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Backup("20261201-020000F".into())),
            now,
        )
        .unwrap();
        assert_eq!(
            p.recovery,
            [
                "--type=immediate",
                "--target-action=promote",
                "--recovery-option=recovery_target_timeline=current"
            ]
        );
    }

    #[test]
    fn bad_targets_are_refused_with_the_window_and_nothing_is_touched() {
        let now = parse_time("2026-12-02T12:00:00Z").unwrap();
        let e = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Time("2026-11-30T00:00:00Z".into())),
            now,
        )
        .unwrap_err();
        assert!(e.contains("is before the oldest backup in the local repository, 20261201-020000F (ended 2026-12-01T02:00:10Z)"), "{e}");
        let e = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Time("2026-12-03T00:00:00Z".into())),
            now,
        )
        .unwrap_err();
        assert!(e.contains("is in the future"), "{e}");
        let e = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Time("yesterday".into())),
            now,
        )
        .unwrap_err();
        assert!(e.starts_with("`yesterday` is not a time"), "{e}");
        let e = plan(
            &inventory(),
            &Lineage::first(),
            &req(Target::Backup("20990101-000000F".into())),
            now,
        )
        .unwrap_err();
        assert!(e.contains("there is no backup 20990101-000000F"), "{e}");
        let e = plan(
            &inventory(),
            &Lineage::first(),
            &RestoreRequest {
                target: Target::Latest,
                repo: 2,
                dry_run: false,
            },
            now,
        )
        .unwrap_err();
        assert!(e.contains("the S3 repository holds no backup"), "{e}");
    }

    #[test]
    fn after_a_restore_only_backups_on_the_way_to_the_newest_timeline_are_used() {
        // Timeline 2 came from restoring timeline 1 to just after the
        // first full; a second full was then taken on timeline 2. A later
        // restore (timeline 3) went back to timeline 1 before the second
        // full, so that full lies on an abandoned branch.
        let mut inv = inventory();
        for b in &mut inv.backups {
            b.stop_lsn = 0x100;
        }
        inv.backups[2].timeline = 2;
        let lineage = Lineage::parse(3, "1\t0/200\tbefore 2026-12-01 04:00:00+00\n");
        assert_eq!(lineage.ends.get(&1), Some(&0x200));
        let now = parse_time("2026-12-02T12:00:00Z").unwrap();
        let p = plan(
            &inv,
            &lineage,
            &req(Target::Time("2026-12-02 06:00:00".into())),
            now,
        )
        .unwrap();
        assert_eq!(
            p.set, "20261201-020000F_20261201-030000D",
            "not the full on timeline 2"
        );
        let p = plan(&inv, &lineage, &req(Target::Latest), now).unwrap();
        assert_eq!(p.set, "20261201-020000F_20261201-030000D");
        // A backup past the branch point of its timeline is left out too.
        inv.backups[1].stop_lsn = 0x300;
        let p = plan(&inv, &lineage, &req(Target::Latest), now).unwrap();
        assert_eq!(p.set, "20261201-020000F");
        // Asked for by label, any backup is restored as it ended.
        let p = plan(
            &inv,
            &lineage,
            &req(Target::Backup("20261202-020000F".into())),
            now,
        )
        .unwrap();
        assert_eq!(p.set, "20261202-020000F");
    }
}
