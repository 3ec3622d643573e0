//! Black-box tests: the real `phoenix-api` binary against a real PostgreSQL 15
//! that each test starts in a temporary directory (and always stops again).
//!
//! Tests that need PostgreSQL print a note and pass when its binaries are not
//! installed at `/usr/lib/postgresql/15/bin`.

use std::{
    fs::{self, File},
    io::Write,
    net::{SocketAddr, TcpListener},
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, geteuid},
};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const API_BIN: &str = env!("CARGO_BIN_EXE_phoenix-api");
const DB_PASSWORD: &str = "correct-horse-battery-staple";

/// A throwaway PostgreSQL server listening on 127.0.0.1 and a unix socket in
/// its own temporary directory. Dropping it stops the server.
struct Postgres {
    dir: TempDir,
    port: u16,
    server: Option<Child>,
    /// The unprivileged user to run the server as when the tests run as root.
    run_as: Option<User>,
}

impl Postgres {
    /// Starts a fresh cluster, or returns `None` when PostgreSQL is not installed.
    fn start() -> Option<Self> {
        if !Path::new(PG_BIN).is_dir() {
            // Straight to stderr: libtest would swallow `println!` of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "skipping: PostgreSQL 15 is not installed ({PG_BIN} does not exist)"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("phoenix-pg-")
            .tempdir()
            .unwrap();
        let run_as = if geteuid().is_root() {
            // PostgreSQL refuses to run as root.
            let user = User::from_name("postgres")
                .unwrap()
                .expect("running as root needs the `postgres` system user");
            chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
            Some(user)
        } else {
            None
        };
        let mut postgres = Self {
            port: free_port(),
            dir,
            server: None,
            run_as,
        };
        let data = postgres.data_dir();
        let initdb = postgres
            .command("initdb")
            .arg("--pgdata")
            .arg(&data)
            .args(["--username=postgres", "--auth-local=trust"])
            .args([
                "--auth-host=scram-sha-256",
                "--no-locale",
                "--encoding=UTF8",
            ])
            .arg("--no-sync")
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        postgres.boot();
        Some(postgres)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the PostgreSQL binaries, as the right user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(Path::new(PG_BIN).join(program));
        command.env("LC_ALL", "C").current_dir(self.dir.path());
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }

    fn boot(&mut self) {
        let log = File::create(self.log_path()).unwrap();
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .arg("--host")
                .arg(self.dir.path())
                .arg("--port")
                .arg(self.port.to_string())
                .arg("--quiet")
                .status()
                .unwrap();
            if ready.success() {
                return;
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not become ready within 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs SQL as the superuser over the unix socket.
    fn psql(&self, sql: &str) {
        let output = self
            .command("psql")
            .arg("--host")
            .arg(self.dir.path())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--username=postgres", "--dbname=postgres", "--no-psqlrc"])
            .args(["--set=ON_ERROR_STOP=1", "--quiet", "--command", sql])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The role and database the API uses, as the appliance sets them up.
    fn create_phoenix_database(&self) {
        self.psql(&format!(
            "CREATE ROLE phoenix LOGIN PASSWORD '{DB_PASSWORD}'"
        ));
        self.psql("CREATE DATABASE phoenix OWNER phoenix");
    }

    /// The URL the API gets: TCP, no password.
    fn url(&self) -> String {
        format!("postgres://phoenix@127.0.0.1:{}/phoenix", self.port)
    }

    async fn connect_as_phoenix(&self) -> PgConnection {
        let url = format!(
            "postgres://phoenix:{DB_PASSWORD}@127.0.0.1:{}/phoenix",
            self.port
        );
        PgConnection::connect(&url).await.unwrap()
    }

    /// Fast shutdown (SIGINT), then SIGKILL if it takes more than 15 s.
    fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pid = Pid::from_raw(server.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `phoenix-api` process with its stderr captured to a file.
/// Dropping it kills the process.
struct Api {
    process: Child,
    stderr: PathBuf,
    listen: SocketAddr,
}

impl Api {
    /// Starts the binary with a clean environment and the given flags.
    fn spawn(dir: &Path, name: &str, flags: &[&str]) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stderr = dir.join(format!("{name}.stderr"));
        let process = Command::new(API_BIN)
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--listen")
            .arg(listen.to_string())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            process,
            stderr,
            listen,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `url` answers at all (any status), failing if the process exits.
    async fn wait_until_serving(&mut self, client: &reqwest::Client, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(url).send().await.is_ok() {
                return;
            }
            if let Some(status) = self.process.try_wait().unwrap() {
                panic!("phoenix-api exited with {status}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "phoenix-api did not serve {url} within 30s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "phoenix-api did not exit within {limit:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.process.id() as i32), signal).unwrap();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, String, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The whole life of the service against one database: refusing a wrong
/// password, serving over HTTP, the append-only audit log, a clean SIGTERM,
/// a second start over HTTPS on the already migrated schema, failing health
/// once the database is gone, and a clean SIGTERM again.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_against_real_postgres() {
    let Some(mut postgres) = Postgres::start() else {
        return;
    };
    postgres.create_phoenix_database();
    let work = tempfile::tempdir().unwrap();
    let password_file = work.path().join("db-password");
    fs::write(&password_file, format!("{DB_PASSWORD}\n")).unwrap();
    let url = postgres.url();
    let database_flags = [
        "--database-url",
        url.as_str(),
        "--database-password-file",
        password_file.to_str().unwrap(),
        "--database-connect-timeout",
        "30s",
    ];

    // A wrong password is not worth waiting 30 s for.
    let wrong_password_file = work.path().join("wrong-password");
    fs::write(&wrong_password_file, "not-the-password").unwrap();
    let mut refused = Api::spawn(
        work.path(),
        "wrong-password",
        &[
            "--database-url",
            &url,
            "--database-password-file",
            wrong_password_file.to_str().unwrap(),
            "--database-connect-timeout",
            "30s",
        ],
    );
    let status = refused.wait_for_exit(Duration::from_secs(15)).await;
    let stderr = refused.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(stderr.contains("--database-password-file"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    // First start: plain HTTP, migrations applied.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut api = Api::spawn(work.path(), "first", &database_flags);
    let base = format!("http://{}", api.listen);
    api.wait_until_serving(&client, &format!("{base}/health"))
        .await;
    assert!(
        api.stderr().contains("serving plain HTTP"),
        "{}",
        api.stderr()
    );

    let (status, content_type, health) = get_json(&client, &format!("{base}/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(content_type, "application/health+json");
    assert_eq!(health["status"], "pass", "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let check = &health["checks"]["postgres:connections"][0];
    assert_eq!(check["status"], "pass", "{health}");
    assert_eq!(check["observedUnit"], "ms");
    assert!(check["observedValue"].as_f64().unwrap() >= 0.0, "{health}");
    assert!(check["time"].as_str().unwrap().ends_with('Z'), "{health}");

    let (status, content_type, problem) = get_json(&client, &format!("{base}/no/such/thing")).await;
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");

    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains(
            r#"phoenix_api_http_request_duration_seconds_count{method="GET",route="/health",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nphoenix_api_database_up 1\n"),
        "{metrics}"
    );

    // The database itself keeps the audit log append-only.
    let mut db = postgres.connect_as_phoenix().await;
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, source_ip, outcome, details) \
         VALUES ('admin', 'user.create', 'user:alice', '192.0.2.7', 'success', '{\"role\":\"viewer\"}')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    for statement in [
        "UPDATE audit_log SET outcome = 'failure'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE false",
        "TRUNCATE audit_log",
    ] {
        let error = sqlx::query(statement).execute(&mut db).await.unwrap_err();
        assert!(
            error.to_string().contains("audit_log is append-only"),
            "{statement}: {error}"
        );
    }
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit_log WHERE outcome = 'success'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(rows, 1);
    db.close().await.unwrap();

    api.signal(Signal::SIGTERM);
    let status = api.wait_for_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", api.stderr());
    assert!(
        api.stderr().contains("shutdown requested"),
        "{}",
        api.stderr()
    );
    drop(api);

    // Second start, over HTTPS: the migrations are already applied.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = work.path().join("cert.pem");
    let key_path = work.path().join("key.pem");
    fs::write(&cert_path, certified.cert.pem()).unwrap();
    fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let mut flags = database_flags.to_vec();
    flags.extend([
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let mut api = Api::spawn(work.path(), "second", &flags);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", api.listen)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", api.listen.port());
    api.wait_until_serving(&client, &format!("{base}/health"))
        .await;
    assert!(api.stderr().contains("serving HTTPS"), "{}", api.stderr());
    let (status, _, health) = get_json(&client, &format!("{base}/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "pass");

    let mut db = postgres.connect_as_phoenix().await;
    let (migrations,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count() as i64;
    assert_eq!(migrations, files, "each migration applied exactly once");
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_log")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the audit entry survives a restart");
    db.close().await.unwrap();

    // The database goes away: health fails, the service keeps answering.
    postgres.stop();
    let (status, content_type, health) = get_json(&client, &format!("{base}/health")).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(content_type, "application/health+json");
    assert_eq!(health["status"], "fail");
    let check = &health["checks"]["postgres:connections"][0];
    assert_eq!(check["status"], "fail", "{health}");
    assert!(
        check["output"]
            .as_str()
            .is_some_and(|output| !output.is_empty()),
        "{health}"
    );
    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("\nphoenix_api_database_up 0\n"),
        "{metrics}"
    );

    api.signal(Signal::SIGTERM);
    let status = api.wait_for_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", api.stderr());
}

/// Nothing listens on the port: the service retries for the connect timeout,
/// then exits 1 naming the address and what to check.
#[tokio::test]
async fn unreachable_database_exits_1_after_the_connect_timeout() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://phoenix@127.0.0.1:{port}/phoenix");
    let started = Instant::now();
    let mut api = Api::spawn(
        work.path(),
        "unreachable",
        &["--database-url", &url, "--database-connect-timeout", "2s"],
    );
    let status = api.wait_for_exit(Duration::from_secs(20)).await;
    let elapsed = started.elapsed();
    let stderr = api.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        elapsed >= Duration::from_secs(2),
        "gave up after {elapsed:?}"
    );
    assert!(
        stderr.contains(&format!(
            "could not connect to PostgreSQL at phoenix@127.0.0.1:{port}/phoenix within 2s"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that PostgreSQL is running"),
        "{stderr}"
    );
    assert!(
        stderr.contains("PostgreSQL is not reachable yet"),
        "{stderr}"
    );
}

/// A SIGTERM while still waiting for the database is a clean stop, not an error.
#[tokio::test]
async fn sigterm_while_waiting_for_the_database_exits_0() {
    let work = tempfile::tempdir().unwrap();
    let url = format!("postgres://phoenix@127.0.0.1:{}/phoenix", free_port());
    let mut api = Api::spawn(
        work.path(),
        "waiting",
        &["--database-url", &url, "--database-connect-timeout", "60s"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api.stderr().contains("PostgreSQL is not reachable yet") {
        assert!(Instant::now() < deadline, "{}", api.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.signal(Signal::SIGTERM);
    let status = api.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", api.stderr());
}

/// Invalid configuration fails at once with exit status 1 and says what to do.
#[tokio::test]
async fn a_password_in_the_database_url_is_refused_at_once() {
    let work = tempfile::tempdir().unwrap();
    let mut api = Api::spawn(
        work.path(),
        "password-in-url",
        &[
            "--database-url",
            "postgres://phoenix:hunter2@127.0.0.1:5432/phoenix",
        ],
    );
    let status = api.wait_for_exit(Duration::from_secs(10)).await;
    let stderr = api.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--database-password-file"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Migration 0006 makes the audit log monthly partitions: entries written
/// before it move over with their ids, every partition refuses UPDATE,
/// DELETE and TRUNCATE like the log itself, and the housekeeping creates
/// months ahead and drops only whole months past the retention, auditing
/// each drop, one replica at a time.
#[tokio::test]
async fn audit_log_partitions_keep_old_entries_refuse_changes_and_expire_by_retention() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    postgres.create_phoenix_database();
    let url = format!(
        "postgres://phoenix:{DB_PASSWORD}@127.0.0.1:{}/phoenix",
        postgres.port
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();

    // The schema before partitioning, with an entry from long ago and one from now.
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, outcome) VALUES \
         ('2020-01-15T12:00:00Z', 'user:admin', 'users.create', 'user:old', 'success'), \
         (now(), 'user:admin', 'users.create', 'user:new', 'success')",
    )
    .execute(&pool)
    .await
    .unwrap();
    phoenix_api::db::migrate(&pool).await.unwrap();

    let moved: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, target, tableoid::regclass::text, count FROM audit_log ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(
        (
            moved[0].0,
            moved[0].1.as_str(),
            moved[0].2.as_str(),
            moved[0].3
        ),
        (1, "user:old", "audit_log_p202001", 1)
    );
    assert_eq!((moved[1].0, moved[1].1.as_str()), (2, "user:new"));
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO audit_log (actor, action, target, outcome) \
         VALUES ('system', 'test', '-', 'success') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(next, 3, "the ids carry on");

    for statement in [
        "UPDATE audit_log SET outcome = 'failure'",
        "DELETE FROM audit_log WHERE false",
        "TRUNCATE audit_log",
        "UPDATE audit_log_p202001 SET outcome = 'failure'",
        "DELETE FROM audit_log_p202001",
        "TRUNCATE audit_log_p202001",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(
            error.to_string().contains("audit_log is append-only"),
            "{statement}: {error}"
        );
    }

    // Another replica housekeeping: this one leaves it alone.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('phoenix.audit.housekeeping'))")
        .execute(&mut *other)
        .await
        .unwrap();
    let skipped = phoenix_api::audit::retention::housekeeping(&pool)
        .await
        .unwrap();
    assert!(skipped.is_none(), "{skipped:?}");
    other.rollback().await.unwrap();

    // The default 13 months: 2020-01 goes, the month of the newer entry stays.
    let done = phoenix_api::audit::retention::housekeeping(&pool)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(done.dropped, ["audit_log_p202001"]);
    let (left, months_ahead): (Vec<String>, i64) = (
        sqlx::query_scalar("SELECT target FROM audit_log WHERE action = 'users.create'")
            .fetch_all(&pool)
            .await
            .unwrap(),
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_log'::regclass \
             AND inhrelid::regclass::text > 'audit_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')",
        )
        .fetch_one(&pool)
        .await
        .unwrap(),
    );
    assert_eq!(left, ["user:new"]);
    assert_eq!(months_ahead, 3, "three months are made ahead");
    let drop: (String, String, Value) = sqlx::query_as(
        "SELECT actor, target, details FROM audit_log WHERE action = 'audit.partition.drop'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(drop.0, "system:housekeeping");
    assert_eq!(drop.1, "audit_log_p202001");
    assert_eq!(drop.2["rows"], 1);
    assert_eq!(drop.2["month"], "2020-01");
    assert_eq!(drop.2["retention_months"], 13);
    // Nothing more to drop the second time.
    let again = phoenix_api::audit::retention::housekeeping(&pool)
        .await
        .unwrap()
        .unwrap();
    assert!(again.dropped.is_empty(), "{again:?}");
    pool.close().await;
}
