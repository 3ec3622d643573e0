//! Proof that a full backup restores: `pgbackrest verify` of its files,
//! then a test restore into a scratch directory, a second PostgreSQL on it
//! (unix socket only, in the scratch directory) that replays WAL to the
//! end of the backup and answers a query over the API's tables, and the
//! scratch directory removed. Skipped, with the reason, when the disk
//! cannot hold the restored copy.

use std::path::Path;
use std::time::Duration;

use super::job::{Runner, rm_rf};
use super::sql;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    Failed(String),
    Skipped(String),
}

impl Verdict {
    /// The annotation text, after "ok", "failed" or "skipped".
    pub fn annotation(&self, at: &str) -> String {
        match self {
            Verdict::Ok(what) => format!("ok at {at}: {what}"),
            Verdict::Failed(why) => format!("failed at {at}: {why}"),
            Verdict::Skipped(why) => format!("skipped at {at}: {why}"),
        }
    }
}

/// Room a restore of `size` bytes needs: the files, plus WAL replayed and
/// a margin.
pub fn room_needed(size: u64) -> u64 {
    size + size / 10 + (256 << 20)
}

/// Free bytes of the file system holding `dir` (or its nearest existing
/// ancestor).
fn free_bytes(dir: &Path) -> Option<u64> {
    let mut at = Some(dir);
    while let Some(p) = at {
        if let Ok(st) = nix::sys::statvfs::statvfs(p) {
            return Some(st.blocks_available() * st.fragment_size());
        }
        at = p.parent();
    }
    None
}

pub async fn verify(runner: &Runner, label: &str, size: u64) -> Verdict {
    let s = runner.settings();
    match runner
        .pgbackrest(
            &[
                "--log-level-console=info".into(),
                "--repo=1".into(),
                format!("--set={label}"),
                "verify".into(),
            ],
            false,
        )
        .await
    {
        Err(e) => return Verdict::Failed(format!("pgbackrest verify: {e}")),
        Ok(out) => {
            if let Some(found) = verify_findings(&out) {
                return Verdict::Failed(format!("pgbackrest verify: {found}"));
            }
        }
    }
    let need = room_needed(size);
    match free_bytes(&s.verify_dir) {
        Some(free) if free < need => {
            return Verdict::Skipped(format!(
                "{} free on the file system of {}, a test restore needs {}",
                bytesize::ByteSize(free),
                s.verify_dir.display(),
                bytesize::ByteSize(need)
            ));
        }
        _ => {}
    }
    let scratch = s.verify_dir.join(label);
    let outcome = test_restore(runner, label, &scratch).await;
    // Removed as PostgreSQL's user, which owns everything inside.
    let _ = runner.run(rm_rf(&scratch), true).await;
    match outcome {
        Ok(what) => Verdict::Ok(what),
        Err(why) => Verdict::Failed(why),
    }
}

