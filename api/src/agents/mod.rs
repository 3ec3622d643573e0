//! Agents: enrollment, credentials, the registry people see, heartbeats,
//! metric writes, and the housekeeping that keeps leases and series counts
//! tidy.
//!
//! Code map:
//! - [`enrollment`]: enrollment tokens (admin, user listener) and
//!   `POST /api/v1/agents/enroll` (agent listener).
//! - [`registry`]: list, detail and revocation (user listener); heartbeat
//!   (agent listener).
//! - [`write`]: remote-write batches, the agents' metric path, forwarded
//!   to the remote-write receiver; [`remote_write`]: their validation and
//!   relabelling, pure; [`forward`]: the one way batches reach the
//!   receiver, coalesced when it falls behind.
//! - [`names`]: metric and label name syntax and the reserved names, pure.
//! - [`batch`]: the group a batch is for and whether its experiment takes
//!   it, the bounded body, the refusals.
//!
//! Agent credentials and the [`AgentCaller`](crate::auth::AgentCaller)
//! extractor, the only way a handler on the agent listener learns who
//! calls, are in [`crate::auth::agent`], below this module and [`crate::tasks`].
//!
//! Boundary: the agent listener serves only handlers that take an
//! `AgentCaller` (or enrollment, which takes a token); the user listener
//! only handlers that take a [`crate::auth::Caller`]. A user token is
//! refused on the agent listener and an agent credential on the user one.

pub mod batch;
pub mod enrollment;
pub mod forward;
pub mod names;
pub mod registry;
pub mod remote_write;
pub mod write;

use std::time::Duration;

use phoenix_wire::agent::TaskState;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::error::{ApiError, ApiResult};
use crate::shutdown::Shutdown;
use crate::{AppState, tasks};

/// How often agents send a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// An agent seen within this window (three heartbeats) is online.
pub const ONLINE_WINDOW: Duration = Duration::from_secs(45);

/// How often expired leases are swept for all agents (a poll sweeps its own
/// agent's at once).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the gauges are refreshed and the series counts of revoked
/// agents and ended experiments are forgotten.
const REFRESH_INTERVAL: Duration = Duration::from_secs(15);

/// Free text a person wrote: 1 to `max_chars` characters, not blank, no
/// control characters (which would be invisible in listings and logs).
/// Anything else, quotes and SQL-looking text included, is kept verbatim.
pub(crate) fn check_text(
    code: &'static str,
    field: &str,
    value: &str,
    max_chars: usize,
) -> ApiResult<()> {
    let length = value.chars().count();
    if value.trim().is_empty() || length > max_chars || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            code,
            format!(
                "{field} must be 1 to {max_chars} characters, not blank, without control characters"
            ),
        ));
    }
    Ok(())
}

/// The `agent` security scheme of the OpenAPI document.
pub struct AgentCredentialScheme;

impl utoipa::Modify for AgentCredentialScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "agent",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<agent id>.<secret>")
                    .description(Some(
                        "The credential returned once by POST /api/v1/agents/enroll; \
                         accepted only on the agent listener (port 6700)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Starts the background work of agents and tasks: task notifications and
/// housekeeping, both ending at shutdown.
pub fn spawn_background(state: &AppState, shutdown: &Shutdown) {
    tokio::spawn(tasks::wake::listen(state.pool.clone(), shutdown.clone()));
    let (state, shutdown) = (state.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = housekeeping(state) => {}
            () = shutdown.requested() => {}
        }
    });
}

/// Sweeps expired leases, refreshes the gauges, forgets the series counts
/// of groups no longer written, and the login counts no longer needed.
/// Every replica refreshes its own gauges; the rest is done by the one
/// holding the singleton lock (each step would still be safe twice).
async fn housekeeping(state: AppState) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refresh_every = (REFRESH_INTERVAL.as_secs() / SWEEP_INTERVAL.as_secs()).max(1);
    let mut tick: u64 = 0;
    loop {
        ticker.tick().await;
        let leader = state.leader.holds();
        if leader && let Err(error) = tasks::requeue_expired_leases(&state.pool, None).await {
            tracing::warn!(%error, "could not sweep expired task leases");
        }
        if tick.is_multiple_of(refresh_every) {
            if let Err(error) = refresh_gauges(&state).await {
                tracing::warn!(%error, "could not refresh the agent and task gauges");
            }
            if leader && let Err(error) = crate::auth::limiter::prune_shared(&state.pool).await {
                tracing::warn!(%error, "could not forget the shared login failures");
            }
            if leader && let Err(error) = forget_stale_groups(&state).await {
                tracing::warn!(%error, "could not forget the series counts of ended groups");
            }
        }
        tick += 1;
    }
}

/// Forgets the series counts (`agent_metric_groups`, summed as the agents
/// listing's `pushed_series`) of revoked agents and of experiments that no
/// longer take batches. A late batch of an ended experiment may record its
/// group again; the next sweep forgets it.
async fn forget_stale_groups(state: &AppState) -> sqlx::Result<u64> {
    let writing: Vec<&str> = crate::experiment_state::State::ALL
        .into_iter()
        .filter(|s| s.agents_push())
        .map(crate::experiment_state::State::as_str)
        .collect();
    let gone = sqlx::query(
        "DELETE FROM agent_metric_groups g USING agents a \
         WHERE a.id = g.agent_id AND (a.revoked_at IS NOT NULL OR (g.experiment <> $2 \
           AND NOT EXISTS (SELECT 1 FROM experiments e \
                           WHERE e.id::text = g.experiment AND e.state = ANY ($1))))",
    )
    .bind(writing)
    .bind(crate::push_group::NONE)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if gone > 0 {
        state.recorded_groups.clear();
        tracing::info!(
            groups = gone,
            "forgot the series counts of revoked agents and ended experiments"
        );
    }
    Ok(gone)
}

async fn refresh_gauges(state: &AppState) -> sqlx::Result<()> {
    let (connected, offline): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_seen_at > now() - make_interval(secs => $1)), \
                count(*) FILTER (WHERE last_seen_at IS NULL \
                                    OR last_seen_at <= now() - make_interval(secs => $1)) \
         FROM agents WHERE revoked_at IS NULL",
    )
    .bind(ONLINE_WINDOW.as_secs_f64())
    .fetch_one(&state.pool)
    .await?;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM tasks GROUP BY state")
            .fetch_all(&state.pool)
            .await?;
    state.metrics.set_agents_connected(connected);
    state.metrics.set_agents_offline(offline);
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&state.pool)
        .await?;
    state.metrics.set_database_size(size);
    for task_state in TaskState::ALL.map(TaskState::as_str) {
        let n = counts
            .iter()
            .find(|(s, _)| s == task_state)
            .map_or(0, |(_, n)| *n);
        state.metrics.set_tasks(task_state, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_is_touched_less_often_than_heartbeats_and_keeps_a_poller_online() {
        // Requests other than heartbeats write last_seen_at at most once per
        // granularity: longer than a heartbeat interval (so an agent that
        // heartbeats on time is not touched by them), well within the
        // online window (so an agent that only polls stays online).
        let granularity = crate::auth::agent::LAST_SEEN_GRANULARITY_SECS as u64;
        assert!(granularity > HEARTBEAT_INTERVAL.as_secs());
        assert!(2 * granularity <= ONLINE_WINDOW.as_secs());
        assert!(3 * HEARTBEAT_INTERVAL <= ONLINE_WINDOW);
    }
}
