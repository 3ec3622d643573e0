//! Runs one pgBackRest command as PostgreSQL's user, through the reaper
//! (the one waiter for children), its output logged line by line as the
//! `backup` job's.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::config::{BackupSettings, ServiceSpec};
use crate::process::{self, RunAs};
use crate::reaper::Reaper;

/// What the job printed on stdout (kept whole: `info` prints JSON there),
/// or why it failed, with the end of its output.
pub type Outcome = Result<String, String>;

#[derive(Clone)]
pub struct Runner {
    settings: BackupSettings,
    reaper: Arc<Reaper>,
    run_as: Option<RunAs>,
    /// Held for each backup, local or offsite: pgBackRest takes one
    /// backup of a stanza at a time, whatever the repository.
    backups: Arc<tokio::sync::Mutex<()>>,
}

/// How long a listing waits for S3 before it shows the local repository
/// alone.
const REMOTE_INFO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// At most this much of stdout is kept.
const STDOUT_LIMIT: usize = 16 << 20;

impl Runner {
    pub fn new(settings: BackupSettings, reaper: Arc<Reaper>) -> Result<Self, String> {
        let run_as = match &settings.user {
            Some(name) => Some(RunAs::lookup(name).map_err(|e| format!("user {name}: {e}"))?),
            None => None,
        };
        Ok(Runner {
            settings,
            reaper,
            run_as,
            backups: Arc::default(),
        })
    }

    /// Waits until no other backup runs, and keeps others waiting while
    /// the guard lives.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.backups.lock().await
    }

    pub fn settings(&self) -> &BackupSettings {
        &self.settings
    }

    /// `pgbackrest --config-path=… --stanza=phoenix ARGS`. Lines on stderr
    /// (pgBackRest's console log) go to the supervisor's log; `quiet` keeps
    /// stdout out of it (JSON).
    pub async fn pgbackrest(&self, args: &[String], quiet: bool) -> Outcome {
        let s = &self.settings;
        let mut argv = vec![
            s.pgbackrest.display().to_string(),
            format!("--config-path={}", s.config_path.display()),
            format!("--stanza={}", s.stanza),
        ];
        argv.extend(args.iter().cloned());
        self.run(argv, quiet).await
    }

    /// What one repository holds (`pgbackrest info --repo=N`): asking for
    /// one never waits on another, such as an S3 that is down.
    pub async fn info(&self, repo: u32) -> Result<super::info::Inventory, String> {
        let out = self
            .pgbackrest(
                &[
                    "--output=json".into(),
                    format!("--repo={repo}"),
                    "info".into(),
                ],
                true,
            )
            .await?;
        super::info::parse(out.as_bytes())
    }

    /// Every repository: the local one must answer; S3 (repo2), when
    /// configured, is given `REMOTE_INFO_TIMEOUT` and otherwise listed as
    /// unreachable.
    pub async fn info_all(&self) -> Result<super::info::Inventory, String> {
        let local = self.info(1).await?;
        if self.settings.s3.is_none() {
            return Ok(local);
        }
        Ok(
            match tokio::time::timeout(REMOTE_INFO_TIMEOUT, self.info(2)).await {
                Ok(Ok(remote)) => local.with(remote),
                Ok(Err(e)) => local.with(super::info::Inventory {
                    unreachable: vec![format!("S3 (repo2): {e}")],
                    ..Default::default()
                }),
                Err(_) => local.with(super::info::Inventory {
                    unreachable: vec![format!(
                        "S3 (repo2): no answer in {} s",
                        REMOTE_INFO_TIMEOUT.as_secs()
                    )],
                    ..Default::default()
                }),
            },
        )
    }

    /// Runs `argv` as PostgreSQL's user with the superuser's password in
    /// `PGPASSWORD` (pgBackRest and psql read it; it is never on a command line).
    pub async fn run(&self, argv: Vec<String>, quiet: bool) -> Outcome {
        let password = self.settings.superuser_password.clone();
        self.run_with_password(argv, &password, quiet).await
    }

    /// [`Runner::run`] with the password in the file `password` instead:
    /// another server's (`migrate-database`'s target).
    pub async fn run_with_password(
        &self,
        argv: Vec<String>,
        password: &std::path::Path,
        quiet: bool,
    ) -> Outcome {
        let mut spec = ServiceSpec::new("backup", argv.clone());
        spec.secret_env = [("PGPASSWORD".to_string(), password.to_path_buf())].into();
        let mut cmd = process::job_command(&argv, &spec, self.run_as.as_ref())
            .map_err(|e| format!("{}: {e}", argv[0]))?;
        cmd.stdin(Stdio::null());
        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        let pid = child.id() as i32;
        let mut guard = KillOnDrop(Some(pid));
        let stdout = child
            .stdout
            .take()
            .and_then(|o| tokio::process::ChildStdout::from_std(o).ok());
        let stderr = child
            .stderr
            .take()
            .and_then(|e| tokio::process::ChildStderr::from_std(e).ok());
        let (out, err) = tokio::join!(
            pump(stdout, "stdout", !quiet, STDOUT_LIMIT),
            pump(stderr, "stderr", true, 64 << 10)
        );
        let status = exit.await.map_err(|_| "the process vanished".to_string())?;
        guard.0 = None;
        if status.success() {
            Ok(out)
        } else {
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "{} {}: {status}{}{}",
                argv[0].rsplit('/').next().unwrap_or_default(),
                argv.last().map(String::as_str).unwrap_or_default(),
                if tail.is_empty() { "" } else { ": " },
                tail.join(" / ")
            ))
        }
    }
}

/// `rm -rf` of a tree PostgreSQL's user owns, run as that user (never as
/// root in a directory it controls), staying on one file system.
pub fn rm_rf(path: &std::path::Path) -> Vec<String> {
    vec![
        "rm".into(),
        "-rf".into(),
        "--one-file-system".into(),
        "--".into(),
        path.display().to_string(),
    ]
}

/// Reads a stream to its end (a closed pipe would kill the job), logging
/// each line when asked, keeping at most `limit` bytes.
async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    name: &str,
    log: bool,
    limit: usize,
) -> String {
    let Some(stream) = stream else {
        return String::new();
    };
    let mut kept = String::new();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if log {
            tracing::info!(target: "phoenix::service", service = "backup", stream = name, "{line}");
        }
        if kept.len() + line.len() < limit {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    kept
}

/// Kills the job's process group when its future is dropped (shutdown).
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            process::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}
