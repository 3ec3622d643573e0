//! The append-only audit log: every mutating call and every authentication
//! event, with actor, action, target, time, source IP and outcome.
//!
//! What one request can write is bounded: every text is cut to a bound
//! ([`MAX_TEXT_CHARS`], strings in `details` to [`MAX_DETAIL_CHARS`]), and
//! refusals go through [`refusals`], which sums repeated ones from one
//! source into one row per window. Old months are dropped whole by
//! [`retention`]; no row is ever changed.

pub mod refusals;
pub mod retention;

use std::borrow::Cow;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// Refused: bad credentials, missing permission, rate limit.
    Denied,
    /// Attempted but failed (invalid input, conflict, error).
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// Longest actor, action or target stored, in characters; a longer one is
/// cut, ending in a marker with its full length.
pub const MAX_TEXT_CHARS: usize = 256;

/// Longest string (or key) stored inside `details`, in characters.
pub const MAX_DETAIL_CHARS: usize = 1024;

/// `text` cut to `max` characters (on a character boundary), the cut
/// marked with the original length, e.g. `/api/v1/agents/xxx…[60000 chars]`.
/// NUL, which PostgreSQL cannot store, becomes U+FFFD.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    let text = if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    };
    let chars = text.chars().count();
    if chars <= max {
        return text;
    }
    let marker = format!("…[{chars} chars]");
    let keep = max.saturating_sub(marker.chars().count());
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    Cow::Owned(format!("{}{marker}", &text[..end]))
}

/// `details` with every string and key bounded by [`MAX_DETAIL_CHARS`].
fn bounded_details(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(bounded(s, MAX_DETAIL_CHARS).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(bounded_details).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        bounded(k, MAX_DETAIL_CHARS).into_owned(),
                        bounded_details(v),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
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
    /// How many events the entry stands for (more than one for summed refusals).
    count: u64,
    /// Whether the actor was authenticated (a user's session, an agent's
    /// credential) rather than named by the request; see [`refusals`].
    authenticated: bool,
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
            count: 1,
            authenticated: false,
        }
    }

    /// Marks the actor as authenticated, not merely named by the request.
    pub fn authenticated(mut self) -> Self {
        self.authenticated = true;
        self
    }

    /// The same event with every text bounded (see [`bounded`]).
    fn bounded(mut self) -> Self {
        for text in [&mut self.actor, &mut self.action, &mut self.target] {
            if let Cow::Owned(cut) = bounded(text, MAX_TEXT_CHARS) {
                *text = cut;
            }
        }
        self.details = bounded_details(&self.details);
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Write the entry, its texts bounded; pass a transaction to commit it
    /// with the change it records.
    pub async fn record<'e>(&self, exec: impl PgExecutor<'e>) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, target, source_ip, outcome, details, count) \
             VALUES ($1, $2, $3, $4::inet, $5, $6, $7)",
        )
        .bind(bounded(&self.actor, MAX_TEXT_CHARS))
        .bind(bounded(&self.action, MAX_TEXT_CHARS))
        .bind(bounded(&self.target, MAX_TEXT_CHARS))
        .bind(self.source_ip.map(|ip| ip.to_string()))
        .bind(self.outcome.as_str())
        .bind(bounded_details(&self.details))
        .bind(i64::try_from(self.count).unwrap_or(i64::MAX))
        .execute(exec)
        .await
        .map(drop)
    }

    /// Record a refusal: the first of its kind from its source in a window
    /// is written at once, the repeats are summed into one entry written
    /// when the window ends (see [`refusals`]). A failure to write is
    /// logged, since the request is refused either way.
    pub async fn record_refusal(&self, state: &AppState) {
        if let Some(event) = state.audit.refusals.admit(self.clone()) {
            event.write_logged(&state.pool).await;
        }
    }

    /// Write outside any transaction, logging a failure.
    async fn write_logged(&self, pool: &sqlx::PgPool) {
        if let Err(e) = self.record(pool).await {
            tracing::error!(error = %e, action = %self.action, "could not write an audit entry");
        }
    }
}

/// The audit log's shared state: the refusals being summed and the
/// housekeeping's wake-up.
#[derive(Debug, Default)]
pub struct AuditState {
    pub refusals: refusals::Refusals,
    /// Wakes the housekeeping at once (after the retention changed).
    pub housekeeping: tokio::sync::Notify,
}

/// Starts the audit log's background work: writing summed refusals when
/// their window ends, and the housekeeping of partitions. Both end at
/// shutdown; the refusals still pending are written by [`flush_refusals`].
pub fn spawn_background(state: &AppState, shutdown: &crate::shutdown::Shutdown) {
    let (pool, audit) = (state.pool.clone(), state.audit.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let write = |event: Event| {
            let pool = pool.clone();
            async move { event.write_logged(&pool).await }
        };
        refusals::run(&audit.refusals, stop.requested(), write).await;
    });
    tokio::spawn(retention::run(state.clone(), shutdown.clone()));
}

/// Writes every refusal still being summed; at shutdown, once no request
/// can add one.
pub async fn flush_refusals(state: &AppState) {
    for event in state.audit.refusals.drain() {
        event.write_logged(&state.pool).await;
    }
}
