//! The [`Caller`] extractor: a valid access token for a live session of an
//! enabled user, or a 401. Roles are read from the database on every request,
//! so a role change or a disabled account takes effect at once.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sqlx::Row;
use uuid::Uuid;

use super::{Role, cookie, tokens};
use crate::AppState;
use crate::audit::{Event, Outcome};
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub session_id: Uuid,
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// The actor name in the audit log.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }

    /// An audit event by this caller.
    pub fn event(&self, action: &str, target: impl Into<String>) -> Event {
        Event::new(self.actor(), action, target, self.ip).authenticated()
    }

    /// Refuse (403, audited) unless the caller has at least `role`.
    pub async fn require(&self, role: Role, action: &str, state: &AppState) -> ApiResult<()> {
        if self.role >= role {
            return Ok(());
        }
        self.event(action, "-")
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "role", "required": role.as_str(), "role": self.role.as_str() }))
            .record_refusal(state)
            .await;
        Err(ApiError::Forbidden {
            detail: format!(
                "{action} needs the {} role; you are {}",
                role.as_str(),
                self.role.as_str()
            ),
        })
    }
}

/// The client's address, when the server was built with connect info.
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A session and its user, by the clause given.
macro_rules! session_query {
    ($clause:literal) => {
        concat!(
            "SELECT u.id AS user_id, s.id AS session_id, u.username, u.role, u.disabled, \
                    s.revoked_at IS NOT NULL AS revoked, s.expires_at < now() AS expired \
             FROM sessions s JOIN users u ON u.id = s.user_id ",
            $clause
        )
    };
}

/// How a request claims to be signed in.
enum Credential {
    /// `Authorization: Bearer <access token>` (tools, scripts, phoenixctl).
    Bearer(String),
    /// The console's session cookie.
    Cookie(String),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts);
        let credential = match (bearer(parts), cookie::session_token(&parts.headers)) {
            (Some(token), _) => Credential::Bearer(token.to_owned()),
            (None, Some(token)) => Credential::Cookie(token),
            (None, None) => {
                return Err(ApiError::unauthorized(
                    "missing_token",
                    "send `Authorization: Bearer <access token>` (POST /api/v1/auth/login)",
                ));
            }
        };
        let refuse = |code: &'static str, detail: &str| {
            let event = Event::new("anonymous", "auth.token", parts.uri.path(), ip)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "reason": code }));
            (event, ApiError::unauthorized(code, detail))
        };
        let lookup = match &credential {
            Credential::Bearer(token) => match state.auth.keys.verify_access(token) {
                Ok(claims) => sqlx::query(session_query!("WHERE s.id = $1 AND u.id = $2"))
                    .bind(claims.sid)
                    .bind(claims.sub),
                Err(code) => {
                    let detail = match code {
                        "token_expired" => {
                            "the access token has expired; refresh it (POST /api/v1/auth/refresh)"
                        }
                        _ => "the access token is not valid",
                    };
                    let (event, err) = refuse(code, detail);
                    event.record_refusal(state).await;
                    return Err(err);
                }
            },
            Credential::Cookie(token) => {
                // A change made with the cookie needs the session's CSRF
                // token and must come from this site.
                if !cookie::is_safe(&parts.method) {
                    let presented = parts
                        .headers
                        .get(cookie::CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let reason = cookie::same_origin(parts).err().or_else(|| {
                        (!cookie::csrf_matches(token, presented)).then_some("csrf_token")
                    });
                    if let Some(reason) = reason {
                        Event::new("anonymous", "auth.csrf", parts.uri.path(), ip)
                            .outcome(Outcome::Denied)
                            .details(serde_json::json!({ "reason": reason }))
                            .record_refusal(state)
                            .await;
                        return Err(ApiError::Forbidden {
                            detail: "a change made with the console's session needs its CSRF \
                                     token (X-CSRF-Token) and must come from the console's own \
                                     origin"
                                .into(),
                        });
                    }
                }
                sqlx::query(session_query!("WHERE s.cookie_hash = $1"))
                    .bind(tokens::hash_refresh(token))
            }
        };
        // Fails closed: if the session cannot be checked, the request is refused.
        let row = lookup.fetch_optional(&state.pool).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot check a session; refusing the request");
            ApiError::Unavailable {
                detail: "cannot verify the session right now; try again shortly".into(),
            }
        })?;
        let Some(row) = row else {
            let (event, err) = refuse(
                "token_revoked",
                "the session of this token no longer exists",
            );
            event.record_refusal(state).await;
            return Err(err);
        };
        let username: String = row.get("username");
        if row.get::<bool, _>("revoked") {
            let (event, err) = refuse(
                "token_revoked",
                "this session was signed out or revoked; log in again",
            );
            event.record_refusal(state).await;
            return Err(err);
        }
        if row.get::<bool, _>("expired") {
            let (event, err) = refuse("session_expired", "this session has expired; log in again");
            event.record_refusal(state).await;
            return Err(err);
        }
        if row.get::<bool, _>("disabled") {
            let (event, err) = refuse("user_disabled", "this user is disabled");
            event.record_refusal(state).await;
            return Err(err);
        }
        let role = Role::parse(row.get::<&str, _>("role"))
            .ok_or_else(|| anyhow::anyhow!("unknown role in the database"))?;
        Ok(Caller {
            user_id: row.get("user_id"),
            username,
            role,
            session_id: row.get("session_id"),
            ip,
        })
    }
}

/// The client's address as an extractor (absent without connect info).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}
