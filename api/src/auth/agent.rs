//! Agent credentials and the [`AgentCaller`] extractor of the agent listener.
//!
//! A credential is `<agent id>.<secret>`: the id finds the row, the secret's
//! SHA-256 is compared in constant time with the stored one. Only the hash
//! is stored, so a database dump does not let anyone act as an agent. The
//! secret is made like a refresh token (32 random bytes, base64url).

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::caller::{bearer, client_ip};
use super::tokens;
use crate::AppState;
use crate::audit::{Event, Outcome};
use crate::error::{ApiError, ApiResult};

/// Put before an `UPDATE ... FROM async_commit` or `INSERT ... SELECT ...
/// FROM async_commit`: its transaction commits without waiting for its WAL
/// to reach the disk (`synchronous_commit = off` for that transaction
/// alone). For frequent writes whose loss in a crash is harmless — when an
/// agent was last seen, what it reported, its groups' series counts — so
/// that a slow disk does not hold up heartbeats. A crash of PostgreSQL
/// loses at most the last few hundred milliseconds of them; the database
/// stays consistent. The statement must read from `async_commit`, or
/// PostgreSQL does not evaluate it.
pub(crate) const ASYNC_COMMIT: &str =
    "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)) ";

/// `last_seen_at` is written at most this often per agent from ordinary
/// requests (heartbeats always write it), so that many concurrent long
/// polls and metric writes do not turn into a stream of row updates. A
/// little over one heartbeat interval (15 s): an agent that heartbeats on
/// time is not touched by its other requests, and one that only polls
/// still shows online (within 45 s).
pub(crate) const LAST_SEEN_GRANULARITY_SECS: i64 = 20;

/// A new secret and the hash to store.
pub fn new_secret() -> (String, Vec<u8>) {
    tokens::new_refresh()
}

/// The hash stored for a secret or an enrollment token.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    tokens::hash_refresh(secret)
}

/// An authenticated, unrevoked agent.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub id: Uuid,
    pub name: String,
    pub ip: Option<IpAddr>,
}

impl AgentCaller {
    /// The actor name in the audit log.
    pub fn actor(&self) -> String {
        format!("agent:{}", self.id)
    }

    /// An audit event by this agent.
    pub fn event(&self, action: &str, target: impl Into<String>) -> Event {
        Event::new(self.actor(), action, target, self.ip).authenticated()
    }
}

/// Splits `<uuid>.<secret>`; `None` when it is not of that shape.
fn parse(credential: &str) -> Option<(Uuid, &str)> {
    let (id, secret) = credential.split_once('.')?;
    let id = Uuid::parse_str(id).ok()?;
    (!secret.is_empty() && !secret.contains('.')).then_some((id, secret))
}

/// A JWT has three base64url parts; its header starts with `eyJ` (`{"`).
fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let ip = client_ip(parts);
        let path = parts.uri.path().to_owned();
        let refuse = async |actor: String, code: &'static str, detail: &str| {
            Event::new(actor, "agent.auth", &path, ip)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "reason": code }))
                .record_refusal(state)
                .await;
            ApiError::unauthorized(code, detail)
        };
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "missing_credential",
                "send `Authorization: Bearer <agent id>.<secret>`, the credential from \
                 POST /api/v1/agents/enroll",
            ));
        };
        if looks_like_jwt(token) {
            return Err(refuse(
                "anonymous".into(),
                "user_token_refused",
                "this listener accepts only agent credentials; user tokens are for the API listener",
            )
            .await);
        }
        let Some((id, secret)) = parse(token) else {
            return Err(refuse(
                "anonymous".into(),
                "invalid_credential",
                "the agent credential is not of the form <agent id>.<secret>",
            )
            .await);
        };
        // Fails closed: if the agent cannot be checked, the request is refused.
        let row = sqlx::query(
            "SELECT name, secret_hash, revoked_at IS NOT NULL AS revoked, last_seen_at \
             FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot check an agent credential; refusing the request");
            ApiError::Unavailable {
                detail: "cannot verify the agent credential right now; try again shortly".into(),
            }
        })?;
        let presented = hash_secret(secret);
        // An unknown id still costs a comparison, against a hash nobody has.
        let stored: Vec<u8> = row
            .as_ref()
            .map_or_else(|| vec![0u8; presented.len()], |r| r.get("secret_hash"));
        let matches = bool::from(stored.ct_eq(&presented)) && row.is_some();
        let actor = format!("agent:{id}");
        let Some(row) = row.filter(|_| matches) else {
            return Err(refuse(
                actor,
                "invalid_credential",
                "the agent credential is not valid",
            )
            .await);
        };
        if row.get::<bool, _>("revoked") {
            return Err(refuse(
                actor,
                "agent_revoked",
                "this agent was revoked; enroll it again with a new enrollment token",
            )
            .await);
        }
        let last_seen: Option<DateTime<Utc>> = row.get("last_seen_at");
        if last_seen.is_none_or(|t| (Utc::now() - t).num_seconds() >= LAST_SEEN_GRANULARITY_SECS) {
            touch(state, id).await;
        }
        Ok(AgentCaller {
            id,
            name: row.get("name"),
            ip,
        })
    }
}

/// Records that the agent was seen; a failure only delays its "online" status.
async fn touch(state: &AppState, id: Uuid) {
    if let Err(e) = sqlx::query(&format!(
        "{ASYNC_COMMIT}UPDATE agents SET last_seen_at = now() FROM async_commit WHERE id = $1"
    ))
    .bind(id)
    .execute(&state.pool)
    .await
    {
        tracing::warn!(error = %e, agent = %id, "could not record that the agent was seen");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_only_in_their_own_shape() {
        let id = Uuid::new_v4();
        assert_eq!(parse(&format!("{id}.s3cret")), Some((id, "s3cret")));
        assert_eq!(parse(&format!("{id}.")), None);
        assert_eq!(parse("not-a-uuid.s3cret"), None);
        assert_eq!(parse(&format!("{id}")), None);
        assert_eq!(parse(&format!("{id}.a.b")), None);
    }

    #[test]
    fn user_tokens_are_recognised() {
        let keys = tokens::JwtKeys::from_secret(&[3u8; 32]).unwrap();
        let (jwt, _) = keys.issue_access(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        assert!(looks_like_jwt(&jwt));
        let (secret, _) = new_secret();
        assert!(!looks_like_jwt(&format!("{}.{secret}", Uuid::new_v4())));
    }

    #[test]
    fn secrets_hash_stably_and_differ() {
        let (a, hash) = new_secret();
        let (b, _) = new_secret();
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a), hash);
        assert_eq!(hash.len(), 32);
    }
}
