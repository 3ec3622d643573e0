//! Curves over time, read from Prometheus: an experiment's baseline against
//! its candidate, and the agents' live series against what they sent before
//! their promoted pipelines. The console draws them; tools get the same
//! figures as JSON.
//!
//! Every chart names its PromQL. An experiment's window runs from when its
//! pipelines were sent (`deploy_started_at`) to its end, or to now while it
//! runs; the step is a 120th of the window, at least 5 s.

use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::experiment_state::State as ExperimentState;
use crate::experiments::Experiment;
use crate::input::{Json, Path, Query};
use crate::kpi::{MeasureError, Prometheus};
use crate::push_group::{JOB, NONE, PUSHGATEWAY_META};
use phoenix_wire::pipeline::{PROCESS_CPU_METRIC, PROCESS_MEMORY_METRIC};

/// Points per chart, about.
const POINTS: i64 = 120;
const MIN_STEP: Duration = Duration::from_secs(5);

/// What a chart's values count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Series,
    SamplesPerSecond,
    /// Percent of one core, summed over processes.
    CpuPercent,
    Bytes,
}

/// One line of a chart.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Line {
    /// `baseline`, `candidate`, `after` (live series) or `before`.
    pub name: String,
    /// `[unix seconds, value]`, oldest first; gaps are missing points.
    pub points: Vec<(f64, f64)>,
}

