//! The control socket: one JSON request per connection line, one JSON reply.
//! Root only: the socket is created with mode 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::backup::info::Inventory;
use crate::backup::migrate::MigrateRequest;
use crate::backup::restore::RestoreRequest;
use crate::listen;
use crate::status::Snapshot;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Health,
    Start {
        service: String,
    },
    Stop {
        service: String,
    },
    Restart {
        service: String,
    },
    Reload,
    /// Order a new certificate over ACME now.
    #[serde(rename = "renew-certificate")]
    RenewCertificate,
    /// Take a backup now (full, diff or incr); the reply comes when it ends.
    #[serde(rename = "backup-now")]
    BackupNow {
        #[serde(rename = "type")]
        kind: String,
    },
    /// The backups the repositories hold.
    #[serde(rename = "backup-list")]
    BackupList,
    /// Verify a backup again: `pgbackrest verify` and a test restore.
    #[serde(rename = "backup-verify")]
    BackupVerify {
        label: Option<String>,
    },
    /// Restore PostgreSQL; progress lines come before the reply.
    Restore(RestoreRequest),
    /// Move the built-in database onto an external PostgreSQL; progress
    /// lines come before the reply.
    #[serde(rename = "migrate-database")]
    MigrateDatabase(MigrateRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "lowercase")]
pub enum Response {
    Ok(String),
    Error(String),
    Snapshot(Box<Snapshot>),
    Backups(Box<Inventory>),
    /// A step of a long request; the reply follows later.
    Progress(String),
}

/// Bind the socket (replacing a stale one) with mode 0600 from the start.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: is another supervisor running?",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    Ok(listener?)
}

/// Serves the socket for the life of the process, through the accept loop
/// that every listener of the supervisor shares (a connection limit, and a
/// backoff when accepting fails, say with EMFILE). Each request goes to
/// `submit` with the channel for its answer (`run` hands it to the event
/// loop); `submit` returns false when the loop has ended.
pub async fn serve<F>(listener: UnixListener, submit: F)
where
    F: Fn(Request, oneshot::Sender<Response>, mpsc::UnboundedSender<String>) -> bool
        + Clone
        + Send
        + Sync
        + 'static,
{
    listen::accept_loop(
        "control socket",
        listener,
        listen::CONTROL_CONNECTIONS,
        move |stream, _| {
            let submit = submit.clone();
            async move {
                if let Err(e) = handle(stream, &submit).await {
                    tracing::debug!(error = %e, "control connection");
                }
            }
        },
    )
    .await;
}

async fn handle(
    stream: UnixStream,
    submit: &impl Fn(Request, oneshot::Sender<Response>, mpsc::UnboundedSender<String>) -> bool,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // A connection that stays silent gives its slot back.
    while let Ok(line) = tokio::time::timeout(listen::CONTROL_IDLE_TIMEOUT, lines.next_line()).await
    {
        let Some(line) = line? else { break };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                match &req {
                    Request::Status | Request::Health => {}
                    // The line holds the target's password: not logged.
                    Request::MigrateDatabase(m) => {
                        tracing::info!(request = ?m, "control request: migrate-database")
                    }
                    _ => tracing::info!(request = %line, "control request"),
                }
                let (tx, mut rx) = oneshot::channel();
                let (progress_tx, mut progress) = mpsc::unbounded_channel();
                if !submit(req, tx, progress_tx) {
                    anyhow::bail!("the event loop has ended");
                }
                // Progress lines as they come, then the reply.
                loop {
                    tokio::select! {
                        biased;
                        Some(step) = progress.recv() => {
                            let mut out = serde_json::to_vec(&Response::Progress(step))?;
                            out.push(b'\n');
                            write.write_all(&out).await?;
                        }
                        reply = &mut rx => {
                            break reply.unwrap_or_else(|_| {
                                Response::Error("the supervisor is stopping".into())
                            });
                        }
                    }
                }
            }
            Err(e) => Response::Error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Client side, for `phoenixctl`.
pub async fn call(socket: &PathBuf, req: &Request) -> anyhow::Result<Response> {
    call_with_progress(socket, req, |_| {}).await
}

/// [`call`], handing each progress line of a long request to `progress`.
pub async fn call_with_progress(
    socket: &PathBuf,
    req: &Request,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Response> {
    use anyhow::Context as _;
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to {} (is phoenix-supervisor running, and are you root?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let reply = lines
            .next_line()
            .await?
            .context("the supervisor closed the connection")?;
        match serde_json::from_str(&reply)? {
            Response::Progress(step) => progress(&step),
            done => return Ok(done),
        }
    }
}
