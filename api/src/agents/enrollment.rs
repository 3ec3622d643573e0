//! Enrollment: admins create tokens with an expiry and a use count (user
//! listener); an agent presents one to `POST /api/v1/agents/enroll` (agent
//! listener) and gets its own credential. A token is shown once and stored
//! as its SHA-256; a use is taken in the same transaction that creates the
//! agent, so a token with one use enrolls exactly one agent.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{HEARTBEAT_INTERVAL, check_text};
use crate::AppState;
use crate::audit::{Event, Outcome};
use crate::auth::agent::{hash_secret, new_secret};
use crate::auth::caller::ClientIp;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Path};
use phoenix_wire::agent::{EnrollRequest, Enrolled};

const DEFAULT_TTL_SECS: i64 = 24 * 3600;
const MAX_TTL_SECS: i64 = 30 * 24 * 3600;
const MAX_USES: i32 = 10_000;
const MAX_LABELS: usize = 64;

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewEnrollmentToken {
    /// What the token is for, e.g. "web fleet, rollout 12".
    #[serde(default)]
    pub description: String,
    /// Seconds until the token expires (default 86400, at most 30 days).
    pub expires_in_secs: Option<i64>,
    /// How many agents may enroll with it (default 1, at most 10000).
    pub uses: Option<i32>,
}

/// A new token: `token` is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    pub id: Uuid,
    /// Give this to the agent; it is not stored and cannot be shown again.
    pub token: String,
    pub description: String,
    pub expires_at: DateTime<Utc>,
    pub uses_left: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Active,
    Expired,
    UsedUp,
    Revoked,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentToken {
    pub id: Uuid,
    pub description: String,
    pub expires_at: DateTime<Utc>,
    pub uses_left: i32,
    pub state: TokenState,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str = "id, description, expires_at, uses_left, created_by, created_at, revoked_at, \
     CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at <= now() THEN 'expired' \
          WHEN uses_left = 0 THEN 'used_up' ELSE 'active' END AS state";

fn token_from(r: &sqlx::postgres::PgRow) -> EnrollmentToken {
    EnrollmentToken {
        id: r.get("id"),
        description: r.get("description"),
        expires_at: r.get("expires_at"),
        uses_left: r.get("uses_left"),
        state: match r.get::<&str, _>("state") {
            "revoked" => TokenState::Revoked,
            "expired" => TokenState::Expired,
            "used_up" => TokenState::UsedUp,
            _ => TokenState::Active,
        },
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        revoked_at: r.get("revoked_at"),
    }
}

/// Create an enrollment token (admin). The token is in this answer only.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "agents",
    request_body = NewEnrollmentToken,
    responses((status = 201, body = CreatedEnrollmentToken), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewEnrollmentToken>,
) -> ApiResult<(StatusCode, Json<CreatedEnrollmentToken>)> {
    caller
        .require(Role::Admin, "enrollment_tokens.create", &state)
        .await?;
    let ttl = new.expires_in_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_expiry",
            format!("expires_in_secs must be between 1 and {MAX_TTL_SECS} (30 days)"),
        ));
    }
    let uses = new.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(ApiError::bad_request(
            "invalid_uses",
            format!("uses must be between 1 and {MAX_USES}"),
        ));
    }
    if !new.description.is_empty() {
        check_text("invalid_description", "description", &new.description, 256)?;
    }
    let (token, hash) = new_secret();
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "INSERT INTO enrollment_tokens (token_hash, description, expires_at, uses_left, created_by) \
         VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5) RETURNING id, expires_at",
    )
    .bind(&hash)
    .bind(&new.description)
    .bind(ttl as f64)
    .bind(uses)
    .bind(caller.actor())
    .fetch_one(&mut *tx)
    .await?;
    let id: Uuid = row.get("id");
    let expires_at: DateTime<Utc> = row.get("expires_at");
    caller
        .event("enrollment_tokens.create", format!("enrollment_token:{id}"))
        .details(serde_json::json!({ "uses": uses, "expires_at": expires_at, "description": new.description }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            id,
            token,
            description: new.description,
            expires_at,
            uses_left: uses,
        }),
    ))
}

/// All enrollment tokens (admin), newest first; never the tokens themselves.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "agents",
    responses((status = 200, body = [EnrollmentToken]), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<EnrollmentToken>>> {
    caller
        .require(Role::Admin, "enrollment_tokens.list", &state)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"
    ))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.iter().map(token_from).collect()))
}