async fn test_restore(runner: &Runner, label: &str, scratch: &Path) -> Result<String, String> {
    let s = runner.settings();
    let data = scratch.join("data");
    runner
        .run(
            vec![
                "mkdir".into(),
                "-m".into(),
                "0700".into(),
                "-p".into(),
                data.display().to_string(),
            ],
            true,
        )
        .await?;
    runner
        .pgbackrest(
            &[
                "--repo=1".into(),
                format!("--set={label}"),
                format!("--pg1-path={}", data.display()),
                "--type=immediate".into(),
                "--target-action=promote".into(),
                "--recovery-option=recovery_target_timeline=current".into(),
                "--archive-mode=off".into(),
                "--log-level-console=warn".into(),
                "restore".into(),
            ],
            false,
        )
        .await
        .map_err(|e| format!("test restore: {e}"))?;
    let socket = scratch.display().to_string();
    let server = tokio::spawn({
        let runner = runner.clone();
        let argv = vec![
            s.pg_bin.join("postgres").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=".into(),
            "-c".into(),
            format!("port={}", s.pg_port),
            "-c".into(),
            format!("unix_socket_directories={socket}"),
            "-c".into(),
            "archive_mode=off".into(),
            "-c".into(),
            "shared_buffers=32MB".into(),
        ];
        async move { runner.run(argv, false).await }
    });
    // A backup that cannot start shows as the server's exit, not as ten
    // minutes of waiting.
    let mut server = server;
    let answer = tokio::select! {
        answer = query_when_promoted(runner, &socket) => answer,
        exited = &mut server => {
            let why = match exited {
                Ok(Ok(_)) => "it exited".to_string(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            return Err(format!("the restored PostgreSQL did not start: {why}"));
        }
    };
    // PostgreSQL's fast shutdown, then wait for it.
    let pid_file = data.join("postmaster.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    {
        crate::process::signal(pid, nix::sys::signal::Signal::SIGINT);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(120), server).await;
    if stopped.is_err() {
        return Err("the test restore's PostgreSQL did not stop in 120 s".into());
    }
    answer
}

/// Waits (up to 10 minutes) until the restored PostgreSQL has replayed to
/// the end of the backup and promoted, then counts rows of the API's tables.
async fn query_when_promoted(runner: &Runner, socket: &str) -> Result<String, String> {
    let s = runner.settings();
    sql::wait_promoted(runner, socket, &s.database, Duration::from_secs(600))
        .await
        .map_err(|last| format!("the restored PostgreSQL did not come up in 600 s: {last}"))?;
    let sql = if s.database == "postgres" {
        "SELECT 'databases ' || count(*) FROM pg_database"
    } else {
        "SELECT 'users ' || (SELECT count(*) FROM users) || ', agents ' || \
         (SELECT count(*) FROM agents) || ', audit rows ' || (SELECT count(*) FROM audit_log)"
    };
    let out = runner
        .run(sql::psql_at(runner, socket, &s.database, sql), true)
        .await
        .map_err(|e| format!("the restored database does not answer: {e}"))?;
    Ok(out.trim().to_string())
}

/// What `pgbackrest verify` found wrong, from its report: 2.45 exits 0
/// and says `status: invalid` with counts such as `checksum invalid: 1`.
pub fn verify_findings(report: &str) -> Option<String> {
    let bad: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("status: invalid")
                || ["checksum invalid:", "size invalid:", "missing:", "other:"]
                    .iter()
                    .any(|k| {
                        l.split(k)
                            .nth(1)
                            .and_then(|n| n.trim().split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                    })
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_report_with_invalid_files_is_a_failure() {
        let bad = "2026-12-01 03:39:27.998 P00   INFO: stanza: phoenix\n\
                   status: error\n\
                   backup: 20261201-020242F, status: invalid, total files checked: 964, total valid files: 963\n\
                   checksum invalid: 1\n";
        let found = verify_findings(bad).unwrap();
        assert!(
            found.contains("status: invalid") && found.contains("checksum invalid: 1"),
            "{found}"
        );
        let good = "backup: 20261201-020242F, status: valid, total files checked: 964, total valid files: 964\n\
                    archiveId: 15-1, total WAL checked: 3, total valid WAL: 3\n";
        assert_eq!(verify_findings(good), None);
        assert_eq!(verify_findings("missing: 0\nchecksum invalid: 0\n"), None);
    }

    #[test]
    fn room_for_a_restore_has_a_margin() {
        assert_eq!(room_needed(0), 256 << 20);
        assert_eq!(
            room_needed(1 << 30),
            (1 << 30) + (1 << 30) / 10 + (256 << 20)
        );
    }

    #[test]
    fn verdicts_read_as_annotations() {
        let at = "2026-12-01T02:03:00Z";
        assert_eq!(
            Verdict::Ok("users 1".into()).annotation(at),
            "ok at 2026-12-01T02:03:00Z: users 1"
        );
        assert!(
            Verdict::Failed("x".into())
                .annotation(at)
                .starts_with("failed at")
        );
        assert!(
            Verdict::Skipped("x".into())
                .annotation(at)
                .starts_with("skipped at")
        );
    }
}
