//! Experiments: A/B comparisons of a baseline and a candidate pipeline on a
//! set of agents, moved through [`crate::experiment_state`] by operators
//! (start, stop, promote, rollback) and by the background driver
//! ([`driver`]).
//!
//! Code map:
//! - this module: the routes and their handlers, and [`Transition`], the one
//!   place a state is written.
//! - [`crate::experiment_state`] (a leaf outside this folder, since agents'
//!   pushes read it too): the state machine as a pure function with its
//!   table of allowed actions; no I/O.
//! - [`driver`]: the background task that advances experiments waiting on
//!   agents, on time or on their KPIs.
//!
//! *Invariant:* a state changes only in [`Transition::apply`], inside one
//! transaction that also writes the experiment event, the audit entry and
//! the tasks the change sends to agents, and only if the experiment is still
//! in the state the change was decided from — so two API replicas never
//! advance an experiment twice.
//!
//! What [`Transition::apply`] writes besides the state: the update is
//! `... WHERE id = $1 AND state = <from>`, and no row means nothing is
//! written (an operator gets 409 `concurrent_change`); `error` is kept only
//! by a move to `failed` and cleared by every other. Then, by the new state:
//!
//! | to | also, in the same transaction |
//! |---|---|
//! | deploying | under a transaction-scoped advisory lock, refuses a target agent that was revoked (`agents_revoked`) or is in another deploying, running or analyzing experiment (`agents_busy`); sets `deploy_started_at`; one `run_experiment` task per agent with `max_attempts` 1 |
//! | running | `started_at` = now, `ends_at` = now + duration |
//! | failed, stopped (from deploying or running) | cancels the queued `run_experiment` tasks and sends `stop_experiment` to every agent (from analyzing: no task) |
//! | completed | `kpis` and `recommendation` |
//! | promoted, rolled_back | `apply_pipeline` with the candidate, or the baseline, spec to every agent; the event's reason notes a decision against the recommendation |
//!
//! Every move also writes an `experiment_events` row (from, to, action,
//! actor, reason) and the audit entry `experiments.<action>`.

pub mod driver;

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Event, Outcome};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::experiment_state::{Action, State, allowed_actions, transition};
use crate::input::{Json, Path, Query, Rejection, json_body, page_limit};
use crate::kpi::{Kpis, Variant};
use crate::pipelines::validate_name;
use crate::tasks::{self, NewTask};
use phoenix_wire::pipeline::{PipelineSpec, task};

/// Default success criterion: at least this many percent fewer series.
pub const DEFAULT_MIN_REDUCTION_PCT: f64 = 70.0;
/// Default success criterion: host totals kept at least this accurately.
pub const DEFAULT_MIN_ACCURACY_PCT: f64 = 98.0;
/// Most target agents of one experiment.
pub const MAX_AGENTS: usize = 1000;
/// Longest experiment.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A baseline or candidate: a saved pipeline or a spec given inline.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineRef {
    /// A saved pipeline, whose spec is copied into the experiment.
    pub pipeline_id: Option<Uuid>,
    /// A pipeline given inline.
    #[schema(value_type = Option<PipelineSpec>)]
    pub spec: Option<serde_json::Value>,
}

/// A duration: seconds, or text like `30m` or `1h 30m`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationInput {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExperiment {
    pub name: String,
    pub baseline: PipelineRef,
    pub candidate: PipelineRef,
    /// Target agent ids: enrolled and not revoked.
    pub agents: Vec<Uuid>,
    /// How long both variants run once every agent has them.
    pub duration: DurationInput,
    /// Promote only with at least this many percent fewer series (default 70).
    #[serde(default = "default_min_reduction")]
    pub min_reduction_pct: f64,
    /// Promote only if host totals are kept at least this accurately, in
    /// percent (default 98).
    #[serde(default = "default_min_accuracy")]
    pub min_accuracy_pct: f64,
}

fn default_min_reduction() -> f64 {
    DEFAULT_MIN_REDUCTION_PCT
}

fn default_min_accuracy() -> f64 {
    DEFAULT_MIN_ACCURACY_PCT
}