/// Revoke an enrollment token (admin): it enrolls no more agents. Agents
/// already enrolled with it keep their own credentials.
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", tag = "agents",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller
        .require(Role::Admin, "enrollment_tokens.revoke", &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let found = sqlx::query(
        "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if found.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("enrollment token {id}")));
    }
    caller
        .event("enrollment_tokens.revoke", format!("enrollment_token:{id}"))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn validate_enrollment(req: &EnrollRequest) -> ApiResult<()> {
    check_text("invalid_name", "name", &req.name, 128)?;
    check_text("invalid_hostname", "hostname", &req.hostname, 253)?;
    if !req.version.is_empty() {
        check_text("invalid_version", "version", &req.version, 64)?;
    }
    if req.labels.len() > MAX_LABELS {
        return Err(ApiError::bad_request(
            "invalid_labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &req.labels {
        check_text("invalid_labels", "a label name", key, 128)?;
        if value.chars().count() > 1024 || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_labels",
                format!(
                    "the value of label {key:?} must be at most 1024 characters without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Enroll an agent with an enrollment token (agent listener). Returns the
/// agent's credential, once.
#[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agent",
    request_body = EnrollRequest,
    responses((status = 201, body = Enrolled), (status = 400), (status = 401,
        description = "the token is unknown, expired, revoked or used up"),
        (status = 409, description = "an active agent has this name")))]
pub async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<Enrolled>)> {
    validate_enrollment(&req)?;
    let token_hash = hash_secret(req.token.trim());
    let refused = |reason: &str| {
        Event::new("anonymous", "agents.enroll", "-", ip)
            .outcome(Outcome::Denied)
            .details(
                serde_json::json!({ "reason": reason, "name": req.name, "hostname": req.hostname }),
            )
    };
    let mut tx = state.pool.begin().await?;
    // Takes one use, atomically: concurrent enrollments queue on the row lock
    // and see the decremented count.
    let token_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now() AND uses_left > 0 \
         RETURNING id",
    )
    .bind(&token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(token_id) = token_id else {
        drop(tx);
        let reason: String = sqlx::query_scalar(
            "SELECT CASE WHEN revoked_at IS NOT NULL THEN 'token_revoked' \
                         WHEN expires_at <= now() THEN 'token_expired' \
                         WHEN uses_left = 0 THEN 'token_used_up' ELSE 'token_unavailable' END \
             FROM enrollment_tokens WHERE token_hash = $1",
        )
        .bind(&token_hash)
        .fetch_optional(&state.pool)
        .await?
        .unwrap_or_else(|| "token_unknown".into());
        refused(&reason).record_refusal(&state).await;
        // One answer for every reason: a caller learns nothing about tokens
        // it does not hold.
        return Err(ApiError::unauthorized(
            "enrollment_token_invalid",
            "the enrollment token is unknown, expired, revoked or used up; ask an admin for a new one",
        ));
    };
    let (secret, secret_hash) = new_secret();
    let inserted = sqlx::query_scalar::<_, Uuid>(
        "INSERT INTO agents (name, hostname, labels, secret_hash, version, enrolled_via) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&req.name)
    .bind(&req.hostname)
    .bind(sqlx::types::Json(&req.labels))
    .bind(&secret_hash)
    .bind(&req.version)
    .bind(token_id)
    .fetch_one(&mut *tx)
    .await;
    let agent_id = match inserted {
        Ok(id) => id,
        Err(e) => {
            drop(tx);
            return Err(match ApiError::from(e) {
                ApiError::Conflict { .. } => {
                    Event::new(
                        format!("enrollment_token:{token_id}"),
                        "agents.enroll",
                        "-",
                        ip,
                    )
                    .outcome(Outcome::Failure)
                    .details(serde_json::json!({ "reason": "name_taken", "name": req.name }))
                    .record_refusal(&state)
                    .await;
                    ApiError::conflict(
                        "agent_name_taken",
                        format!(
                            "an active agent is already named {:?}; revoke it first or choose another name \
                             (the enrollment token was not used up)",
                            req.name
                        ),
                    )
                }
                other => other,
            });
        }
    };
    Event::new(
        format!("enrollment_token:{token_id}"),
        "agents.enroll",
        format!("agent:{agent_id}"),
        ip,
    )
    .details(
        serde_json::json!({ "name": req.name, "hostname": req.hostname, "version": req.version }),
    )
    .record(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            agent_id,
            credential: format!("{agent_id}.{secret}"),
            secret,
            heartbeat_interval_secs: HEARTBEAT_INTERVAL.as_secs(),
        }),
    ))
}
