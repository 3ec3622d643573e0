//! How long the audit log keeps entries: the log is partitioned by month
//! (UTC, partitions `audit_log_pYYYYMM`, migration 0006); the housekeeping
//! creates the coming months ahead and drops whole months older than the
//! retention an admin sets (`GET`/`PUT /api/v1/audit/retention`). Each
//! drop is itself an audit entry, written in the drop's transaction.
//!
//! Invariant: entries are never changed or deleted one by one (the database
//! refuses it, on every partition); only a whole month past the retention
//! goes, and only here. Replicas take turns through a PostgreSQL advisory
//! lock (`phoenix.audit.housekeeping`): one housekeeps, the others skip.
//! The housekeeping runs at start-up before the API serves, hourly and after
//! a change of the retention; it creates this month and the next three (an
//! entry must always find its month) and waits at most 5 s for the table
//! lock a drop needs.

use std::time::Duration;

use chrono::{Datelike, Months, NaiveDate};
use sqlx::{PgPool, Row};

use super::Event;
use crate::AppState;
use crate::shutdown::Shutdown;

/// Longest retention accepted, in months (a hundred years).
pub const MAX_MONTHS: i32 = 1200;

/// Months created ahead of the current one, so entries always have a
/// partition even when the housekeeping cannot run for a while.
const AHEAD_MONTHS: u32 = 3;

/// How often the housekeeping runs (and at startup, and when the retention
/// changes).
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// The advisory lock that makes one replica housekeep at a time.
const LOCK: &str = "phoenix.audit.housekeeping";

/// The actor of drops in the audit log.
const ACTOR: &str = "system:housekeeping";

/// The month of a partition named `audit_log_pYYYYMM`; `None` for any other name.
pub(crate) fn partition_month(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("audit_log_p")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::from_ymd_opt(digits[..4].parse().ok()?, digits[4..].parse().ok()?, 1)
}

/// The first day of `day`'s month.
fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// The oldest month kept on `today`: the current month and the `months`
/// whole months before it are kept, anything older is dropped.
pub(crate) fn first_kept(today: NaiveDate, months: u32) -> NaiveDate {
    month_of(today)
        .checked_sub_months(Months::new(months))
        .unwrap_or(NaiveDate::MIN)
}

/// What one housekeeping did.
#[derive(Debug, Default)]
pub struct Housekept {
    /// The partitions dropped, oldest first.
    pub dropped: Vec<String>,
}

/// Creates the partitions of this month and the next [`AHEAD_MONTHS`],
/// and drops those past the retention, auditing each drop. `None` when
/// another replica holds the housekeeping lock (it is doing the same).
pub async fn housekeeping(pool: &PgPool) -> sqlx::Result<Option<Housekept>> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
        .bind(LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    // Creating or dropping a partition locks the whole log: wait for that
    // lock only briefly rather than hold up every audited change behind us.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    // The database's clock, which also stamps the entries.
    let today: NaiveDate = sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&mut *tx)
        .await?;
    for ahead in 0..=AHEAD_MONTHS {
        let Some(month) = month_of(today).checked_add_months(Months::new(ahead)) else {
            continue;
        };
        sqlx::query("SELECT audit_log_create_partition($1)")
            .bind(month)
            .execute(&mut *tx)
            .await?;
    }
    let months: i32 = sqlx::query_scalar("SELECT retention_months FROM audit_settings")
        .fetch_one(&mut *tx)
        .await?;
    let keep_from = first_kept(today, months.max(1).unsigned_abs());
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut done = Housekept::default();
    for name in names {
        let Some(month) = partition_month(&name).filter(|m| *m < keep_from) else {
            continue;
        };
        // `name` is audit_log_pYYYYMM, checked above, so it can be quoted into SQL.
        let held = sqlx::query(&format!(
            "SELECT count(*) AS rows, COALESCE(sum(count), 0)::bigint AS events FROM \"{name}\""
        ))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(&format!("DROP TABLE \"{name}\""))
            .execute(&mut *tx)
            .await?;
        Event::new(ACTOR, "audit.partition.drop", name.as_str(), None)
            .details(serde_json::json!({
                "month": month.format("%Y-%m").to_string(),
                "rows": held.get::<i64, _>("rows"),
                "events": held.get::<i64, _>("events"),
                "retention_months": months,
            }))
            .record(&mut *tx)
            .await?;
        done.dropped.push(name);
    }
    tx.commit().await?;
    Ok(Some(done))
}

/// Runs [`housekeeping`] and logs what it did or why it failed.
pub async fn housekeep_logged(pool: &PgPool) {
    match housekeeping(pool).await {
        Ok(Some(done)) => {
            for partition in &done.dropped {
                tracing::info!(%partition, "dropped an audit log month past the retention");
            }
        }
        Ok(None) => tracing::debug!("another replica is housekeeping the audit log"),
        Err(error) => tracing::warn!(
            %error,
            retry_in_secs = INTERVAL.as_secs(),
            "audit log housekeeping failed (creating coming months, dropping expired ones); \
             the next run tries again"
        ),
    }
}

/// Housekeeps every [`INTERVAL`] and whenever woken, until shutdown.
pub async fn run(state: AppState, shutdown: Shutdown) {
    // Startup has just housekept (see server::run).
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.requested() => return,
            _ = ticker.tick() => if !state.leader.holds() { continue },
            // A changed retention, on the replica that took the request.
            () = state.audit.housekeeping.notified() => {}
        }
        housekeep_logged(&state.pool).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn partition_names_parse_only_in_their_own_shape() {
        assert_eq!(partition_month("audit_log_p202001"), Some(day(2020, 1, 1)));
        assert_eq!(partition_month("audit_log_p202013"), None);
        assert_eq!(partition_month("audit_log_p20201"), None);
        assert_eq!(partition_month("audit_log_p2020-1"), None);
        assert_eq!(partition_month("audit_log_unpartitioned"), None);
    }

    #[test]
    fn the_current_month_and_n_whole_months_before_it_are_kept() {
        assert_eq!(first_kept(day(2025, 6, 15), 13), day(2024, 5, 1));
        assert_eq!(first_kept(day(2025, 6, 1), 1), day(2025, 5, 1));
        assert_eq!(first_kept(day(2025, 1, 31), 1), day(2024, 12, 1));
        assert_eq!(first_kept(day(2025, 3, 31), 12), day(2024, 3, 1));
    }
}