/// A pipeline as an experiment uses it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineUse {
    /// The saved pipeline it was copied from, if any (and not deleted since).
    pub pipeline_id: Option<Uuid>,
    pub spec: PipelineSpec,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Experiment {
    pub id: Uuid,
    pub name: String,
    pub state: State,
    /// What an operator can do now.
    pub allowed_actions: Vec<Action>,
    pub baseline: PipelineUse,
    pub candidate: PipelineUse,
    pub agents: Vec<Uuid>,
    pub duration_seconds: i64,
    pub min_reduction_pct: f64,
    pub min_accuracy_pct: f64,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// When `start` sent the pipelines to the agents.
    pub deploy_started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Start of the measured window (every agent runs both variants).
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// End of the measured window.
    pub ends_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Measured once the window is over.
    pub kpis: Option<Kpis>,
    /// `promote` or `rollback`, from the KPIs and the success criteria.
    pub recommendation: Option<String>,
    /// Why it failed, or the last problem measuring it while that is retried.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentEvent {
    pub id: i64,
    /// Absent for the creation.
    pub from_state: Option<String>,
    pub to_state: String,
    pub action: String,
    /// `user:<name>` or `system:driver`.
    pub actor: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A task the experiment sent to an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentTask {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub kind: String,
    pub state: String,
    pub error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// An experiment with its history and its tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentDetail {
    #[serde(flatten)]
    pub experiment: Experiment,
    /// Every transition, oldest first.
    pub events: Vec<ExperimentEvent>,
    pub tasks: Vec<ExperimentTask>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExperimentQuery {
    /// Only experiments in this state.
    pub state: Option<State>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

const COLUMNS: &str = "id, name, state, baseline_pipeline_id, baseline_spec, \
    candidate_pipeline_id, candidate_spec, agent_ids, duration_seconds, min_reduction_pct, \
    min_accuracy_pct, created_by, created_at, updated_at, deploy_started_at, started_at, ends_at, \
    kpis, recommendation, error";

fn stored<T: serde::de::DeserializeOwned>(value: serde_json::Value, what: &str) -> ApiResult<T> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored {what} does not parse: {e}")))
}

fn experiment_from(row: &sqlx::postgres::PgRow) -> ApiResult<Experiment> {
    let state = State::parse(row.get::<&str, _>("state"))
        .ok_or_else(|| anyhow::anyhow!("unknown experiment state in the database"))?;
    let kpis: Option<serde_json::Value> = row.get("kpis");
    Ok(Experiment {
        id: row.get("id"),
        name: row.get("name"),
        state,
        allowed_actions: user_actions(state),
        baseline: PipelineUse {
            pipeline_id: row.get("baseline_pipeline_id"),
            spec: stored(row.get("baseline_spec"), "baseline spec")?,
        },
        candidate: PipelineUse {
            pipeline_id: row.get("candidate_pipeline_id"),
            spec: stored(row.get("candidate_spec"), "candidate spec")?,
        },
        agents: row.get("agent_ids"),
        duration_seconds: row.get::<i32, _>("duration_seconds").into(),
        min_reduction_pct: row.get("min_reduction_pct"),
        min_accuracy_pct: row.get("min_accuracy_pct"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        deploy_started_at: row.get("deploy_started_at"),
        started_at: row.get("started_at"),
        ends_at: row.get("ends_at"),
        kpis: kpis.map(|k| stored(k, "KPIs")).transpose()?,
        recommendation: row.get("recommendation"),
        error: row.get("error"),
    })
}

/// The actions an operator may take from `state`.
fn user_actions(state: State) -> Vec<Action> {
    allowed_actions(state)
        .into_iter()
        .filter(|a| a.by_user())
        .collect()
}

fn parse_duration(input: &DurationInput) -> ApiResult<Duration> {
    let duration = match input {
        DurationInput::Seconds(s) => Duration::from_secs(*s),
        DurationInput::Text(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(
                "invalid_duration",
                format!("`duration`: {e}; give seconds or text like \"30m\""),
            )
        })?,
    };
    if duration < Duration::from_secs(1) || duration > MAX_DURATION {
        return Err(ApiError::bad_request(
            "invalid_duration",
            "`duration` must be between 1 second and 30 days",
        ));
    }
    Ok(duration)
}

/// The spec a reference names, and the saved pipeline it came from.
async fn resolve(
    conn: &mut PgConnection,
    which: &str,
    r: &PipelineRef,
) -> ApiResult<(Option<Uuid>, PipelineSpec)> {
    match (r.pipeline_id, &r.spec) {
        (Some(id), None) => {
            let spec: serde_json::Value =
                sqlx::query_scalar("SELECT spec FROM pipelines WHERE id = $1")
                    .bind(id)
                    .fetch_optional(conn)
                    .await?
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "unknown_pipeline",
                            format!("`{which}`: there is no pipeline {id}"),
                        )
                    })?;
            Ok((Some(id), stored(spec, "pipeline spec")?))
        }
        (None, Some(spec)) => PipelineSpec::from_json(spec)
            .map(|spec| (None, spec))
            .map_err(|e| ApiError::bad_request(e.code, format!("`{which}`: {}", e.detail))),
        _ => Err(ApiError::bad_request(
            "invalid_pipeline_ref",
            format!("`{which}` needs exactly one of `pipeline_id` and `spec`"),
        )),
    }
}

