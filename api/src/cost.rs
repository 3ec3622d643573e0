//! What the agents' series cost per month, before and after promoted
//! pipelines — from measurements only, each naming where it comes from.
//!
//! Per unrevoked agent:
//! - *current*: the series it sends outside experiments (its live
//!   pipeline), measured now — those with a sample within Prometheus's
//!   lookback (5 minutes) and no staleness marker since (agents mark the
//!   series they stop sending), without a Pushgateway's bookkeeping
//!   series, which agents may not write:
//!   `count by (agent) ({__name__!~"push_time_seconds|push_failure_time_seconds",job="phoenix-agent",experiment="none"})`;
//! - with a promoted experiment (the latest one that targeted the agent):
//!   *before* is the agent's baseline series measured in that experiment;
//!   *after* is the current series, or — while the agent sends no live
//!   series — the candidate series measured in that experiment;
//! - without one: before = after = current.
//!
//! Cost = series × the configured price per series and month; savings % =
//! 100 × (1 − after ÷ before).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::kpi::{Kpis, Prometheus};
use crate::push_group::{JOB, NONE, PUSHGATEWAY_META};

/// The query for the series every agent sends with its live pipeline.
pub fn current_series_query() -> String {
    format!(
        "count by (agent) ({{__name__!~\"{PUSHGATEWAY_META}\",job=\"{JOB}\",experiment=\"{NONE}\"}})"
    )
}

/// Where a figure was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The agent's live series, measured for this answer.
    Live,
    /// The baseline variant of the promoted experiment.
    ExperimentBaseline,
    /// The candidate variant of the promoted experiment.
    ExperimentCandidate,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Figure {
    pub series: u64,
    pub cost_per_month: f64,
    pub source: Source,
    /// The experiment measured, for experiment sources.
    pub experiment_id: Option<Uuid>,
    pub measured_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromotedExperiment {
    pub id: Uuid,
    pub name: String,
    pub promoted_at: DateTime<Utc>,
    /// When its KPIs were measured.
    pub measured_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentCost {
    pub agent_id: Uuid,
    pub agent_name: String,
    /// Live series now.
    pub current_series: u64,
    /// The latest promoted experiment that targeted this agent.
    pub promoted_experiment: Option<PromotedExperiment>,
    pub before: Figure,
    pub after: Figure,
    pub savings_per_month: f64,
    pub savings_pct: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostTotals {
    pub before_series: u64,
    pub after_series: u64,
    pub before_cost_per_month: f64,
    pub after_cost_per_month: f64,
    pub savings_per_month: f64,
    pub savings_pct: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostSummary {
    /// When the live series were measured.
    pub measured_at: DateTime<Utc>,
    pub price_per_series_month: f64,
    /// The PromQL query of the live series.
    pub current_series_query: String,
    pub agents: Vec<AgentCost>,
    pub total: CostTotals,
}

fn savings_pct(before: u64, after: u64) -> f64 {
    crate::kpi::reduction_pct(before, after)
}

/// Series and dollars per month before and after promoted pipelines, per
/// agent and in total.
#[utoipa::path(get, path = "/api/v1/cost/summary", tag = "cost",
    responses((status = 200, body = CostSummary), (status = 401),
        (status = 503, description = "Prometheus is not configured or not reachable")),
    security(("bearer" = [])))]
pub async fn summary(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<CostSummary>> {
    let price = state.settings.price_per_series_month;
    let agents = sqlx::query(
        "SELECT id, name FROM agents WHERE revoked_at IS NULL ORDER BY lower(name), id",
    )
    .fetch_all(&state.pool)
    .await?;
    let promoted = sqlx::query(
        "SELECT DISTINCT ON (agent) agent, e.id, e.name, e.kpis, ev.at AS promoted_at \
         FROM experiments e CROSS JOIN LATERAL unnest(e.agent_ids) AS agent \
         JOIN experiment_events ev ON ev.experiment_id = e.id AND ev.to_state = 'promoted' \
         WHERE e.state = 'promoted' AND e.kpis IS NOT NULL \
         ORDER BY agent, ev.at DESC",
    )
    .fetch_all(&state.pool)
    .await?;
    let mut promoted_by_agent = BTreeMap::new();
    for row in promoted {
        let kpis: Kpis = serde_json::from_value(row.get("kpis"))
            .map_err(|e| anyhow::anyhow!("stored KPIs do not parse: {e}"))?;
        let experiment = PromotedExperiment {
            id: row.get("id"),
            name: row.get("name"),
            promoted_at: row.get("promoted_at"),
            measured_at: kpis.measured_at,
        };
        promoted_by_agent.insert(row.get::<Uuid, _>("agent"), (experiment, kpis));
    }

    let query = current_series_query();
    let prometheus = Prometheus::from_settings(&state.settings).map_err(unavailable)?;
    let measured_at = Utc::now();
    let current = prometheus
        .by_agent(&query, Some(measured_at))
        .await
        .map_err(unavailable)?;

    let figure = |series: u64, source, experiment_id, measured_at| Figure {
        series,
        cost_per_month: series as f64 * price,
        source,
        experiment_id,
        measured_at,
    };
    let mut rows = Vec::with_capacity(agents.len());
    for agent in agents {
        let id: Uuid = agent.get("id");
        let current_series = current.get(&id).copied().unwrap_or(0.0).round() as u64;
        let live = figure(current_series, Source::Live, None, measured_at);
        let (promoted_experiment, before, after) = match promoted_by_agent.remove(&id) {
            None => (None, live.clone(), live),
            Some((experiment, kpis)) => {
                let of = |by_agent: &BTreeMap<Uuid, u64>| by_agent.get(&id).copied().unwrap_or(0);
                let before = figure(
                    of(&kpis.baseline.series_by_agent),
                    Source::ExperimentBaseline,
                    Some(experiment.id),
                    kpis.measured_at,
                );
                let after = if current_series > 0 {
                    live
                } else {
                    figure(
                        of(&kpis.candidate.series_by_agent),
                        Source::ExperimentCandidate,
                        Some(experiment.id),
                        kpis.measured_at,
                    )
                };
                (Some(experiment), before, after)
            }
        };
        rows.push(AgentCost {
            agent_id: id,
            agent_name: agent.get("name"),
            current_series,
            promoted_experiment,
            savings_per_month: before.cost_per_month - after.cost_per_month,
            savings_pct: savings_pct(before.series, after.series),
            before,
            after,
        });
    }
    let before_series: u64 = rows.iter().map(|a| a.before.series).sum();
    let after_series: u64 = rows.iter().map(|a| a.after.series).sum();
    let total = CostTotals {
        before_series,
        after_series,
        before_cost_per_month: before_series as f64 * price,
        after_cost_per_month: after_series as f64 * price,
        savings_per_month: (before_series as f64 - after_series as f64) * price,
        savings_pct: savings_pct(before_series, after_series),
    };
    Ok(Json(CostSummary {
        measured_at,
        price_per_series_month: price,
        current_series_query: query,
        agents: rows,
        total,
    }))
}

fn unavailable(e: crate::kpi::MeasureError) -> ApiError {
    ApiError::Unavailable {
        detail: format!("cannot measure the current series: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_series_are_those_outside_experiments_without_pushgateway_series() {
        assert_eq!(
            current_series_query(),
            "count by (agent) ({__name__!~\"push_time_seconds|push_failure_time_seconds\",\
             job=\"phoenix-agent\",experiment=\"none\"})"
        );
        assert_eq!(savings_pct(200, 22), 89.0);
        assert_eq!(savings_pct(0, 0), 0.0);
    }
}
