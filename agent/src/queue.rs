//! The durable local queue: a SQLite database (WAL mode, synchronous FULL)
//! in the state folder.
//!
//! - `batches`: every remote-write batch, written before it is sent and
//!   deleted only when its destination acknowledged (or refused) it.
//! - `results`: every task result, written before it is reported and
//!   deleted only when the API answered it.
//! - `tasks`: tasks received and not yet finished, so a restart resumes
//!   them or reports them failed — never drops them.
//! - `experiments`, `settings`: what the agent is running (experiments and
//!   the live pipeline), so a restart carries on.
//! - `counters`: evictions and refusals, kept across restarts. A count
//!   that cannot be written (the disk is full) is held in memory, shown on
//!   /metrics, and written with the next one that can be.
//!
//! Bounds: batches are evicted oldest first when their bytes exceed
//! `max_bytes` or they are older than `max_age`, and when the disk is full
//! (then the write-ahead log is checkpointed, to give the room back);
//! each eviction is counted (`evicted_batches`, `evicted_samples`) and
//! logged. Results and tasks are small and never evicted.
//!
//! *Invariant:* a row is deleted only after its destination answered it,
//! or by a counted eviction.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::config::QueueBounds;

/// Where a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The control plane's write route.
    Api,
    /// The external remote-write endpoint of the agent's TOML.
    External,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Api => "api",
            Destination::External => "external",
        }
    }
}

/// A batch to write: one stream of one collection.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub destination: Destination,
    pub experiment: String,
    pub variant: String,
    pub samples: i64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub id: i64,
    pub experiment: String,
    pub variant: String,
    pub collected_at_ms: i64,
    pub samples: i64,
    /// The snappy-compressed remote-write request.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingResult {
    pub result_id: uuid::Uuid,
    pub task_id: uuid::Uuid,
    pub outcome: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// What [`Queue::receive_task`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Not seen before: recorded, to be run.
    New,
    /// Recorded before and without a result: the run that took it failed
    /// before storing one (or it is being resumed), so it is run again.
    Unfinished,
    /// Finished: its result was stored; it is not run again.
    Finished,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingTask {
    pub task_id: uuid::Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub received_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub batches: i64,
    pub bytes: i64,
    pub samples: i64,
    pub oldest_collected_at_ms: Option<i64>,
    pub results: i64,
    pub tasks: i64,
    pub evicted_batches: i64,
    pub evicted_samples: i64,
    pub rejected_batches: i64,
}

#[derive(Clone)]
pub struct Queue {
    pool: SqlitePool,
    bounds: QueueBounds,
    /// Counts that could not be written (the disk was full), added to the
    /// stored ones at the next write that succeeds and shown meanwhile.
    unsaved: Arc<std::sync::Mutex<BTreeMap<String, i64>>>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        collected_at_ms INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        body BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS batches_by_destination ON batches (destination, id)",
    "CREATE TABLE IF NOT EXISTS results (
        result_id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL UNIQUE,
        outcome TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS done_tasks (
        task_id TEXT PRIMARY KEY,
        finished_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS experiments (
        experiment_id TEXT PRIMARY KEY,
        baseline TEXT NOT NULL,
        candidate TEXT NOT NULL,
        until_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
];

/// How long finished task ids are remembered, so a task delivered again
/// (its lease ran out while the answer was lost) is not run twice.
const DONE_TASKS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

fn is_disk_full(e: &sqlx::Error) -> bool {
    // SQLITE_FULL (13) and SQLITE_IOERR (10) with ENOSPC.
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("13"))
                || db.message().contains("database or disk is full")
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(28),
        _ => false,
    }
}

