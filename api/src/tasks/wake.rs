//! Waking long polls when a task is queued for their agent.
//!
//! Whoever queues a task (a new task, a failed attempt or an expired lease
//! put back) sends `NOTIFY phoenix_tasks, '<agent id>'` in the same
//! transaction, so the notification is delivered exactly when the task
//! becomes visible. Every API process listens on one connection and wakes
//! the polls it holds for that agent; a task created through one replica
//! wakes a poll held by another. Notifications can be lost (the listening
//! connection drops, and is made again with backoff from 250 ms to 10 s);
//! polls therefore also look again every 5 s, and everyone is woken after a
//! reconnect.
//!
//! The registry is per process (a `static`): it holds only wake-ups, never
//! state that a request depends on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use phoenix_backoff::Backoff;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::shutdown::Shutdown;

/// The notification channel; the payload is the agent id.
pub const CHANNEL: &str = "phoenix_tasks";

const RECONNECT_BACKOFF: Backoff =
    match Backoff::try_new(Duration::from_millis(250), Duration::from_secs(10), 0.2) {
        Ok(backoff) => backoff,
        Err(_) => panic!("invalid listener reconnect backoff"),
    };

#[derive(Default)]
struct Waiters {
    agents: Mutex<HashMap<Uuid, Arc<Notify>>>,
    closed: AtomicBool,
}

static WAITERS: LazyLock<Waiters> = LazyLock::new(Waiters::default);

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Notify>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A poll's interest in one agent's tasks; dropping it ends the interest.
pub struct Subscription {
    agent: Uuid,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Resolves at the next wake-up of this agent (enable it before looking
    /// for tasks, so that a wake-up in between is not missed).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut agents = WAITERS.lock();
        // The map's reference and ours: nobody else waits for this agent.
        if Arc::strong_count(&self.notify) == 2 {
            agents.remove(&self.agent);
        }
    }
}

pub fn subscribe(agent: Uuid) -> Subscription {
    let notify = WAITERS.lock().entry(agent).or_default().clone();
    Subscription { agent, notify }
}

/// Wakes this process's polls for `agent`.
pub fn wake(agent: Uuid) {
    if let Some(notify) = WAITERS.lock().get(&agent) {
        notify.notify_waiters();
    }
}

fn wake_all() {
    for notify in WAITERS.lock().values() {
        notify.notify_waiters();
    }
}

/// Whether the service is shutting down: polls return at once.
pub fn is_closed() -> bool {
    WAITERS.closed.load(Ordering::Relaxed)
}

/// Queues a wake-up of `agent`'s polls in every API process, delivered when
/// the transaction on `conn` commits.
pub async fn notify(conn: &mut PgConnection, agent: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(agent.to_string())
        .execute(conn)
        .await
        .map(drop)
}

/// Listens for notifications until shutdown, reconnecting with backoff;
/// at shutdown, ends every poll of this process.
pub async fn listen(pool: PgPool, shutdown: Shutdown) {
    tokio::select! {
        () = listen_forever(pool) => {}
        () = shutdown.requested() => {}
    }
    WAITERS.closed.store(true, Ordering::Relaxed);
    wake_all();
}

async fn listen_forever(pool: PgPool) {
    let mut failures: u32 = 0;
    loop {
        let error = listen_until_error(&pool, &mut failures).await;
        if matches!(error, sqlx::Error::PoolClosed) {
            return;
        }
        let delay = RECONNECT_BACKOFF.delay(failures);
        failures = failures.saturating_add(1);
        warn!(
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "task notifications interrupted; polls fall back to looking every few seconds"
        );
        wake_all();
        tokio::time::sleep(delay).await;
    }
}

/// One listening connection, for as long as it works.
async fn listen_until_error(pool: &PgPool, failures: &mut u32) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(CHANNEL).await {
        return e;
    }
    *failures = 0;
    info!(channel = CHANNEL, "listening for queued tasks");
    // Anything queued while nobody listened is found by looking again.
    wake_all();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse::<Uuid>() {
                Ok(agent) => wake(agent),
                Err(_) => warn!(
                    payload = notification.payload(),
                    "ignoring a malformed task notification"
                ),
            },
            // The connection was lost and has been re-established.
            Ok(None) => wake_all(),
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(agent: Uuid) -> bool {
        WAITERS.lock().contains_key(&agent)
    }

    #[tokio::test]
    async fn a_wake_reaches_the_polls_of_its_agent_only() {
        let (agent, other) = (Uuid::new_v4(), Uuid::new_v4());
        let first = subscribe(agent);
        let second = subscribe(agent);
        let bystander = subscribe(other);
        let woken = first.notified();
        let also_woken = second.notified();
        let not_woken = bystander.notified();
        tokio::pin!(woken, also_woken, not_woken);
        woken.as_mut().enable();
        also_woken.as_mut().enable();
        not_woken.as_mut().enable();
        wake(agent);
        let limit = Duration::from_secs(1);
        tokio::time::timeout(limit, woken).await.expect("woken");
        tokio::time::timeout(limit, also_woken)
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), not_woken)
                .await
                .is_err()
        );
    }

    #[test]
    fn the_registry_forgets_an_agent_when_its_last_poll_ends() {
        let agent = Uuid::new_v4();
        let first = subscribe(agent);
        let second = subscribe(agent);
        drop(first);
        assert!(registered(agent));
        drop(second);
        assert!(!registered(agent));
        // Waking an agent nobody waits for is a no-op.
        wake(agent);
        assert!(!registered(agent));
    }
}
