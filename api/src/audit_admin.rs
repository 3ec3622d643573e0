//! What admins do with the audit log over HTTP: read it
//! (`GET /api/v1/audit`) and set how long it keeps entries
//! (`GET`/`PUT /api/v1/audit/retention`). The log itself, what writes it and
//! its housekeeping are [`crate::audit`], which sits below authentication;
//! these handlers sit above it.

use axum::extract::State;
use chrono::DateTime;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::Outcome;
use crate::audit::retention::{MAX_MONTHS, first_kept, partition_month};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Query, page_limit};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact actor, e.g. `user:alice` or `agent:<id>`.
    pub actor: Option<String>,
    /// Action prefix, e.g. `auth.` or `users.create`.
    pub action: Option<String>,
    /// Exact target.
    pub target: Option<String>,
    pub outcome: Option<Outcome>,
    /// RFC 3339 time; entries at or after it.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339 time; entries before it.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries with an id below this (for paging back); see `next_before_id`.
    pub before_id: Option<i64>,
    /// At most this many entries, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source_ip: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
    /// How many events the entry stands for: more than 1 for repeated
    /// refusals summed over a window (`details.aggregated` says which).
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

/// Read the audit log (admin), newest first, filtered.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(Role::Admin, "audit.read", &state).await?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target, host(source_ip) AS ip, outcome, details, count FROM audit_log \
         WHERE ($1::text IS NULL OR actor = $1) \
           AND ($2::text IS NULL OR starts_with(action, $2)) \
           AND ($3::text IS NULL OR target = $3) \
           AND ($4::text IS NULL OR outcome = $4) \
           AND ($5::timestamptz IS NULL OR at >= $5) \
           AND ($6::timestamptz IS NULL OR at < $6) \
           AND ($7::bigint IS NULL OR id < $7) \
         ORDER BY id DESC LIMIT $8",
    )
    .bind(&q.actor)
    .bind(&q.action)
    .bind(&q.target)
    .bind(q.outcome.map(Outcome::as_str))
    .bind(q.since)
    .bind(q.until)
    .bind(q.before_id)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let entries: Vec<AuditEntry> = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.get("id"),
            at: r.get("at"),
            actor: r.get("actor"),
            action: r.get("action"),
            target: r.get("target"),
            source_ip: r.get("ip"),
            outcome: r.get("outcome"),
            details: r.get("details"),
            count: r.get("count"),
        })
        .collect();
    let next_before_id = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before_id,
    }))
}

/// How long audit entries are kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retention {
    /// Whole months kept before the current one; older months are dropped
    /// (at most an hour later).
    pub months: i32,
    /// The oldest month kept now, `YYYY-MM`.
    pub first_kept: String,
    /// The months the log holds (its partitions, some ahead), oldest first, `YYYY-MM`.
    pub held: Vec<String>,
    pub updated_at: DateTime<Utc>,
    /// `user:<name>`, or `default` until an admin sets it.
    pub updated_by: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RetentionChange {
    /// Whole months to keep before the current one, 1 to 1200.
    pub months: i32,
}

async fn load(state: &AppState) -> ApiResult<Retention> {
    let row = sqlx::query(
        "SELECT retention_months, updated_at, updated_by, (now() AT TIME ZONE 'UTC')::date AS today \
         FROM audit_settings",
    )
    .fetch_one(&state.pool)
    .await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1",
    )
    .fetch_all(&state.pool)
    .await?;
    let months: i32 = row.get("retention_months");
    Ok(Retention {
        months,
        first_kept: first_kept(row.get("today"), months.max(1).unsigned_abs())
            .format("%Y-%m")
            .to_string(),
        held: names
            .iter()
            .filter_map(|n| partition_month(n))
            .map(|m| m.format("%Y-%m").to_string())
            .collect(),
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
    })
}

/// The audit log's retention (admin).
#[utoipa::path(get, path = "/api/v1/audit/retention", tag = "audit",
    responses((status = 200, body = Retention), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn show(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Retention>> {
    caller
        .require(Role::Admin, "audit.retention.read", &state)
        .await?;
    Ok(Json(load(&state).await?))
}

/// Set the audit log's retention (admin, audited). Months older than the
/// new retention are dropped by the housekeeping right after, each drop
/// audited as `audit.partition.drop`.
#[utoipa::path(put, path = "/api/v1/audit/retention", tag = "audit", request_body = RetentionChange,
    responses((status = 200, body = Retention),
        (status = 400, description = "`months` is not between 1 and 1200 (`invalid_retention`)"),
        (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Json(change): Json<RetentionChange>,
) -> ApiResult<Json<Retention>> {
    caller
        .require(Role::Admin, "audit.retention.update", &state)
        .await?;
    if !(1..=MAX_MONTHS).contains(&change.months) {
        return Err(ApiError::bad_request(
            "invalid_retention",
            format!(
                "months must be between 1 and {MAX_MONTHS}: the current month and at least \
                 the one before it are always kept"
            ),
        ));
    }
    let mut tx = state.pool.begin().await?;
    let before: i32 = sqlx::query_scalar("SELECT retention_months FROM audit_settings FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE audit_settings SET retention_months = $1, updated_at = now(), updated_by = $2",
    )
    .bind(change.months)
    .bind(caller.actor())
    .execute(&mut *tx)
    .await?;
    caller
        .event("audit.retention.update", "audit_log")
        .details(serde_json::json!({ "from": before, "to": change.months }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.audit.housekeeping.notify_one();
    Ok(Json(load(&state).await?))
}
