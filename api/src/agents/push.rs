//! Agent metric pushes: validated, relabelled and forwarded to the
//! Pushgateway; and the deletion of an agent's Pushgateway groups.
//!
//! Agents now send their samples by remote write ([`super::write`]); this
//! route stays while agents move over, and shares its group rules, body
//! bound and refusals with it ([`super::batch`]).
//!
//! Relabelling is the Pushgateway's grouping key ([`crate::push_group`]): a
//! push goes to `/metrics/job/phoenix-agent/agent/<id>/experiment/<e>/variant/<v>`, and
//! the Pushgateway puts those labels on every series of the group (Prometheus
//! scrapes it with `honor_labels`). An agent cannot set them itself: the
//! validator refuses them in the body. Each group an agent pushed to is
//! remembered in `agent_metric_groups` *before* the push, so a group that
//! exists in the Pushgateway is always known and can be deleted when the
//! agent is revoked or its experiment ends.
//!
//! A deletion is `DELETE` of the group's URL (404 counts as done), then the
//! row goes — only if its `pushes` counter is what it was before the
//! `DELETE`: a push that landed meanwhile may have re-created the group, so
//! the row stays to be deleted again. The housekeeping deletes every 15 s
//! whatever is still known of revoked agents and of experiments no longer
//! pushed (`delete_stale_groups`): a deletion that failed while the
//! Pushgateway was down (it brings its groups back from its persistence
//! file), or a push accepted just before its experiment's transition.

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::batch::{
    self, CLIENT, GroupQuery, Late, Refusal, experiment_takes, read_body, record_group_series,
    unsupported_media_type,
};
use super::exposition;
use crate::AppState;
use crate::auth::AgentCaller;
use crate::error::ApiError;
use crate::experiment_state::State as ExperimentState;
use crate::input::{Json, Query};
use crate::push_group::group_url;

/// Largest push body. Larger than the JSON limit of the other routes: a
/// host with many processes has many series.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most series in one push.
pub const MAX_SERIES: usize = 50_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Pushed {
    /// Series now in the group (the push replaced the group's previous ones).
    pub series: usize,
    pub experiment: String,
    pub variant: String,
}

fn pushgateway(state: &AppState) -> Result<&url::Url, Refusal> {
    state.settings.pushgateway_url.as_ref().ok_or_else(|| {
        Refusal::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            "pushgateway_not_configured",
            "this API has no Pushgateway (--pushgateway-url); metrics cannot be accepted".into(),
        )
    })
}

/// Only the text format, uncompressed.
fn check_media_type(headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("text/plain") {
            return Err(unsupported_media_type(format!(
                "Content-Type {ct:?} is not accepted; send the Prometheus text format as \
                 `text/plain; version=0.0.4`"
            )));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(unsupported_media_type(
            "compressed bodies are not accepted".into(),
        ));
    }
    Ok(())
}

/// Push metrics in the Prometheus text format (agent listener). They replace
/// the agent's previous push to the same experiment and variant, and get the
/// labels `agent`, `experiment` and `variant` (and `job="phoenix-agent"`).
#[utoipa::path(put, path = "/api/v1/agent/metrics", tag = "agent", params(GroupQuery),
    request_body(content = String, content_type = "text/plain",
        description = "Prometheus text exposition format 0.0.4, at most 4 MiB and 50000 series, \
                       no timestamps, without the labels agent, experiment, variant, job, instance"),
    responses((status = 200, body = Pushed),
        (status = 400, description = "invalid body (the problem's `code` and `line` say why and where)"),
        (status = 401),
        (status = 409, description = "the experiment is not running, or this agent is not in it \
                                      (`experiment_not_running`, `not_in_experiment`): drop the batch"),
        (status = 413), (status = 415),
        (status = 502, description = "the Pushgateway failed"),
        (status = 503, description = "no Pushgateway configured")),
    security(("agent" = [])))]
