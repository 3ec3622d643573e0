//! The agents people see (list, detail, revoke on the user listener) and the
//! heartbeat agents send (agent listener).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{HEARTBEAT_INTERVAL, ONLINE_WINDOW, check_text};
use crate::AppState;
use crate::auth::agent::ASYNC_COMMIT;
use crate::auth::{AgentCaller, Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Path, Query, page_limit};
use crate::tasks::wake;
use phoenix_wire::agent::{Heartbeat, HeartbeatReply};

/// Largest `status` object a heartbeat may carry, serialized.
const MAX_REPORTED_STATUS_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Seen within the last three heartbeat intervals (45 s).
    Online,
    Offline,
    /// Its credential no longer works.
    Revoked,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub status: AgentStatus,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The `status` object of the agent's last heartbeat.
    pub reported_status: Option<serde_json::Value>,
    /// Series in the agent's last push to each of its Pushgateway groups, summed.
    pub pushed_series: i64,
}

/// Every agent with its computed status; filter on the outer query.
fn agents_query(filter: &str) -> String {
    format!(
        "SELECT * FROM (SELECT a.id, a.name, a.hostname, a.labels, a.version, a.reported_status, \
                a.created_at, a.last_seen_at, a.revoked_at, \
                CASE WHEN a.revoked_at IS NOT NULL THEN 'revoked' \
                     WHEN a.last_seen_at > now() - make_interval(secs => {online}) THEN 'online' \
                     ELSE 'offline' END AS status, \
                COALESCE((SELECT sum(g.series) FROM agent_metric_groups g WHERE g.agent_id = a.id), 0)::bigint \
                    AS pushed_series \
         FROM agents a) agent {filter}",
        online = ONLINE_WINDOW.as_secs()
    )
}

/// How many agents are online, offline and revoked.
pub async fn counts(pool: &sqlx::PgPool) -> ApiResult<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT status, count(*) FROM ({}) counted GROUP BY status",
        agents_query("")
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

fn agent_from(r: &sqlx::postgres::PgRow) -> ApiResult<Agent> {
    let labels: sqlx::types::Json<BTreeMap<String, String>> = r
        .try_get("labels")
        .map_err(|e| anyhow::anyhow!("agent labels in the database: {e}"))?;
    Ok(Agent {
        id: r.get("id"),
        name: r.get("name"),
        hostname: r.get("hostname"),
        labels: labels.0,
        version: r.get("version"),
        status: match r.get::<&str, _>("status") {
            "online" => AgentStatus::Online,
            "revoked" => AgentStatus::Revoked,
            _ => AgentStatus::Offline,
        },
        created_at: r.get("created_at"),
        last_seen_at: r.get("last_seen_at"),
        revoked_at: r.get("revoked_at"),
        reported_status: r.get("reported_status"),
        pushed_series: r.get("pushed_series"),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    /// Only agents with this status.
    pub status: Option<AgentStatus>,
    /// The page after this agent (the previous page's `next_after`).
    pub after: Option<Uuid>,
    /// At most this many agents (default 500, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentPage {
    pub agents: Vec<Agent>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<Uuid>,
}

/// Agents by name (then enrollment time), with their last-seen time and
/// status, a page at a time.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, body = AgentPage), (status = 400, description = "`after` names no agent"),
        (status = 401)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<AgentQuery>,
) -> ApiResult<Json<AgentPage>> {
    let status = q.status.map(|s| match s {
        AgentStatus::Online => "online",
        AgentStatus::Offline => "offline",
        AgentStatus::Revoked => "revoked",
    });
    let limit = page_limit(q.limit, 500, 1000)?;
    if let Some(after) = q.after {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)")
            .bind(after)
            .fetch_one(&state.pool)
            .await?;
        if !known {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                format!("`after` names no agent ({after}); start again without it"),
            ));
        }
    }
    let rows = sqlx::query(&agents_query(
        "WHERE ($1::text IS NULL OR status = $1) \
           AND ($2::uuid IS NULL OR (lower(name), created_at, id) > \
                (SELECT lower(name), created_at, id FROM agents WHERE id = $2)) \
         ORDER BY lower(name), created_at, id LIMIT $3",
    ))
    .bind(status)
    .bind(q.after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let agents: Vec<Agent> = rows.iter().map(agent_from).collect::<ApiResult<_>>()?;
    let next_after = (agents.len() as i64 == limit)
        .then(|| agents.last().map(|a| a.id))
        .flatten();
    Ok(Json(AgentPage { agents, next_after }))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = Agent), (status = 401), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Agent>> {
    let row = sqlx::query(&agents_query("WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {id}")))?;
    Ok(Json(agent_from(&row)?))
}

/// Revoke an agent (operator): its credential stops working at once, its
/// queued and leased tasks are cancelled, and its Pushgateway groups are
/// deleted. Revoking a revoked agent changes nothing.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller
        .require(Role::Operator, "agents.revoke", &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "UPDATE agents SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING name",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("agent {id}")))?;
    let cancelled = sqlx::query(
        "UPDATE tasks SET state = 'cancelled', lease_expires_at = NULL, error = 'the agent was revoked', \
                updated_at = now() \
         WHERE agent_id = $1 AND state IN ('queued', 'leased')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    caller
        .event("agents.revoke", format!("agent:{id}"))
        .details(
            serde_json::json!({ "name": row.get::<&str, _>("name"), "tasks_cancelled": cancelled }),
        )
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    // Long polls of this agent return now rather than at the end of their wait.
    wake::wake(id);
    Ok(StatusCode::NO_CONTENT)
}

/// Tell the control plane the agent is alive (agent listener).
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agent", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatReply), (status = 400), (status = 401)),
    security(("agent" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    agent: AgentCaller,
    Json(beat): Json<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    if let Some(version) = &beat.version {
        check_text("invalid_version", "version", version, 64)?;
    }
    let status = beat.status.map(sqlx::types::Json);
    if let Some(s) = &status
        && serde_json::to_vec(&s.0).map_or(0, |v| v.len()) > MAX_REPORTED_STATUS_BYTES
    {
        return Err(ApiError::bad_request(
            "status_too_large",
            format!("status may be at most {MAX_REPORTED_STATUS_BYTES} bytes of JSON"),
        ));
    }
    let server_time: DateTime<Utc> = sqlx::query_scalar(&format!(
        "{ASYNC_COMMIT}UPDATE agents SET last_seen_at = now(), version = COALESCE($2, version), \
                reported_status = COALESCE($3, reported_status) \
         FROM async_commit WHERE id = $1 RETURNING now()",
    ))
    .bind(agent.id)
    .bind(&beat.version)
    .bind(status)
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(HeartbeatReply {
        server_time,
        heartbeat_interval_secs: HEARTBEAT_INTERVAL.as_secs(),
    }))
}
