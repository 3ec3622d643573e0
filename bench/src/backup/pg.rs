//! PostgreSQL's and pgBackRest's own programs, run by hand as an operator
//! would beside the appliance: as user `postgres`, over the managed
//! server's unix socket, with the superuser's password in `PGPASSWORD`,
//! and pgBackRest with the supervisor's generated configuration.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::interrupt;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PGBACKREST: &str = "/usr/bin/pgbackrest";
/// The stanza the supervisor generates.
pub const STANZA: &str = "phoenix";

/// A program of PostgreSQL 15.
pub fn pg_bin(name: &str) -> PathBuf {
    Path::new(PG_BIN).join(name)
}

/// The managed PostgreSQL, as its superuser.
pub struct Pg {
    pub socket_dir: PathBuf,
    pub port: u16,
    /// `<state>/generated/pgbackrest`, pgBackRest's `--config-path`.
    pub config_path: PathBuf,
    password: String,
}

impl Pg {
    /// The server of the supervisor whose temp dir is `dir`.
    pub fn new(dir: &Path, port: u16) -> Result<Pg> {
        let secret = dir.join("state/secrets/postgres-superuser-password");
        let password = std::fs::read_to_string(&secret)
            .with_context(|| format!("read {}", secret.display()))?
            .trim()
            .to_string();
        Ok(Pg {
            socket_dir: dir.join("run/postgres"),
            port,
            config_path: dir.join("state/generated/pgbackrest"),
            password,
        })
    }

    /// `program` as user `postgres`, with libpq's environment pointing at
    /// the managed server (psql, pgbench, pg_dump, pg_restore read it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env("PGPASSWORD", &self.password)
        .env("PGHOST", &self.socket_dir)
        .env("PGPORT", self.port.to_string())
        .env("PGUSER", "postgres")
        .current_dir("/");
        cmd
    }

    /// `pgbackrest --config-path=<generated> --stanza=phoenix ARGS`.
    pub fn pgbackrest(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(PGBACKREST);
        cmd.arg(format!("--config-path={}", self.config_path.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args);
        cmd
    }

    /// One statement through `psql` on `database` of the server whose
    /// socket is in `socket_dir`: the rows as `psql -At` prints them.
    pub fn psql_at(&self, socket_dir: &Path, database: &str, sql: &str) -> Result<String> {
        let mut cmd = self.command(pg_bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(socket_dir)
            .args(["-d", database, "-c", sql]);
        let (_, out) = timed(&mut cmd, &format!("psql `{sql}`"))?;
        Ok(out.trim().to_string())
    }

    /// [`Pg::psql_at`] on the managed server.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        self.psql_at(&self.socket_dir, database, sql)
    }

    /// Switches to a new WAL segment and waits until the one closed is
    /// archived, as the restore does: nothing written before is then
    /// waiting for the archiver. How long the archiving took.
    pub fn wait_archived(&self, timeout: Duration) -> Result<Duration> {
        let closed = self.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")?;
        let start = Instant::now();
        loop {
            let archived = self.psql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            )?;
            // Segment names of one timeline sort in WAL order.
            if archived.as_str() >= closed.as_str() {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < timeout,
                "WAL segment {closed} was not archived within {timeout:?} (last archived: {archived})"
            );
            interrupt::check()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `cmd` to its end in a process group of its own, checking for an
/// interrupt every 20 ms (and then killing the group): its wall time and
/// stdout. A non-zero exit is an error with the end of its output.
pub fn timed(cmd: &mut Command, what: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let child = spawn_group(cmd.stdin(Stdio::null()), what)?;
    let (status, out, err) = child.wait(what)?;
    let took = start.elapsed();
    if !status.success() {
        let text = format!("{out}{err}");
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what}: {status}\n{}", tail.join("\n"));
    }
    Ok((took, out))
}

/// A child in its own process group whose output is collected; killed
/// with its group when dropped before it ended.
pub struct Group {
    child: Option<Child>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

pub fn spawn_group(cmd: &mut Command, what: &str) -> Result<Group> {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = child.stdout.take().map(|o| collect(Box::new(o)));
    let err = child.stderr.take().map(|e| collect(Box::new(e)));
    Ok(Group {
        child: Some(child),
        out,
        err,
    })
}

impl Group {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for the end: exit status, stdout, stderr.
    pub fn wait(mut self, what: &str) -> Result<(std::process::ExitStatus, String, String)> {
        let child = self.child.as_mut().expect("present until waited for");
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("wait for {what}"))?
            {
                break status;
            }
            interrupt::check()?;
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok((status, join(self.out.take()), join(self.err.take())))
    }

    /// Sends `signal` to the group.
    pub fn signal(&self, signal: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(-(c.id() as i32)), signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(-(c.id() as i32)), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}
