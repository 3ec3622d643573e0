//! Login, refresh, logout and "who am I".

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::caller::ClientIp;
use super::tokens::{self, ACCESS_TTL, REFRESH_TTL};
use super::{Caller, Role, password};
use crate::AppState;
use crate::audit::{Event, Outcome};
use crate::error::{ApiError, ApiResult};
use crate::input::Json;

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Use once with POST /api/v1/auth/refresh; each use returns a new one.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserInfo,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Start a session and a refresh-token family; returns both tokens.
/// A new session and its first token pair; `event` (the login) is audited
/// in the same transaction, so no session exists without its audit row.
async fn open_session(state: &AppState, user: UserInfo, event: Event) -> ApiResult<TokenResponse> {
    let session = Uuid::new_v4();
    let (refresh, hash) = tokens::new_refresh();
    let mut tx = state.pool.begin().await?;
    sqlx::query("INSERT INTO sessions (id, user_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))")
        .bind(session)
        .bind(user.id)
        .bind(REFRESH_TTL.as_secs() as f64)
        .execute(&mut *tx)
        .await?;
    insert_refresh(&mut tx, session, &hash).await?;
    event.record(&mut *tx).await?;
    tx.commit().await?;
    token_pair(state, user, session, refresh)
}

async fn insert_refresh(
    tx: &mut sqlx::PgConnection,
    session: Uuid,
    hash: &[u8],
) -> sqlx::Result<()> {
    sqlx::query(
        // A refresh never outlives its session: a login lasts 7 days at most.
        "INSERT INTO refresh_tokens (session_id, token_hash, expires_at) \
         SELECT $1, $2, LEAST(now() + make_interval(secs => $3), expires_at) FROM sessions WHERE id = $1",
    )
    .bind(session)
    .bind(hash)
    .bind(REFRESH_TTL.as_secs() as f64)
    .execute(tx)
    .await
    .map(drop)
}

fn token_pair(
    state: &AppState,
    user: UserInfo,
    session: Uuid,
    refresh: String,
) -> ApiResult<TokenResponse> {
    let (access, _) = state.auth.keys.issue_access(user.id, session)?;
    Ok(TokenResponse {
        access_token: access,
        token_type: "Bearer",
        expires_in: ACCESS_TTL.as_secs(),
        refresh_token: refresh,
        refresh_expires_in: REFRESH_TTL.as_secs(),
        user,
    })
}

/// Log in with a user name and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 400), (status = 401), (status = 429)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let user = authenticate(&state, ip, &req.username, req.password).await?;
    let actor = format!("user:{}", user.username);
    let login = Event::new(actor.clone(), "auth.login", actor, ip);
    Ok(Json(open_session(&state, user, login).await?))
}

/// The user whose name and password these are: rate-limited, and every
/// refusal audited, for the JSON login and the console's sign-in alike.
pub(crate) async fn authenticate(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    username: &str,
    password: String,
) -> ApiResult<UserInfo> {
    let username = username.trim().to_string();
    if username.is_empty() || username.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_username",
            "username must be 1 to 64 characters",
        ));
    }
    let event = |outcome, reason: &str| {
        Event::new(
            format!("user:{username}"),
            "auth.login",
            format!("user:{username}"),
            ip,
        )
        .outcome(outcome)
        .details(serde_json::json!({ "reason": reason }))
    };
    let limiter = &state.auth.limiter;
    // Failures other replicas counted: a limit holds on all of them.
    if let Err(error) = limiter.sync(&state.pool, ip, &username).await {
        tracing::warn!(%error, "could not read the shared login failures");
    }
    let share = || async {
        if let Err(error) = limiter.share(&state.pool, ip, &username).await {
            tracing::warn!(%error, "could not share the login failures");
        }
    };
    let attempt = match limiter.begin(ip, &username) {
        Ok(attempt) => attempt,
        Err(refused) => {
            share().await;
            event(Outcome::Denied, "rate_limited")
                .record_refusal(state)
                .await;
            return Err(ApiError::TooManyRequests {
                retry_after_secs: refused.retry_after_secs(),
            });
        }
    };
    let row = sqlx::query("SELECT id, username, password_hash, role, disabled FROM users WHERE lower(username) = lower($1)")
        .bind(&username)
        .fetch_optional(&state.pool)
        .await?;
    let stored = row.as_ref().map_or_else(
        || password::decoy_hash().to_string(),
        |r| r.get("password_hash"),
    );
    let matches = password::verify(password, stored).await?;
    match row {
        Some(r) if matches && !r.get::<bool, _>("disabled") => {
            attempt.succeeded();
            if let Err(error) = limiter.forget_shared(&state.pool, ip, &username).await {
                tracing::warn!(%error, "could not forget the shared login failures");
            }
            Ok(UserInfo {
                id: r.get("id"),
                username: r.get("username"),
                role: Role::parse(r.get::<&str, _>("role"))
                    .ok_or_else(|| anyhow::anyhow!("unknown role"))?,
            })
        }
        Some(r) if matches && r.get::<bool, _>("disabled") => {
            attempt.failed();
            share().await;
            event(Outcome::Denied, "user_disabled")
                .record_refusal(state)
                .await;
            Err(ApiError::unauthorized(
                "invalid_credentials",
                "wrong user name or password, or the user is disabled",
            ))
        }
        _ => {
            attempt.failed();
            share().await;
            event(Outcome::Denied, "invalid_credentials")
                .record_refusal(state)
                .await;
            Err(ApiError::unauthorized(
                "invalid_credentials",
                "wrong user name or password, or the user is disabled",
            ))
        }
    }
}