/// Agents of `ids` that do not exist or are revoked.
async fn unusable_agents(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    let usable: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1) AND revoked_at IS NULL")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(ids
        .iter()
        .filter(|id| !usable.contains(id))
        .copied()
        .collect())
}

fn list_ids(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Define an experiment (operator); it waits in `created` until started.
#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments", request_body = NewExperiment,
    responses((status = 201, body = ExperimentDetail), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn create(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    body: Result<Json<NewExperiment>, Rejection>,
) -> ApiResult<(StatusCode, Json<ExperimentDetail>)> {
    caller
        .require(Role::Operator, "experiments.create", &state)
        .await?;
    let new = json_body(body)?;
    let name = validate_name(&new.name)?;
    let duration = parse_duration(&new.duration)?;
    for (field, value) in [
        ("min_reduction_pct", new.min_reduction_pct),
        ("min_accuracy_pct", new.min_accuracy_pct),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(ApiError::bad_request(
                "invalid_criteria",
                format!("`{field}` is a percentage between 0 and 100"),
            ));
        }
    }
    let mut agents = new.agents.clone();
    agents.sort();
    agents.dedup();
    if agents.is_empty() || agents.len() > MAX_AGENTS || agents.len() != new.agents.len() {
        return Err(ApiError::bad_request(
            "invalid_agents",
            format!("`agents` lists 1 to {MAX_AGENTS} different agent ids"),
        ));
    }
    let mut tx = state.pool.begin().await?;
    let (baseline_id, baseline) = resolve(&mut tx, "baseline", &new.baseline).await?;
    let (candidate_id, candidate) = resolve(&mut tx, "candidate", &new.candidate).await?;
    let unusable = unusable_agents(&mut tx, &new.agents).await?;
    if !unusable.is_empty() {
        return Err(ApiError::bad_request(
            "unknown_agents",
            format!(
                "these agents are not enrolled or are revoked: {}",
                list_ids(&unusable)
            ),
        ));
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO experiments (name, baseline_pipeline_id, baseline_spec, candidate_pipeline_id, \
         candidate_spec, agent_ids, duration_seconds, min_reduction_pct, min_accuracy_pct, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&name)
    .bind(baseline_id)
    .bind(serde_json::to_value(&baseline).map_err(anyhow::Error::from)?)
    .bind(candidate_id)
    .bind(serde_json::to_value(&candidate).map_err(anyhow::Error::from)?)
    .bind(&new.agents)
    .bind(duration.as_secs() as i32)
    .bind(new.min_reduction_pct)
    .bind(new.min_accuracy_pct)
    .bind(caller.actor())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO experiment_events (experiment_id, from_state, to_state, action, actor) \
         VALUES ($1, NULL, 'created', 'create', $2)",
    )
    .bind(id)
    .bind(caller.actor())
    .execute(&mut *tx)
    .await?;
    caller
        .event("experiments.create", format!("experiment:{id}"))
        .details(serde_json::json!({
            "name": name,
            "agents": new.agents,
            "duration_seconds": duration.as_secs(),
            "min_reduction_pct": new.min_reduction_pct,
            "min_accuracy_pct": new.min_accuracy_pct,
        }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail(&state, id).await?)))
}

