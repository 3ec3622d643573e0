//! The PostgreSQL connection pool: reaching the database at startup, applying
//! the embedded migrations, and the liveness ping used by `/health`.

use std::time::Duration;

use anyhow::{Context, anyhow};
use sqlx::{ConnectOptions, Connection, PgPool, migrate::Migrator, postgres::PgPoolOptions};
use tokio::time::{Instant, sleep, timeout};
use tracing::{info, warn};

use phoenix_backoff::Backoff;

use crate::config::DatabaseConfig;

/// How patiently startup retries: quickly at first (postgres usually comes up
/// within a second), then at most every 5 s.
const CONNECT_BACKOFF: Backoff =
    match Backoff::try_new(Duration::from_millis(250), Duration::from_secs(5), 0.2) {
        Ok(backoff) => backoff,
        Err(_) => panic!("invalid database connect backoff"),
    };

/// Longest a single connection attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a request waits for a pooled connection once the service runs.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until PostgreSQL accepts a connection, retrying with backoff for at
/// most `config.connect_timeout`, then returns a pool. Fails at once when the
/// server answers with an error that waiting cannot fix (wrong password, no
/// such database).
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let target = config.target();
    let deadline = Instant::now() + config.connect_timeout;
    let mut attempts: u32 = 0;
    let last_error = loop {
        attempts += 1;
        let attempt_timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(ATTEMPT_TIMEOUT);
        let error = match timeout(attempt_timeout, config.connect_options.connect()).await {
            Ok(Ok(probe)) => {
                // The probe only proves the server is up; the pool opens its own.
                if let Err(error) = probe.close().await {
                    warn!(%error, "closing the first database connection failed");
                }
                break None;
            }
            Ok(Err(error)) if tls_failure(&error) => {
                return Err(anyhow!(error).context(format!(
                    "TLS with PostgreSQL at {target} failed: the server's certificate must be \
                     signed by the CA in sslrootcert ([postgres] ca_file) and name the host in \
                     --database-url"
                )));
            }
            Ok(Err(error)) if needs_operator(&error) => {
                return Err(anyhow!(error).context(format!(
                    "PostgreSQL at {target} refused the connection; check the user and \
                     database in --database-url, the password in --database-password-file, \
                     and that pg_hba.conf admits this client"
                )));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(attempt_timeout)
            ),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break Some(error);
        }
        let delay = CONNECT_BACKOFF.delay(attempts - 1).min(remaining);
        warn!(
            database = %target,
            attempt = attempts,
            retry_in_ms = delay.as_millis() as u64,
            %error,
            "PostgreSQL is not reachable yet"
        );
        sleep(delay).await;
    };
    if let Some(error) = last_error {
        anyhow::bail!(
            "could not connect to PostgreSQL at {target} within {} ({attempts} attempts; \
             last error: {error}); check that PostgreSQL is running and listening there \
             and that --database-url names the right host and port, or allow a slow \
             start more time with --database-connect-timeout",
            humantime::format_duration(config.connect_timeout)
        );
    }
    info!(database = %target, attempts, "connected to PostgreSQL");
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(config.connect_options.clone()))
}

/// The server's certificate did not verify (or TLS failed otherwise):
/// sqlx reports rustls's verdict as an I/O error, which waiting cannot fix.
fn tls_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io.get_ref().is_some_and(|inner| {
            inner
                .downcast_ref::<tokio_rustls::rustls::Error>()
                .is_some()
        }),
        _ => false,
    }
}

/// Errors a retry cannot fix: the server is up but says no.
fn needs_operator(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => matches!(
            error.code().as_deref(),
            // invalid_authorization_specification, invalid_password,
            // invalid_catalog_name (no such database)
            Some("28000" | "28P01" | "3D000")
        ),
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => true,
        _ => false,
    }
}

/// Applies every migration not yet applied. Migrations are forward-only and
/// run under PostgreSQL's advisory lock, so replicas starting together are safe.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // The schema, embedded at compile time from `api/migrations`.
    let mut migrator: Migrator = sqlx::migrate!();
    // A binary rolled back to an older release, or a replica not yet upgraded,
    // must still start against a schema that a newer release has migrated:
    // migrations only ever add, so the older code keeps working.
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("applying the database migrations failed; the schema was left as it was")?;
    let latest = migrator.iter().map(|migration| migration.version).max();
    info!(schema_version = latest, "database schema is up to date");
    Ok(())
}

/// Round-trips `SELECT 1`, returning how long it took.
pub async fn ping(pool: &PgPool, limit: Duration) -> Result<Duration, PingError> {
    let started = Instant::now();
    match timeout(limit, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(error)) => Err(PingError::Failed {
            elapsed: started.elapsed(),
            error: error.to_string(),
        }),
        Err(_) => Err(PingError::TimedOut { limit }),
    }
}

/// Why a ping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("no answer from PostgreSQL within {}", humantime::format_duration(*limit))]
    TimedOut { limit: Duration },
    #[error("{error}")]
    Failed { elapsed: Duration, error: String },
}

impl PingError {
    /// Time spent before the ping gave up.
    pub fn elapsed(&self) -> Duration {
        match self {
            Self::TimedOut { limit } => *limit,
            Self::Failed { elapsed, .. } => *elapsed,
        }
    }
}