impl Queue {
    /// Opens (creating) `<dir>/queue.db`.
    pub async fn open(dir: &Path, bounds: QueueBounds) -> anyhow::Result<Queue> {
        let path = dir.join("queue.db");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the queue {}: {e}", path.display()))?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(Queue {
            pool,
            bounds,
            unsaved: Arc::default(),
        })
    }

    /// Opens `<dir>/queue.db` read-only, for `phoenix-agent status`.
    pub async fn open_read_only(dir: &Path) -> anyhow::Result<Queue> {
        let path = dir.join("queue.db");
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist: the agent has not run with this state folder",
                path.display()
            );
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Queue {
            pool,
            bounds: QueueBounds {
                max_bytes: u64::MAX,
                max_age: Duration::MAX,
            },
            unsaved: Arc::default(),
        })
    }

    /// Writes a batch ([`Queue::push_all`] with one).
    pub async fn push(
        &self,
        destination: Destination,
        experiment: &str,
        variant: &str,
        collected_at_ms: i64,
        samples: i64,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let batch = NewBatch {
            destination,
            experiment: experiment.to_owned(),
            variant: variant.to_owned(),
            samples,
            body: body.to_vec(),
        };
        self.push_all(collected_at_ms, std::slice::from_ref(&batch))
            .await
    }

    /// Writes one collection's batches in one transaction (one sync of the
    /// disk, and all or none of them); when the disk is full, evicts the
    /// oldest batches until they fit, or drops these (counted) if nothing
    /// is left to evict. Then applies the bounds.
    pub async fn push_all(&self, collected_at_ms: i64, batches: &[NewBatch]) -> anyhow::Result<()> {
        loop {
            match self.insert_all(collected_at_ms, batches).await {
                Ok(()) => break,
                Err(e) if is_disk_full(&e) => {
                    let evicted = self.evict_oldest(4, "the disk is full").await?;
                    // The write-ahead log only grows until it is checkpointed:
                    // give the room the eviction freed back to the next write.
                    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&self.pool)
                        .await;
                    if evicted == 0 {
                        let samples = batches.iter().map(|b| b.samples).sum::<i64>();
                        self.count_eviction(batches.len() as i64, samples).await;
                        tracing::warn!(
                            batches = batches.len(),
                            samples,
                            "the disk is full and the queue is empty: this collection is dropped (counted as evicted)"
                        );
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.enforce_bounds(collected_at_ms).await
    }

    /// One statement, so one implicit transaction: a failure (a full disk)
    /// leaves no transaction open to hold the write lock.
    async fn insert_all(&self, collected_at_ms: i64, batches: &[NewBatch]) -> sqlx::Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO batches (destination, experiment, variant, collected_at_ms, samples, body) ",
        );
        insert.push_values(batches, |mut row, b| {
            row.push_bind(b.destination.as_str())
                .push_bind(&b.experiment)
                .push_bind(&b.variant)
                .push_bind(collected_at_ms)
                .push_bind(b.samples)
                .push_bind(&b.body);
        });
        insert.build().execute(&self.pool).await.map(drop)
    }

    /// Evicts batches older than `max_age` (relative to `now_ms`) and the
    /// oldest while the queue holds more than `max_bytes`.
    pub async fn enforce_bounds(&self, now_ms: i64) -> anyhow::Result<()> {
        let horizon = now_ms - self.bounds.max_age.as_millis() as i64;
        let old: (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(samples), 0) FROM batches WHERE collected_at_ms < ?",
        )
        .bind(horizon)
        .fetch_one(&self.pool)
        .await?;
        if old.0 > 0 {
            sqlx::query("DELETE FROM batches WHERE collected_at_ms < ?")
                .bind(horizon)
                .execute(&self.pool)
                .await?;
            self.count_eviction(old.0, old.1).await;
            tracing::warn!(
                batches = old.0,
                samples = old.1,
                max_age = %humantime::format_duration(self.bounds.max_age),
                "evicted queued batches older than the queue's max_age"
            );
        }
        loop {
            let bytes: i64 =
                sqlx::query_scalar("SELECT coalesce(sum(length(body)), 0) FROM batches")
                    .fetch_one(&self.pool)
                    .await?;
            if bytes as u64 <= self.bounds.max_bytes {
                return Ok(());
            }
            if self
                .evict_oldest(16, "the queue is over its max_bytes")
                .await?
                == 0
            {
                return Ok(());
            }
        }
    }

    /// Deletes the `n` oldest batches, counted; returns how many went.
    async fn evict_oldest(&self, n: i64, why: &str) -> anyhow::Result<i64> {
        let gone: Vec<(i64, i64)> = sqlx::query_as(
            "DELETE FROM batches WHERE id IN (SELECT id FROM batches ORDER BY collected_at_ms, id LIMIT ?) \
             RETURNING id, samples",
        )
        .bind(n)
        .fetch_all(&self.pool)
        .await?;
        let samples = gone.iter().map(|(_, s)| s).sum::<i64>();
        if !gone.is_empty() {
            self.count_eviction(gone.len() as i64, samples).await;
            tracing::warn!(
                batches = gone.len(),
                samples,
                "evicted the oldest queued batches: {why}"
            );
        }
        Ok(gone.len() as i64)
    }

    async fn count_eviction(&self, batches: i64, samples: i64) {
        // Counting must not fail the eviction that made room for it.
        let _ = self.add_counter("evicted_batches", batches).await;
        let _ = self.add_counter("evicted_samples", samples).await;
    }

    /// Adds to a stored counter. When it cannot be written (a full disk),
    /// the count is kept in memory, shown by [`Queue::stats`], and written
    /// with the next count that can be.
    pub async fn add_counter(&self, name: &str, by: i64) -> anyhow::Result<()> {
        let waiting = self.unsaved.lock().expect("counters").remove(name);
        let total = by + waiting.unwrap_or(0);
        let written = sqlx::query(
            "INSERT INTO counters (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        )
        .bind(name)
        .bind(total)
        .execute(&self.pool)
        .await;
        if let Err(e) = written {
            *self
                .unsaved
                .lock()
                .expect("counters")
                .entry(name.to_owned())
                .or_default() += total;
            return Err(e.into());
        }
        Ok(())
    }

    /// The oldest batches for `destination`, at most `n`.
    pub async fn oldest(&self, destination: Destination, n: i64) -> anyhow::Result<Vec<Batch>> {
        let rows = sqlx::query(
            "SELECT id, experiment, variant, collected_at_ms, samples, body FROM batches \
             WHERE destination = ? ORDER BY id LIMIT ?",
        )
        .bind(destination.as_str())
        .bind(n)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Batch {
                id: r.get("id"),
                experiment: r.get("experiment"),
                variant: r.get("variant"),
                collected_at_ms: r.get("collected_at_ms"),
                samples: r.get("samples"),
                body: r.get("body"),
            })
            .collect())
    }

    /// Deletes a batch its destination answered.
    pub async fn remove(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM batches WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a task as received, before anything is done for it, and says
    /// whether it is new, received before and unfinished (a run of it
    /// failed before storing its result), or finished.
    ///
    /// One statement writes first: a transaction that read before writing
    /// would fail at once (SQLITE_BUSY_SNAPSHOT) when a batch was written
    /// in between, whatever the busy timeout.
    pub async fn receive_task(&self, task: &PendingTask) -> anyhow::Result<Received> {
        let id = task.task_id.to_string();
        let inserted = sqlx::query(
            "INSERT INTO tasks (task_id, kind, payload, received_at_ms) \
             SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (SELECT 1 FROM done_tasks WHERE task_id = ?1) \
             ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(&id)
        .bind(&task.kind)
        .bind(task.payload.to_string())
        .bind(task.received_at_ms)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Received::New);
        }
        // A task moves from `tasks` to `done_tasks` in one transaction, so
        // it is in one of them.
        let unfinished: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tasks WHERE task_id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(if unfinished.is_some() {
            Received::Unfinished
        } else {
            Received::Finished
        })
    }

    /// Tasks received and not finished (after a restart: to resume).
    pub async fn pending_tasks(&self) -> anyhow::Result<Vec<PendingTask>> {
        let rows = sqlx::query(
            "SELECT task_id, kind, payload, received_at_ms FROM tasks ORDER BY received_at_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PendingTask {
                    task_id: r.get::<String, _>("task_id").parse()?,
                    kind: r.get("kind"),
                    payload: serde_json::from_str(r.get::<&str, _>("payload"))?,
                    received_at_ms: r.get("received_at_ms"),
                })
            })
            .collect()
    }

    /// Finishes a task: its result is stored and the task marked done, in
    /// one transaction, so a crash leaves either the task to resume or the
    /// result to report.
    pub async fn finish_task(&self, result: &PendingResult, now_ms: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO results (result_id, task_id, outcome, result, error, created_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(result.result_id.to_string())
        .bind(result.task_id.to_string())
        .bind(&result.outcome)
        .bind(result.result.as_ref().map(|v| v.to_string()))
        .bind(&result.error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tasks WHERE task_id = ?")
            .bind(result.task_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO done_tasks (task_id, finished_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(result.task_id.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM done_tasks WHERE finished_at_ms < ?")
            .bind(now_ms - DONE_TASKS_KEPT_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn results(&self) -> anyhow::Result<Vec<PendingResult>> {
        let rows = sqlx::query(
            "SELECT result_id, task_id, outcome, result, error FROM results ORDER BY created_at_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PendingResult {
                    result_id: r.get::<String, _>("result_id").parse()?,
                    task_id: r.get::<String, _>("task_id").parse()?,
                    outcome: r.get("outcome"),
                    result: r
                        .get::<Option<String>, _>("result")
                        .map(|s| serde_json::from_str(&s))
                        .transpose()?,
                    error: r.get("error"),
                })
            })
            .collect()
    }

    /// Deletes a result the API answered.
    pub async fn remove_result(&self, result_id: uuid::Uuid) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM results WHERE result_id = ?")
            .bind(result_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn put_experiment(
        &self,
        id: uuid::Uuid,
        baseline: &str,
        candidate: &str,
        until_ms: i64,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO experiments (experiment_id, baseline, candidate, until_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (experiment_id) DO UPDATE SET baseline = excluded.baseline, \
             candidate = excluded.candidate, until_ms = excluded.until_ms",
        )
        .bind(id.to_string())
        .bind(baseline)
        .bind(candidate)
        .bind(until_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_experiment(&self, id: uuid::Uuid) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM experiments WHERE experiment_id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Experiments to run: `(id, baseline JSON, candidate JSON, until)`.
    pub async fn experiments(&self) -> anyhow::Result<Vec<(uuid::Uuid, String, String, i64)>> {
        let rows =
            sqlx::query("SELECT experiment_id, baseline, candidate, until_ms FROM experiments")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.get::<String, _>("experiment_id").parse()?,
                    r.get("baseline"),
                    r.get("candidate"),
                    r.get("until_ms"),
                ))
            })
            .collect()
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let (batches, bytes, samples, oldest): (i64, i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(length(body)), 0), coalesce(sum(samples), 0), min(collected_at_ms) FROM batches",
        )
        .fetch_one(&self.pool)
        .await?;
        let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
            .fetch_one(&self.pool)
            .await?;
        let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
            .fetch_one(&self.pool)
            .await?;
        let counter = |name: &'static str| async move {
            let unsaved = self
                .unsaved
                .lock()
                .expect("counters")
                .get(name)
                .copied()
                .unwrap_or(0);
            sqlx::query_scalar::<_, i64>("SELECT value FROM counters WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map(|v| v.unwrap_or(0) + unsaved)
        };
        Ok(Stats {
            batches,
            bytes,
            samples,
            oldest_collected_at_ms: oldest,
            results,
            tasks,
            evicted_batches: counter("evicted_batches").await?,
            evicted_samples: counter("evicted_samples").await?,
            rejected_batches: counter("rejected_batches").await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(max_bytes: u64, max_age_secs: u64) -> QueueBounds {
        QueueBounds {
            max_bytes,
            max_age: Duration::from_secs(max_age_secs),
        }
    }

    #[tokio::test]
    async fn batches_leave_only_when_removed_or_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), bounds(1 << 20, 3600))
            .await
            .unwrap();
        for t in 0..3 {
            q.push(Destination::Api, "none", "none", 1_000_000 + t, 2, b"abc")
                .await
                .unwrap();
        }
        q.push(Destination::External, "none", "none", 1_000_000, 2, b"x")
            .await
            .unwrap();
        let api = q.oldest(Destination::Api, 10).await.unwrap();
        assert_eq!(
            api.iter().map(|b| b.collected_at_ms).collect::<Vec<_>>(),
            [1_000_000, 1_000_001, 1_000_002]
        );
        q.remove(api[0].id).await.unwrap();
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (stats.batches, stats.samples, stats.evicted_batches),
            (3, 6, 0)
        );

        // A reopened queue (a restart) holds the same batches.
        drop(q);
        let q = Queue::open(dir.path(), bounds(1 << 20, 3600))
            .await
            .unwrap();
        assert_eq!(q.stats().await.unwrap().batches, 3);
    }

    /// A queue whose database cannot grow past `pages` pages: SQLite
    /// answers SQLITE_FULL as it does for a full disk.
    async fn capped(dir: &Path, pages: u32) -> Queue {
        let q = Queue::open(dir, bounds(1 << 30, 3600)).await.unwrap();
        let options =
            SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.join("queue.db").display()))
                .unwrap()
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .pragma("max_page_count", pages.to_string());
        Queue {
            pool: SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .unwrap(),
            ..q
        }
    }

    /// A task received and not finished.
    async fn received_task(q: &Queue) -> PendingTask {
        let task = PendingTask {
            task_id: uuid::Uuid::new_v4(),
            kind: "apply_pipeline".into(),
            payload: serde_json::json!({}),
            received_at_ms: 1,
        };
        assert_eq!(q.receive_task(&task).await.unwrap(), Received::New);
        task
    }

    /// A result of `task` padded to about `pad` bytes.
    fn result_of(task: &PendingTask, pad: usize) -> PendingResult {
        PendingResult {
            result_id: uuid::Uuid::new_v4(),
            task_id: task.task_id,
            outcome: "succeeded".into(),
            result: Some(serde_json::json!({"pad": "x".repeat(pad)})),
            error: None,
        }
    }

    /// With room again, `result` and then a batch are stored without
    /// waiting for a lock, and the task is finished.
    async fn stored_at_once(q: &Queue, result: &PendingResult, now_ms: i64) {
        let started = std::time::Instant::now();
        q.finish_task(result, now_ms).await.unwrap();
        q.push(Destination::Api, "none", "none", now_ms + 1, 1, b"x")
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} for a lock",
            started.elapsed()
        );
        assert_eq!(q.results().await.unwrap().len(), 1);
        assert!(q.pending_tasks().await.unwrap().is_empty());
    }

    /// A full disk fails a task's result; once there is room the next try
    /// succeeds at once: no failed write leaves a transaction holding the
    /// database's write lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_the_full_disk_failed_holds_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let q = capped(dir.path(), 64).await;
        let task = received_task(&q).await;
        // Fill every page.
        let body = vec![9u8; 2_000];
        while q
            .insert_all(
                1,
                &[NewBatch {
                    destination: Destination::Api,
                    experiment: "none".into(),
                    variant: "none".into(),
                    samples: 1,
                    body: body.clone(),
                }],
            )
            .await
            .is_ok()
        {}
        let result = result_of(&task, 8_000);
        let full = q.finish_task(&result, 2).await.unwrap_err();
        assert!(format!("{full:#}").contains("full"), "{full:#}");

        // Room again: the result is stored at once, and a collection too.
        for b in q.oldest(Destination::Api, 10).await.unwrap() {
            q.remove(b.id).await.unwrap();
        }
        stored_at_once(&q, &result, 3).await;
    }

    /// On a real full disk (a tmpfs; skipped where it cannot be mounted) the
    /// failed write of a result is retried with success once there is
    /// room, and holds no lock meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_full_tmpfs_a_failed_result_holds_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "phoenix-queue-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return;
        }
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // Lazily: the pool's connections may still be closing.
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path().to_owned());
        let q = Queue::open(dir.path(), bounds(1 << 30, 3600))
            .await
            .unwrap();
        let task = received_task(&q).await;
        let filler = dir.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0u8; 4096]).is_ok() {}
            let _ = f.sync_all();
        }
        let result = result_of(&task, 100);
        let mut failures = 0;
        for t in 0..3 {
            if q.finish_task(&result, 2 + t).await.is_err() {
                failures += 1;
            }
        }
        assert!(failures > 0, "the disk was not full");
        std::fs::remove_file(&filler).unwrap();
        stored_at_once(&q, &result, 10).await;
        q.pool.close().await;
    }

    #[tokio::test]
    async fn a_collection_is_written_whole_at_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), bounds(1 << 20, 3600))
            .await
            .unwrap();
        let batch = |destination, experiment: &str, variant: &str, samples| NewBatch {
            destination,
            experiment: experiment.into(),
            variant: variant.into(),
            samples,
            body: vec![1; 10],
        };
        q.push_all(
            5_000,
            &[
                batch(Destination::Api, "none", "none", 2),
                batch(Destination::External, "none", "none", 2),
                batch(Destination::Api, "e", "baseline", 40),
                batch(Destination::Api, "e", "candidate", 3),
            ],
        )
        .await
        .unwrap();
        let api = q.oldest(Destination::Api, 10).await.unwrap();
        assert_eq!(
            api.iter()
                .map(|b| (b.variant.as_str(), b.samples, b.collected_at_ms))
                .collect::<Vec<_>>(),
            [
                ("none", 2, 5_000),
                ("baseline", 40, 5_000),
                ("candidate", 3, 5_000)
            ]
        );
        assert_eq!(q.oldest(Destination::External, 10).await.unwrap().len(), 1);
        assert_eq!(q.stats().await.unwrap().samples, 47);
    }

    #[tokio::test]
    async fn the_oldest_go_first_when_over_bytes_or_age_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), bounds(10_000, 60)).await.unwrap();
        let body = vec![7u8; 3_000];
        for t in 0..5 {
            q.push(
                Destination::Api,
                "none",
                "none",
                100_000 + t * 1000,
                10,
                &body,
            )
            .await
            .unwrap();
        }
        let stats = q.stats().await.unwrap();
        assert!(stats.bytes <= 10_000, "{stats:?}");
        assert_eq!(stats.batches + stats.evicted_batches, 5);
        assert_eq!(stats.evicted_samples, stats.evicted_batches * 10);
        let left = q.oldest(Destination::Api, 10).await.unwrap();
        assert_eq!(
            left.last().unwrap().collected_at_ms,
            104_000,
            "the newest stays"
        );
        assert!(left[0].collected_at_ms > 100_000, "the oldest went");

        // 61 s later every batch is past max_age.
        q.enforce_bounds(104_000 + 61_000).await.unwrap();
        let stats = q.stats().await.unwrap();
        assert_eq!((stats.batches, stats.evicted_batches), (0, 5));
    }

    /// Tasks arrive while collection and delivery write: recording one never
    /// fails for a writer in between (a deferred transaction that reads
    /// first would get SQLITE_BUSY at once, and the task would wait for its
    /// lease to run out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_are_recorded_while_batches_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), bounds(1 << 30, 3600))
            .await
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3 {
            let (q, stop) = (q.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut t = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    q.push(Destination::Api, "none", "none", t, 1, &[w; 512])
                        .await
                        .unwrap();
                    if let Some(b) = q.oldest(Destination::Api, 1).await.unwrap().first() {
                        q.remove(b.id).await.unwrap();
                    }
                    t += 1;
                }
            }));
        }
        for i in 0..300 {
            let task = PendingTask {
                task_id: uuid::Uuid::new_v4(),
                kind: "stop_experiment".into(),
                payload: serde_json::json!({"i": i}),
                received_at_ms: i,
            };
            assert_eq!(
                q.receive_task(&task).await.unwrap(),
                Received::New,
                "task {i}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(q.pending_tasks().await.unwrap().len(), 300);
    }

    #[tokio::test]
    async fn a_task_is_run_once_and_its_result_is_kept_until_answered() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), bounds(1 << 20, 3600))
            .await
            .unwrap();
        let task = PendingTask {
            task_id: uuid::Uuid::new_v4(),
            kind: "apply_pipeline".into(),
            payload: serde_json::json!({"k": 1}),
            received_at_ms: 5,
        };
        assert_eq!(q.receive_task(&task).await.unwrap(), Received::New);
        assert_eq!(
            q.receive_task(&task).await.unwrap(),
            Received::Unfinished,
            "received again before it finished"
        );
        assert_eq!(
            q.pending_tasks().await.unwrap(),
            std::slice::from_ref(&task)
        );
        let result = PendingResult {
            result_id: uuid::Uuid::new_v4(),
            task_id: task.task_id,
            outcome: "succeeded".into(),
            result: Some(serde_json::json!({"ok": true})),
            error: None,
        };
        q.finish_task(&result, 10).await.unwrap();
        assert!(q.pending_tasks().await.unwrap().is_empty());
        assert_eq!(q.results().await.unwrap(), std::slice::from_ref(&result));
        assert_eq!(
            q.receive_task(&task).await.unwrap(),
            Received::Finished,
            "a finished task is not run again"
        );
        q.remove_result(result.result_id).await.unwrap();
        assert!(q.results().await.unwrap().is_empty());
    }
}