pub async fn push(
    State(state): State<AppState>,
    agent: AgentCaller,
    Query(q): Query<GroupQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Pushed>, Refusal> {
    let (experiment, variant) = batch::group(q)?;
    check_media_type(&headers)?;
    let base = pushgateway(&state)?.clone();
    // Before reading the body: a refused batch costs no parsing.
    experiment_takes(&state, agent.id, &experiment, Late::Refused).await?;
    let bytes = read_body(&headers, body, MAX_BODY_BYTES).await?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Refusal::Api(ApiError::bad_request(
            "invalid_encoding",
            "the body must be UTF-8 text",
        ))
    })?;
    let summary = exposition::validate(&text, MAX_SERIES).map_err(|invalid| Refusal::Invalid {
        code: invalid.code,
        detail: invalid.to_string(),
        at: Some(("line", invalid.line)),
    })?;
    let url = group_url(&base, agent.id, &experiment, &variant).map_err(ApiError::Internal)?;

    // Known before it exists, so that it can always be deleted.
    sqlx::query(
        "INSERT INTO agent_metric_groups (agent_id, experiment, variant) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(agent.id)
    .bind(&experiment)
    .bind(&variant)
    .execute(&state.pool)
    .await?;

    let sent = CLIENT
        .put(url)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await;
    let response = sent.map_err(|e| {
        tracing::warn!(error = %e, agent = %agent.id, "the Pushgateway is not reachable");
        Refusal::Status(
            StatusCode::BAD_GATEWAY,
            "pushgateway_unavailable",
            "the Pushgateway did not answer; keep the batch and retry later".into(),
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        let message: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(500)
            .collect();
        let message = message.trim();
        return Err(if status.is_client_error() {
            // The body parsed here but not there, or clashes with what other
            // groups hold (e.g. the same metric with another type).
            Refusal::Api(ApiError::bad_request(
                "metrics_rejected",
                format!("the Pushgateway refused these metrics: {message}"),
            ))
        } else {
            tracing::warn!(%status, %message, agent = %agent.id, "the Pushgateway failed a push");
            Refusal::Status(
                StatusCode::BAD_GATEWAY,
                "pushgateway_error",
                format!("the Pushgateway answered {status}; keep the batch and retry later"),
            )
        });
    }
    record_group_series(&state, agent.id, &experiment, &variant, summary.series).await?;
    Ok(Json(Pushed {
        series: summary.series,
        experiment,
        variant,
    }))
}

/// Deletes one group from the Pushgateway, then forgets it — unless a push
/// to it landed meanwhile (`pushes` moved on), which may have re-created it:
/// then the row stays and the sweep ([`delete_stale_groups`]) tries again.
async fn delete_group(
    state: &AppState,
    agent: Uuid,
    experiment: &str,
    variant: &str,
) -> anyhow::Result<()> {
    let seen: Option<i64> = sqlx::query_scalar(
        "SELECT pushes FROM agent_metric_groups \
         WHERE agent_id = $1 AND experiment = $2 AND variant = $3",
    )
    .bind(agent)
    .bind(experiment)
    .bind(variant)
    .fetch_optional(&state.pool)
    .await?;
    let Some(seen) = seen else {
        return Ok(());
    };
    if let Some(base) = &state.settings.pushgateway_url {
        let url = group_url(base, agent, experiment, variant)?;
        let response = CLIENT
            .delete(url.clone())
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        anyhow::ensure!(
            response.status().is_success() || response.status() == StatusCode::NOT_FOUND,
            "DELETE {url} answered {}",
            response.status()
        );
    }
    sqlx::query(
        "DELETE FROM agent_metric_groups \
         WHERE agent_id = $1 AND experiment = $2 AND variant = $3 AND pushes = $4",
    )
    .bind(agent)
    .bind(experiment)
    .bind(variant)
    .bind(seen)
    .execute(&state.pool)
    .await?;
    Ok(())
}

/// Deletes the groups a query selects (rows of agent_id, experiment,
/// variant); tries every group, returns how many went, or the first error.
async fn delete_groups(
    state: &AppState,
    rows: Vec<sqlx::postgres::PgRow>,
) -> anyhow::Result<usize> {
    let mut deleted = 0;
    let mut first_error = None;
    for row in rows {
        let (agent, experiment, variant): (Uuid, String, String) = (
            row.get("agent_id"),
            row.get("experiment"),
            row.get("variant"),
        );
        match delete_group(state, agent, &experiment, &variant).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

/// Deletes every Pushgateway group of an agent (when it is revoked).
pub async fn delete_agent_groups(state: &AppState, agent: Uuid) -> anyhow::Result<usize> {
    let rows = sqlx::query(
        "SELECT agent_id, experiment, variant FROM agent_metric_groups WHERE agent_id = $1",
    )
    .bind(agent)
    .fetch_all(&state.pool)
    .await?;
    delete_groups(state, rows).await
}

/// Deletes every Pushgateway group of an experiment, all agents and
/// variants, when the experiment ends. `experiment` is the value agents send
/// as `?experiment=` (the experiment's id). Returns how many groups went.
pub async fn delete_experiment_groups(state: &AppState, experiment: &str) -> anyhow::Result<usize> {
    let rows = sqlx::query(
        "SELECT agent_id, experiment, variant FROM agent_metric_groups WHERE experiment = $1",
    )
    .bind(experiment)
    .fetch_all(&state.pool)
    .await?;
    delete_groups(state, rows).await
}

/// Deletes the groups that should not exist but are still known: those of
/// revoked agents and of experiments whose variants are no longer pushed —
/// a deletion that failed (the Pushgateway was down) or a push that raced
/// with it. The API's housekeeping runs it periodically.
pub async fn delete_stale_groups(state: &AppState) -> anyhow::Result<usize> {
    let pushing: Vec<&str> = ExperimentState::ALL
        .into_iter()
        .filter(|s| s.agents_push())
        .map(ExperimentState::as_str)
        .collect();
    let rows = sqlx::query(
        "SELECT g.agent_id, g.experiment, g.variant FROM agent_metric_groups g \
         JOIN agents a ON a.id = g.agent_id \
         LEFT JOIN experiments e ON e.id::text = g.experiment \
         WHERE a.revoked_at IS NOT NULL OR e.state <> ALL ($1)",
    )
    .bind(pushing)
    .fetch_all(&state.pool)
    .await?;
    delete_groups(state, rows).await
}
