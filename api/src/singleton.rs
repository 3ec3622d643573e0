//! Work that one replica does for all: the experiment driver, the sweep of
//! expired task leases, the forgetting of ended series groups, the audit
//! log's partitions and the shared login counts. Several replicas may serve
//! one database (docs/scaling.md, phase 3); the one that holds a PostgreSQL
//! advisory lock does this work, the others stand by.
//!
//! The lock is taken by a connection of its own, outside the pool, and held
//! as long as that session lives. The holder pings it every
//! [`TRY_INTERVAL`]; the session has an `idle_session_timeout` of
//! [`SESSION_TIMEOUT`], so when the holder dies or is cut off, even without
//! closing its socket, PostgreSQL ends the session and frees the lock. The
//! others try every [`TRY_INTERVAL`]: one takes over within
//! `SESSION_TIMEOUT + TRY_INTERVAL` at worst, within [`TRY_INTERVAL`] when the
//! holder's process died (its socket closed).
//!
//! The work itself stays safe to run twice (experiments are claimed per
//! row, tasks with `FOR UPDATE SKIP LOCKED`): the lock keeps it from being
//! done N times, not from being done wrong.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// The advisory lock's key: "phoenix" and 1.
pub const LOCK_KEY: i64 = 0x7068_6f65_6e69_7801;

/// How often a standby tries the lock, and the holder pings its session.
pub const TRY_INTERVAL: Duration = Duration::from_secs(2);

/// How long the holder's session may stay silent before PostgreSQL ends it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(8);

/// Whether this replica holds the lock now.
#[derive(Debug, Clone)]
pub struct Leader(watch::Receiver<bool>);

impl Leader {
    /// Holds it, for good: one process alone (tests, `phoenix-bench`).
    pub fn always() -> Leader {
        // A receiver keeps the last value after its sender is gone.
        let (_, rx) = watch::channel(true);
        Leader(rx)
    }

    pub fn holds(&self) -> bool {
        *self.0.borrow()
    }
}

/// Starts trying for the lock; the [`Leader`] follows it.
pub fn spawn(options: PgConnectOptions, shutdown: Shutdown) -> Leader {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            () = run(options, &tx) => {}
            () = shutdown.requested() => {}
        }
        // Dropping the connection (inside `run`) frees the lock at once for
        // the next replica.
        let _ = tx.send(false);
    });
    Leader(rx)
}

async fn run(options: PgConnectOptions, holds: &watch::Sender<bool>) {
    let options = options.application_name("phoenix-api singleton").options([(
        "idle_session_timeout",
        format!("{}ms", SESSION_TIMEOUT.as_millis()),
    )]);
    loop {
        match options.connect().await {
            Ok(mut conn) => {
                hold_while_possible(&mut conn, holds).await;
                let _ = conn.close().await;
            }
            Err(error) => {
                warn!(%error, "cannot connect for the singleton lock; trying again");
            }
        }
        if *holds.borrow() {
            warn!("lost the singleton lock: the driver and the sweeps stop here");
            let _ = holds.send(false);
        }
        tokio::time::sleep(TRY_INTERVAL).await;
    }
}

/// Tries the lock every [`TRY_INTERVAL`] on `conn`; once held, pings the
/// session until it fails. Returns when the connection is of no more use.
async fn hold_while_possible(conn: &mut PgConnection, holds: &watch::Sender<bool>) {
    loop {
        let attempt = tokio::time::timeout(
            TRY_INTERVAL * 2,
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn),
        )
        .await;
        match attempt {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => tokio::time::sleep(TRY_INTERVAL).await,
            Ok(Err(error)) => {
                warn!(%error, "trying the singleton lock failed");
                return;
            }
            Err(_) => {
                warn!("trying the singleton lock took too long");
                return;
            }
        }
    }
    info!("holds the singleton lock: runs the experiment driver and the sweeps");
    let _ = holds.send(true);
    loop {
        tokio::time::sleep(TRY_INTERVAL).await;
        let ping = tokio::time::timeout(TRY_INTERVAL * 2, conn.ping()).await;
        if !matches!(ping, Ok(Ok(()))) {
            return;
        }
    }
}