/// A console session for `user`, audited as a login in the same
/// transaction; the token to put in the session cookie.
pub(crate) async fn open_console_session(
    state: &AppState,
    user: &UserInfo,
    ip: Option<std::net::IpAddr>,
) -> ApiResult<String> {
    let (token, hash) = tokens::new_refresh();
    let mut tx = state.pool.begin().await?;
    let session: Uuid = sqlx::query_scalar(
        "INSERT INTO sessions (user_id, expires_at, cookie_hash) \
         VALUES ($1, now() + make_interval(secs => $2), $3) RETURNING id",
    )
    .bind(user.id)
    .bind(super::cookie::SESSION_TTL.as_secs() as f64)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    let actor = format!("user:{}", user.username);
    Event::new(actor.clone(), "auth.login", actor, ip)
        .details(serde_json::json!({ "via": "console", "session": session }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(token)
}

/// Exchange a refresh token for a new pair. A refresh token works once:
/// presenting a used one revokes its whole session (it was stolen or replayed).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401)))]
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let hash = tokens::hash_refresh(req.refresh_token.trim());
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "SELECT t.id, t.session_id, t.used_at IS NOT NULL AS used, t.expires_at < now() AS expired, \
                s.revoked_at IS NOT NULL AS revoked, u.id AS user_id, u.username, u.role, u.disabled \
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id \
         WHERE t.token_hash = $1 FOR UPDATE OF t, s",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        Event::new("anonymous", "auth.refresh", "-", ip)
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "unknown_token" }))
            .record_refusal(&state)
            .await;
        return Err(ApiError::unauthorized(
            "refresh_invalid",
            "this refresh token is not valid; log in again",
        ));
    };
    let username: String = row.get("username");
    let session: Uuid = row.get("session_id");
    let actor = format!("user:{username}");
    let target = format!("session:{session}");
    if row.get::<bool, _>("used") {
        // Reuse: someone holds a copy. Revoke the whole family.
        sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'refresh token reused' WHERE id = $1 AND revoked_at IS NULL")
            .bind(session)
            .execute(&mut *tx)
            .await?;
        Event::new(&actor, "auth.refresh", &target, ip)
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "refresh_reused", "session_revoked": true }))
            .record(&mut *tx)
            .await?;
        tx.commit().await?;
        return Err(ApiError::unauthorized(
            "refresh_reused",
            "this refresh token was already used; the session is revoked, log in again",
        ));
    }
    let refused = if row.get::<bool, _>("revoked") {
        Some("session_revoked")
    } else if row.get::<bool, _>("expired") {
        Some("refresh_expired")
    } else if row.get::<bool, _>("disabled") {
        Some("user_disabled")
    } else {
        None
    };
    if let Some(reason) = refused {
        drop(tx);
        Event::new(&actor, "auth.refresh", &target, ip)
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": reason }))
            .record_refusal(&state)
            .await;
        return Err(ApiError::unauthorized(
            reason,
            "this refresh token can no longer be used; log in again",
        ));
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
        .bind(row.get::<Uuid, _>("id"))
        .execute(&mut *tx)
        .await?;
    let (new_refresh, new_hash) = tokens::new_refresh();
    insert_refresh(&mut tx, session, &new_hash).await?;
    Event::new(&actor, "auth.refresh", &target, ip)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let user = UserInfo {
        id: row.get("user_id"),
        username,
        role: Role::parse(row.get::<&str, _>("role"))
            .ok_or_else(|| anyhow::anyhow!("unknown role"))?,
    };
    Ok(Json(token_pair(&state, user, session, new_refresh)?))
}

/// End this session: its access and refresh tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401)), security(("bearer" = [])))]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    end_session(&state, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the caller's session (API or console), audited.
pub(crate) async fn end_session(state: &AppState, caller: &Caller) -> ApiResult<()> {
    let mut tx = state.pool.begin().await?;
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' WHERE id = $1 AND revoked_at IS NULL")
        .bind(caller.session_id)
        .execute(&mut *tx)
        .await?;
    caller
        .event("auth.logout", format!("session:{}", caller.session_id))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The calling user.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = UserInfo), (status = 401)), security(("bearer" = [])))]
pub async fn me(caller: Caller) -> Json<UserInfo> {
    Json(UserInfo {
        id: caller.user_id,
        username: caller.username,
        role: caller.role,
    })
}