impl Line {
    /// The newest value.
    pub fn last(&self) -> Option<f64> {
        self.points.last().map(|p| p.1)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chart {
    /// A stable name: `series`, `samples_per_second`, `cpu`, `memory`,
    /// `live_series`.
    pub id: &'static str,
    pub title: String,
    pub unit: Unit,
    pub lines: Vec<Line>,
    pub promql: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Charts {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub step_seconds: u64,
    pub charts: Vec<Chart>,
    /// Why there is nothing to draw yet, if so.
    pub note: Option<String>,
}

fn step_for(start: DateTime<Utc>, end: DateTime<Utc>) -> Duration {
    let span = (end - start).num_seconds().max(1);
    Duration::from_secs((span / POINTS).max(MIN_STEP.as_secs() as i64) as u64)
}

fn unavailable(e: MeasureError) -> ApiError {
    ApiError::Unavailable {
        detail: format!("cannot read the charts from Prometheus: {e}"),
    }
}

/// `baseline` and `candidate` lines of `promql`, which groups by variant.
async fn variant_chart(
    prometheus: &Prometheus,
    (id, title, unit): (&'static str, &str, Unit),
    promql: String,
    (start, end, step): (DateTime<Utc>, DateTime<Utc>, Duration),
) -> Result<Chart, MeasureError> {
    let found = prometheus.query_range(&promql, start, end, step).await?;
    let lines = ["baseline", "candidate"]
        .into_iter()
        .map(|variant| Line {
            name: variant.to_owned(),
            points: found
                .iter()
                .find(|s| s.labels.get("variant").map(String::as_str) == Some(variant))
                .map(|s| s.points.clone())
                .unwrap_or_default(),
        })
        .collect();
    Ok(Chart {
        id,
        title: title.to_owned(),
        unit,
        lines,
        promql,
    })
}

/// The queries of an experiment's charts, each grouped by variant.
pub fn experiment_queries(
    experiment: Uuid,
    step: Duration,
) -> [(&'static str, &'static str, Unit, String); 4] {
    let labels = format!("job=\"{JOB}\",experiment=\"{experiment}\"");
    let samples = |metric: &str| {
        format!(
            "sum by (variant) (count_over_time({{__name__=\"{metric}\",{labels}}}[{}s]))",
            step.as_secs()
        )
    };
    [
        (
            "series",
            "Series",
            Unit::Series,
            format!("count by (variant) ({{__name__!~\"{PUSHGATEWAY_META}\",{labels}}})"),
        ),
        (
            "samples_per_second",
            "Samples per second",
            Unit::SamplesPerSecond,
            format!(
                "({} + {}) / {}",
                samples(PROCESS_CPU_METRIC),
                samples(PROCESS_MEMORY_METRIC),
                step.as_secs()
            ),
        ),
        (
            "cpu",
            "Host CPU, all processes",
            Unit::CpuPercent,
            format!("sum by (variant) ({PROCESS_CPU_METRIC}{{{labels}}})"),
        ),
        (
            "memory",
            "Host memory, all processes",
            Unit::Bytes,
            format!("sum by (variant) ({PROCESS_MEMORY_METRIC}{{{labels}}})"),
        ),
    ]
}

/// The charts of experiment `e`.
pub async fn experiment_charts(state: &AppState, e: &Experiment) -> ApiResult<Charts> {
    let now = Utc::now();
    let Some(start) = e.deploy_started_at else {
        return Ok(Charts {
            start: now,
            end: now,
            step_seconds: MIN_STEP.as_secs(),
            charts: Vec::new(),
            note: Some("the experiment has not started; its charts begin when it does".into()),
        });
    };
    // While it runs, up to now; after, up to its end (or when it stopped).
    let end = match e.state {
        ExperimentState::Deploying | ExperimentState::Running => now,
        _ => e.ends_at.unwrap_or(e.updated_at).min(e.updated_at).min(now),
    }
    .max(start + chrono::Duration::seconds(1));
    let step = step_for(start, end);
    let prometheus = Prometheus::from_settings(&state.settings).map_err(unavailable)?;
    let mut charts = Vec::new();
    for (chart, title, unit, promql) in experiment_queries(e.id, step) {
        charts.push(
            variant_chart(
                &prometheus,
                (chart, title, unit),
                promql,
                (start, end, step),
            )
            .await
            .map_err(unavailable)?,
        );
    }
    Ok(Charts {
        start,
        end,
        step_seconds: step.as_secs(),
        charts,
        note: None,
    })
}

/// Baseline against candidate over the experiment's window: series,
/// samples per second, and the host's CPU and memory totals.
#[utoipa::path(get, path = "/api/v1/experiments/{id}/charts", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Charts), (status = 401), (status = 404),
        (status = 503, description = "Prometheus is not configured or not reachable")),
    security(("bearer" = [])))]
pub async fn experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Charts>> {
    let detail = crate::experiments::get(State(state.clone()), caller, Path(id)).await?;
    Ok(Json(experiment_charts(&state, &detail.0.experiment).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// How far back, in hours (default 24, at most 720).
    #[param(minimum = 1, maximum = 720)]
    pub hours: Option<i64>,
}

/// The query of the live series of all agents together.
pub fn live_series_total_query() -> String {
    format!("count({{__name__!~\"{PUSHGATEWAY_META}\",job=\"{JOB}\",experiment=\"{NONE}\"}})")
}

/// The agents' live series over the last `hours`, and, as a level, the
/// series they sent before their promoted pipelines (`before`, from the
/// cost summary's figures).
pub async fn cost_history(state: &AppState, hours: i64, before: Option<u64>) -> ApiResult<Charts> {
    if !(1..=720).contains(&hours) {
        return Err(ApiError::bad_request(
            "invalid_hours",
            "hours must be between 1 and 720",
        ));
    }
    let end = Utc::now();
    let start = end - chrono::Duration::hours(hours);
    let step = step_for(start, end);
    let prometheus = Prometheus::from_settings(&state.settings).map_err(unavailable)?;
    let promql = live_series_total_query();
    let found = prometheus
        .query_range(&promql, start, end, step)
        .await
        .map_err(unavailable)?;
    let after = found
        .into_iter()
        .next()
        .map(|s| s.points)
        .unwrap_or_default();
    let mut lines = Vec::new();
    if let Some(before) = before {
        lines.push(Line {
            name: "before".into(),
            points: after.iter().map(|&(t, _)| (t, before as f64)).collect(),
        });
    }
    lines.push(Line {
        name: "after".into(),
        points: after,
    });
    Ok(Charts {
        start,
        end,
        step_seconds: step.as_secs(),
        charts: vec![Chart {
            id: "live_series",
            title: "Series sent by all agents".into(),
            unit: Unit::Series,
            lines,
            promql,
        }],
        note: None,
    })
}

/// The agents' live series over time, with the level they sent before
/// their promoted pipelines: the gap is the saving.
#[utoipa::path(get, path = "/api/v1/cost/history", tag = "cost", params(HistoryQuery),
    responses((status = 200, body = Charts), (status = 400), (status = 401),
        (status = 503, description = "Prometheus is not configured or not reachable")),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Charts>> {
    let summary = crate::cost::summary(State(state.clone()), caller).await?.0;
    let hours = q.hours.unwrap_or(24);
    Ok(Json(
        cost_history(&state, hours, Some(summary.total.before_series)).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_a_hundred_and_twentieth_of_the_window_and_at_least_five_seconds() {
        let start = Utc::now();
        assert_eq!(
            step_for(start, start + chrono::Duration::seconds(60)),
            MIN_STEP
        );
        assert_eq!(
            step_for(start, start + chrono::Duration::hours(24)),
            Duration::from_secs(720)
        );
    }

    #[test]
    fn experiment_queries_select_the_experiment_and_group_by_variant() {
        let id = Uuid::nil();
        for (_, _, _, promql) in experiment_queries(id, Duration::from_secs(15)) {
            assert!(promql.contains(&format!("experiment=\"{id}\"")), "{promql}");
            assert!(promql.contains("by (variant)"), "{promql}");
        }
    }
}