/// Experiments, newest first.
#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", params(ExperimentQuery),
    responses((status = 200, body = [Experiment]), (status = 401)), security(("bearer" = [])))]
pub async fn list(
    AxumState(state): AxumState<AppState>,
    _caller: Caller,
    Query(q): Query<ExperimentQuery>,
) -> ApiResult<Json<Vec<Experiment>>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE ($1::text IS NULL OR state = $1) \
         ORDER BY created_at DESC, id LIMIT $2"
    ))
    .bind(q.state.map(State::as_str))
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.iter().map(experiment_from).collect::<ApiResult<_>>()?,
    ))
}

/// One experiment with its events, KPIs and tasks.
#[utoipa::path(get, path = "/api/v1/experiments/{id}", tag = "experiments", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentDetail), (status = 401), (status = 404)),
    security(("bearer" = [])))]
pub async fn get(
    AxumState(state): AxumState<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExperimentDetail>> {
    Ok(Json(detail(&state, id).await?))
}

async fn detail(state: &AppState, id: Uuid) -> ApiResult<ExperimentDetail> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM experiments WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("experiment {id}")))?;
    let experiment = experiment_from(&row)?;
    let events = sqlx::query(
        "SELECT id, from_state, to_state, action, actor, reason, at FROM experiment_events \
         WHERE experiment_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?
    .iter()
    .map(|r| ExperimentEvent {
        id: r.get("id"),
        from_state: r.get("from_state"),
        to_state: r.get("to_state"),
        action: r.get("action"),
        actor: r.get("actor"),
        reason: r.get("reason"),
        at: r.get("at"),
    })
    .collect();
    let tasks = sqlx::query(
        "SELECT id, agent_id, kind, state, error, updated_at FROM tasks \
         WHERE experiment_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?
    .iter()
    .map(|r| ExperimentTask {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        kind: r.get("kind"),
        state: r.get("state"),
        error: r.get("error"),
        updated_at: r.get("updated_at"),
    })
    .collect();
    Ok(ExperimentDetail {
        experiment,
        events,
        tasks,
    })
}

/// Send the pipelines to the agents (`created` → `deploying`).
#[utoipa::path(post, path = "/api/v1/experiments/{id}/start", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentDetail), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "not allowed in the current state (`allowed` lists what is), or an agent is busy or revoked")),
    security(("bearer" = [])))]
pub async fn start(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExperimentDetail>> {
    act(state, caller, id, Action::Start).await
}

/// End a deploying, running or analyzing experiment without a verdict
/// (→ `stopped`); agents are told to stop.
#[utoipa::path(post, path = "/api/v1/experiments/{id}/stop", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentDetail), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "not allowed in the current state; `allowed` lists what is")),
    security(("bearer" = [])))]
pub async fn stop(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExperimentDetail>> {
    act(state, caller, id, Action::Stop).await
}

/// Apply the candidate pipeline to the agents (`completed` → `promoted`).
#[utoipa::path(post, path = "/api/v1/experiments/{id}/promote", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentDetail), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "not allowed in the current state; `allowed` lists what is")),
    security(("bearer" = [])))]
pub async fn promote(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExperimentDetail>> {
    act(state, caller, id, Action::Promote).await
}

/// Apply the baseline pipeline to the agents (`completed` → `rolled_back`).
#[utoipa::path(post, path = "/api/v1/experiments/{id}/rollback", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentDetail), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "not allowed in the current state; `allowed` lists what is")),
    security(("bearer" = [])))]
