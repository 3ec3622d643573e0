//! The append-only audit log: every mutating call and every authentication
//! event, with actor, action, target, time, source IP and outcome.

use std::net::IpAddr;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Row};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiResult;
use crate::input::{Json, Query, page_limit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// Refused: bad credentials, missing permission, rate limit.
    Denied,
    /// Attempted but failed (invalid input, conflict, error).
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// One audit entry to write.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source_ip: Option<IpAddr>,
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

impl Event {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        source_ip: Option<IpAddr>,
    ) -> Self {
        Event {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            source_ip,
            outcome: Outcome::Success,
            details: serde_json::json!({}),
        }
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Write the entry; pass a transaction to commit it with the change it records.
    pub async fn record<'e>(&self, exec: impl PgExecutor<'e>) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, target, source_ip, outcome, details) \
             VALUES ($1, $2, $3, $4::inet, $5, $6)",
        )
        .bind(&self.actor)
        .bind(&self.action)
        .bind(&self.target)
        .bind(self.source_ip.map(|ip| ip.to_string()))
        .bind(self.outcome.as_str())
        .bind(&self.details)
        .execute(exec)
        .await
        .map(drop)
    }

    /// Write an entry about a refusal; a failure to write is logged, since
    /// the request is refused either way.
    pub async fn record_refusal(&self, state: &AppState) {
        if let Err(e) = self.record(&state.pool).await {
            tracing::error!(error = %e, action = %self.action, "could not write an audit entry");
        }
    }
}

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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

/// Read the audit log (admin), newest first, filtered.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(Role::Admin, "audit.read", &state).await?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target, host(source_ip) AS ip, outcome, details FROM audit_log \
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