pub async fn rollback(
    AxumState(state): AxumState<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExperimentDetail>> {
    act(state, caller, id, Action::Rollback).await
}

/// An operator's action: decided on the locked row, refused with 409 and
/// the allowed actions when the state machine says no.
async fn act(
    state: AppState,
    caller: Caller,
    id: Uuid,
    action: Action,
) -> ApiResult<Json<ExperimentDetail>> {
    let audit_action = format!("experiments.{}", action.as_str());
    caller
        .require(Role::Operator, &audit_action, &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query("SELECT state, recommendation FROM experiments WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("experiment {id}")))?;
    let from = State::parse(row.get::<&str, _>("state"))
        .ok_or_else(|| anyhow::anyhow!("unknown experiment state in the database"))?;
    if let Err(allowed) = transition(from, action) {
        drop(tx);
        let allowed: Vec<String> = allowed
            .into_iter()
            .filter(|a| a.by_user())
            .map(|a| a.as_str().to_owned())
            .collect();
        caller
            .event(&audit_action, format!("experiment:{id}"))
            .outcome(Outcome::Failure)
            .details(serde_json::json!({ "reason": "illegal_transition", "state": from.as_str(), "allowed": allowed }))
            .record_refusal(&state)
            .await;
        let now = if from.is_final() {
            "it is final".to_owned()
        } else {
            format!("allowed now: {}", allowed.join(", "))
        };
        return Err(ApiError::Conflict {
            code: "illegal_transition",
            detail: format!(
                "cannot {} an experiment that is {}; {now}",
                action.as_str(),
                from.as_str()
            ),
            allowed: Some(allowed),
        });
    }
    let recommendation: Option<String> = row.get("recommendation");
    let reason = match (action, recommendation.as_deref()) {
        (Action::Promote, Some("rollback")) => "promoted against the recommendation (rollback)",
        (Action::Rollback, Some("promote")) => "rolled back against the recommendation (promote)",
        _ => "",
    };
    let change = Transition {
        id,
        from,
        action,
        actor: caller.actor(),
        ip: caller.ip,
        reason: reason.to_owned(),
        fields: TransitionFields::default(),
    };
    change.apply(&mut tx).await?.ok_or_else(|| {
        ApiError::conflict(
            "concurrent_change",
            "the experiment changed while this request ran; read it again",
        )
    })?;
    tx.commit().await?;
    Ok(Json(detail(&state, id).await?))
}

/// What a transition records besides the new state.
#[derive(Debug, Clone, Default)]
pub struct TransitionFields {
    pub kpis: Option<Box<Kpis>>,
    pub recommendation: Option<String>,
    /// Why it failed (only kept in `failed`).
    pub error: Option<String>,
}

/// One decided state change.
#[derive(Debug, Clone)]
pub struct Transition {
    pub id: Uuid,
    pub from: State,
    pub action: Action,
    /// `user:<name>` or `system:driver`.
    pub actor: String,
    pub ip: Option<IpAddr>,
    pub reason: String,
    pub fields: TransitionFields,
}

/// The actor of the background driver in events and the audit log.
pub const DRIVER_ACTOR: &str = "system:driver";

impl Transition {
    /// Applies the change if the experiment is still in `from`: the new
    /// state and fields, the tasks it sends, the event and the audit entry.
    /// `None` when the experiment has moved on meanwhile (nothing is written).
    pub async fn apply(&self, tx: &mut PgConnection) -> ApiResult<Option<State>> {
        let to = transition(self.from, self.action).map_err(|_| {
            anyhow::anyhow!(
                "{} is not allowed from {}",
                self.action.as_str(),
                self.from.as_str()
            )
        })?;
        let row = sqlx::query(
            "UPDATE experiments SET state = $3, updated_at = now(), driver_claim_until = NULL, \
               deploy_started_at = CASE WHEN $3 = 'deploying' THEN now() ELSE deploy_started_at END, \
               started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END, \
               ends_at = CASE WHEN $3 = 'running' \
                 THEN now() + make_interval(secs => duration_seconds) ELSE ends_at END, \
               kpis = COALESCE($4, kpis), \
               recommendation = COALESCE($5, recommendation), \
               error = $6 \
             WHERE id = $1 AND state = $2 \
             RETURNING agent_ids, baseline_spec, candidate_spec, duration_seconds",
        )
        .bind(self.id)
        .bind(self.from.as_str())
        .bind(to.as_str())
        .bind(
            self.fields
                .kpis
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(anyhow::Error::from)?,
        )
        .bind(&self.fields.recommendation)
        .bind(self.fields.error.as_ref().filter(|_| to == State::Failed))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let agents: Vec<Uuid> = row.get("agent_ids");
        let baseline: PipelineSpec = stored(row.get("baseline_spec"), "baseline spec")?;
        let candidate: PipelineSpec = stored(row.get("candidate_spec"), "candidate spec")?;
        match to {
            State::Deploying => {
                // An error drops the transaction, undoing the update above.
                start_deploying(tx, self.id, &agents).await?;
                let payload = task::RunExperiment {
                    experiment_id: self.id,
                    baseline,
                    candidate,
                    duration_seconds: row.get::<i32, _>("duration_seconds") as u64,
                };
                send_tasks(tx, self, &agents, task::RUN_EXPERIMENT, &payload).await?;
            }
            State::Stopped | State::Failed if self.from.agents_push() => {
                sqlx::query(
                    "UPDATE tasks SET state = 'cancelled', updated_at = now() \
                     WHERE experiment_id = $1 AND kind = $2 AND state = 'queued'",
                )
                .bind(self.id)
                .bind(task::RUN_EXPERIMENT)
                .execute(&mut *tx)
                .await?;
                let payload = task::StopExperiment {
                    experiment_id: self.id,
                };
                send_tasks(tx, self, &agents, task::STOP_EXPERIMENT, &payload).await?;
            }
            State::Promoted | State::RolledBack => {
                let (variant, spec) = if to == State::Promoted {
                    (Variant::Candidate, candidate)
                } else {
                    (Variant::Baseline, baseline)
                };
                let payload = task::ApplyPipeline {
                    experiment_id: self.id,
                    variant: variant.as_str().to_owned(),
                    spec,
                };
                send_tasks(tx, self, &agents, task::APPLY_PIPELINE, &payload).await?;
            }
            _ => {}
        }
        sqlx::query(
            "INSERT INTO experiment_events (experiment_id, from_state, to_state, action, actor, reason) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.id)
        .bind(self.from.as_str())
        .bind(to.as_str())
        .bind(self.action.as_str())
        .bind(&self.actor)
        .bind(&self.reason)
        .execute(&mut *tx)
        .await?;
        let mut details = serde_json::json!({
            "from": self.from.as_str(),
            "to": to.as_str(),
            "reason": self.reason,
        });
        if let Some(recommendation) = &self.fields.recommendation {
            details["recommendation"] = recommendation.as_str().into();
        }
        Event::new(
            &self.actor,
            format!("experiments.{}", self.action.as_str()),
            format!("experiment:{}", self.id),
            self.ip,
        )
        .details(details)
        .record(&mut *tx)
        .await?;
        Ok(Some(to))
    }
}

/// Refuses to start while a target agent is revoked or busy in another
/// active experiment. Starts are serialized by a transaction-scoped lock so
/// two concurrent starts cannot both pass the check.
async fn start_deploying(tx: &mut PgConnection, id: Uuid, agents: &[Uuid]) -> ApiResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('phoenix.experiments.start'))")
        .execute(&mut *tx)
        .await?;
    let unusable = unusable_agents(tx, agents).await?;
    if !unusable.is_empty() {
        return Err(ApiError::conflict(
            "agents_revoked",
            format!(
                "these target agents were revoked since the experiment was created: {}",
                list_ids(&unusable)
            ),
        ));
    }
    let busy: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM experiments WHERE id <> $1 AND agent_ids && $2 \
         AND state IN ('deploying', 'running', 'analyzing') ORDER BY created_at",
    )
    .bind(id)
    .bind(agents)
    .fetch_all(&mut *tx)
    .await?;
    if !busy.is_empty() {
        return Err(ApiError::conflict(
            "agents_busy",
            format!(
                "some target agents are in other active experiments ({}); stop those or wait",
                list_ids(&busy)
            ),
        ));
    }
    Ok(())
}

/// One task per agent, tied to the experiment, queued with the transition.
/// `run_experiment` gets a single attempt: every agent must start within
/// the same window, so a failure or an expired lease fails the deployment
/// rather than starting one agent late. The others are idempotent and are
/// retried as usual.
async fn send_tasks(
    tx: &mut PgConnection,
    change: &Transition,
    agents: &[Uuid],
    kind: &str,
    payload: &impl Serialize,
) -> ApiResult<()> {
    let new = NewTask {
        kind: kind.to_owned(),
        payload: serde_json::to_value(payload).map_err(anyhow::Error::from)?,
        max_attempts: (kind == task::RUN_EXPERIMENT).then_some(1),
        experiment_id: Some(change.id),
    };
    for agent in agents {
        tasks::enqueue(tx, *agent, &new, &change.actor).await?;
    }
    Ok(())
}
