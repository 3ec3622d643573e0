//! Tasks: work queued for one agent, claimed by its long poll, reported back.
//!
//! Life of a task: `queued` → (claimed) `leased` → `succeeded`, or back to
//! `queued` after a failed attempt or an expired lease while attempts are
//! left, else `failed` / `expired`; `cancelled` by an operator or when the
//! agent is revoked.
//!
//! Invariants:
//! - A claim is one statement that locks the oldest queued rows of the agent
//!   with `FOR UPDATE SKIP LOCKED` and leases them: concurrent polls (of one
//!   agent, or through several API replicas) never get the same task.
//! - An attempt is counted when it is claimed; a lease that runs out without
//!   a result puts the task back (or expires it) in one audited transaction.
//! - A result is idempotent by the id the agent chose: sending it again
//!   answers what the first answer said and changes nothing. The result
//!   row, the task's update, the wake-up and the audit entry are one
//!   transaction.
//!
//! The long poll first puts the agent's own expired leases back, then
//! claims; with nothing to claim it registers for a wake-up *before* it
//! looks again (so a task queued in between still wakes it), and waits for a
//! wake-up, 5 s (then it looks again, which also catches lost notifications
//! and its own expired leases) or the end of `wait`. The housekeeping
//! (`crate::agents`) sweeps every agent's expired leases every 5 s.
//!
//! Claims are not written to the audit log (an agent may claim thousands
//! of tasks an hour; the task row records each attempt); task creation,
//! cancellation, results and lease expiries are.

pub mod wake;

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::audit::Event;
use crate::auth::{AgentCaller, Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Path, Query, page_limit};
use phoenix_wire::agent::{
    Claimed, ClaimedTask, Outcome, ReportedResult, ResultAccepted, TaskState,
};

/// Lease of a claimed task unless the poll asks for another.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
const MAX_LEASE_SECS: u64 = 3600;
/// Longest and default wait of a long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
const DEFAULT_WAIT_SECS: u64 = 25;
/// A waiting poll looks again this often even without a wake-up, for a
/// notification that was lost. Longer than the longest wait: a
/// notification is lost only when the listening connection drops, and
/// every poll is woken after it reconnects; expired leases are put back,
/// with a notification, by the housekeeping every 5 s. So a poll queries
/// the database when it starts, when it is woken and when its wait ends,
/// which is what lets one appliance hold thousands of waiting agents.
const RECHECK: Duration = Duration::from_secs(30);
const DEFAULT_CLAIM: i64 = 10;
const MAX_CLAIM: i64 = 100;
const MAX_ATTEMPTS: i32 = 100;
/// Largest JSON a payload or a result may be, serialized.
const MAX_JSON_BYTES: usize = 256 * 1024;
const MAX_ERROR_CHARS: usize = 16 * 1024;

/// A state as the database stores it; any other text is a fault of the
/// database, not of a request.
fn task_state(name: &str) -> ApiResult<TaskState> {
    TaskState::from_name(name)
        .ok_or_else(|| anyhow::anyhow!("unknown task state {name:?} in the database").into())
}

/// An outcome as the database stores it.
fn outcome(name: &str) -> ApiResult<Outcome> {
    Outcome::from_name(name)
        .ok_or_else(|| anyhow::anyhow!("unknown outcome {name:?} in the database").into())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: TaskState,
    /// Attempts claimed so far.
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub experiment_id: Option<Uuid>,
    /// The result of the attempt that succeeded.
    pub result: Option<serde_json::Value>,
    /// The error of the last failed or expired attempt.
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const TASK_COLUMNS: &str = "id, agent_id, kind, payload, state, attempts, max_attempts, lease_expires_at, \
     experiment_id, result, error, created_by, created_at, updated_at";

fn task_from(r: &sqlx::postgres::PgRow) -> ApiResult<Task> {
    Ok(Task {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        kind: r.get("kind"),
        payload: r.get("payload"),
        state: task_state(r.get("state"))?,
        attempts: r.get("attempts"),
        max_attempts: r.get("max_attempts"),
        lease_expires_at: r.get("lease_expires_at"),
        experiment_id: r.get("experiment_id"),
        result: r.get("result"),
        error: r.get("error"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// JSON that is not huge. (NUL, which jsonb cannot hold, never gets this
/// far: the `Json` extractor refuses it.)
fn check_json(field: &str, value: &serde_json::Value) -> ApiResult<()> {
    let text = serde_json::to_string(value).map_err(|e| anyhow::anyhow!(e))?;
    if text.len() > MAX_JSON_BYTES {
        return Err(ApiError::bad_request(
            "json_too_large",
            format!("{field} may be at most {MAX_JSON_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// A task to queue.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewTask {
    /// What to do, e.g. `deploy_pipeline` (letters, digits, `.`, `_`, `:`, `-`; at most 64).
    pub kind: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Attempts before the task fails or expires for good (default 3, at most 100).
    pub max_attempts: Option<i32>,
    /// The experiment this task belongs to, if any.
    pub experiment_id: Option<Uuid>,
}

fn validate_new(new: &NewTask) -> ApiResult<i32> {
    let kind_ok = (1..=64).contains(&new.kind.len())
        && new
            .kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if !kind_ok {
        return Err(ApiError::bad_request(
            "invalid_kind",
            "kind: 1 to 64 of letters, digits, '.', '_', ':', '-'",
        ));
    }
    check_json("payload", &new.payload)?;
    let max_attempts = new.max_attempts.unwrap_or(3);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(ApiError::bad_request(
            "invalid_max_attempts",
            format!("max_attempts must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    Ok(max_attempts)
}

/// Queues a task for an active agent in the caller's transaction and wakes
/// the agent's polls when it commits. The caller writes the audit entry.
/// For other parts of the API (experiments) as well as the HTTP handler.
pub async fn enqueue(
    tx: &mut PgConnection,
    agent: Uuid,
    new: &NewTask,
    created_by: &str,
) -> ApiResult<Task> {
    let max_attempts = validate_new(new)?;
    // FOR SHARE: a revocation waits for this transaction and then cancels
    // the task with the others.
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM agents WHERE id = $1 FOR SHARE")
            .bind(agent)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("agent {agent}")))?;
    if revoked {
        return Err(ApiError::conflict(
            "agent_revoked",
            format!("agent {agent} is revoked and takes no tasks"),
        ));
    }
    let row = sqlx::query(&format!(
        "INSERT INTO tasks (agent_id, kind, payload, max_attempts, experiment_id, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TASK_COLUMNS}"
    ))
    .bind(agent)
    .bind(&new.kind)
    .bind(&new.payload)
    .bind(max_attempts)
    .bind(new.experiment_id)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    wake::notify(tx, agent).await?;
    task_from(&row)
}

/// Queue a task for an agent (operator).
#[utoipa::path(post, path = "/api/v1/agents/{id}/tasks", tag = "tasks", request_body = NewTask,
    params(("id" = Uuid, Path, description = "the agent")),
    responses((status = 201, body = Task), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "the agent is revoked")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent): Path<Uuid>,
    Json(new): Json<NewTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    caller
        .require(Role::Operator, "tasks.create", &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let task = enqueue(&mut tx, agent, &new, &caller.actor()).await?;
    caller
        .event("tasks.create", format!("task:{}", task.id))
        .details(serde_json::json!({ "agent": agent, "kind": task.kind, "max_attempts": task.max_attempts }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(task)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Only tasks of this agent.
    pub agent: Option<Uuid>,
    pub state: Option<TaskState>,
    pub experiment: Option<Uuid>,
    /// Tasks created before this time (for paging back: pass the
    /// `created_at` of the last task of the previous page).
    pub before: Option<DateTime<Utc>>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Tasks, newest first, filtered.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = [Task]), (status = 401)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Json<Vec<Task>>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let rows = sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks \
         WHERE ($1::uuid IS NULL OR agent_id = $1) AND ($2::text IS NULL OR state = $2) \
           AND ($3::uuid IS NULL OR experiment_id = $3) AND ($4::timestamptz IS NULL OR created_at < $4) \
         ORDER BY created_at DESC, id LIMIT $5"
    ))
    .bind(q.agent)
    .bind(q.state.map(TaskState::as_str))
    .bind(q.experiment)
    .bind(q.before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.iter().map(task_from).collect::<ApiResult<_>>()?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResult {
    pub result_id: Uuid,
    pub attempt: i32,
    pub outcome: Outcome,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// The task's state after this result.
    pub state: TaskState,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    /// Every result the agent reported, oldest first.
    pub results: Vec<TaskResult>,
}

/// One task with every result reported for it.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 200, body = TaskDetail), (status = 401), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<TaskDetail>> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
    let results = sqlx::query(
        "SELECT id, attempt, outcome, result, error, task_state, received_at FROM task_results \
         WHERE task_id = $1 ORDER BY received_at, id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(TaskResult {
            result_id: r.get("id"),
            attempt: r.get("attempt"),
            outcome: outcome(r.get("outcome"))?,
            result: r.get("result"),
            error: r.get("error"),
            state: task_state(r.get("task_state"))?,
            received_at: r.get("received_at"),
        })
    })
    .collect::<ApiResult<_>>()?;
    Ok(Json(TaskDetail {
        task: task_from(&row)?,
        results,
    }))
}

/// Cancel a queued or leased task (operator). A result that arrives later
/// is refused.
#[utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 200, body = Task), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "the task has already finished")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Task>> {
    caller
        .require(Role::Operator, "tasks.cancel", &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let current: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
    if task_state(&current)?.is_final() {
        return Err(ApiError::conflict(
            "task_finished",
            format!("task {id} is already {current}"),
        ));
    }
    let row = sqlx::query(&format!(
        "UPDATE tasks SET state = 'cancelled', lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 RETURNING {TASK_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    caller
        .event("tasks.cancel", format!("task:{id}"))
        .details(serde_json::json!({ "previous_state": current }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(task_from(&row)?))
}

/// Puts tasks whose lease ran out back in the queue, or expires them when
/// their attempts are spent; audited, and the agents' polls are woken.
/// `agent` limits it to one agent (a poll's own tasks). Returns how many.
pub async fn requeue_expired_leases(pool: &PgPool, agent: Option<Uuid>) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "UPDATE tasks SET state = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'expired' END, \
                lease_expires_at = NULL, error = 'the lease expired before a result arrived', \
                updated_at = now() \
         WHERE state = 'leased' AND lease_expires_at < now() AND ($1::uuid IS NULL OR agent_id = $1) \
         RETURNING id, agent_id, state, attempts",
    )
    .bind(agent)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut requeued_for = Vec::new();
    for row in &rows {
        let (id, agent, state): (Uuid, Uuid, &str) =
            (row.get("id"), row.get("agent_id"), row.get("state"));
        Event::new("system", "tasks.lease_expired", format!("task:{id}"), None)
            .details(serde_json::json!({ "agent": agent, "attempt": row.get::<i32, _>("attempts"), "state": state }))
            .record(&mut *tx)
            .await?;
        if state == "queued" && !requeued_for.contains(&agent) {
            requeued_for.push(agent);
        }
    }
    for agent in requeued_for {
        wake::notify(&mut tx, agent).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to wait for a task when none is queued (default and at most 25:
    /// below the request timeout, so a poll is answered, not cut off).
    pub wait: Option<u64>,
    /// Most tasks to claim at once (default 10, at most 100).
    pub max: Option<i64>,
    /// Seconds the claimed tasks are leased for (default 60, at most 3600):
    /// without a result by then, a task is queued again.
    pub lease: Option<u64>,
}

/// Claims up to `max` of the agent's oldest queued tasks.
async fn claim(
    pool: &PgPool,
    agent: Uuid,
    max: i64,
    lease: Duration,
) -> sqlx::Result<Vec<ClaimedTask>> {
    let rows = sqlx::query(
        "WITH claimable AS ( \
             SELECT id FROM tasks WHERE agent_id = $1 AND state = 'queued' \
             ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE tasks t SET state = 'leased', attempts = t.attempts + 1, \
                lease_expires_at = now() + make_interval(secs => $3), updated_at = now() \
         FROM claimable c WHERE t.id = c.id \
         RETURNING t.id, t.kind, t.payload, t.attempts, t.lease_expires_at, t.created_at",
    )
    .bind(agent)
    .bind(max)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut claimed: Vec<(DateTime<Utc>, ClaimedTask)> = rows
        .iter()
        .map(|r| {
            (
                r.get("created_at"),
                ClaimedTask {
                    id: r.get("id"),
                    kind: r.get("kind"),
                    payload: r.get("payload"),
                    attempt: r.get("attempts"),
                    lease_expires_at: r.get("lease_expires_at"),
                },
            )
        })
        .collect();
    claimed.sort_by_key(|(created_at, task)| (*created_at, task.id));
    Ok(claimed.into_iter().map(|(_, task)| task).collect())
}

/// Long-poll for tasks (agent listener): answers at once with the claimed
/// tasks, or waits up to `wait` seconds for one to be queued. Keep `wait`
/// below the API's request timeout (30 s by default).
#[utoipa::path(get, path = "/api/v1/agent/tasks", tag = "agent", params(PollQuery),
    responses((status = 200, body = Claimed), (status = 400), (status = 401)),
    security(("agent" = [])))]
pub async fn poll(
    State(state): State<AppState>,
    agent: AgentCaller,
    Query(q): Query<PollQuery>,
) -> ApiResult<Json<Claimed>> {
    let wait = Duration::from_secs(q.wait.unwrap_or(DEFAULT_WAIT_SECS));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait may be at most {} seconds", MAX_WAIT.as_secs()),
        ));
    }
    let max = q.max.unwrap_or(DEFAULT_CLAIM);
    if !(1..=MAX_CLAIM).contains(&max) {
        return Err(ApiError::bad_request(
            "invalid_max",
            format!("max must be between 1 and {MAX_CLAIM}"),
        ));
    }
    let lease = q.lease.map_or(DEFAULT_LEASE, Duration::from_secs);
    if !(1..=MAX_LEASE_SECS).contains(&lease.as_secs()) {
        return Err(ApiError::bad_request(
            "invalid_lease",
            format!("lease must be between 1 and {MAX_LEASE_SECS} seconds"),
        ));
    }
    let deadline = Instant::now() + wait;
    let subscription = wake::subscribe(agent.id);
    let mut woken = false;
    let mut first = true;
    loop {
        let notified = subscription.notified();
        tokio::pin!(notified);
        // Registered before looking, so a task queued meanwhile still wakes us.
        notified.as_mut().enable();
        // Revoked while waiting (revocation wakes the poll): the credential
        // is refused from now on, as it would be on a new request. Looked
        // at only after a wake-up, not at every recheck.
        let revoked: bool = woken
            && sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM agents WHERE id = $1")
                .bind(agent.id)
                .fetch_optional(&state.pool)
                .await?
                .unwrap_or(true);
        if revoked {
            return Err(ApiError::unauthorized(
                "agent_revoked",
                "this agent was revoked; enroll it again with a new enrollment token",
            ));
        }
        if first {
            requeue_expired_leases(&state.pool, Some(agent.id)).await?;
            first = false;
        }
        let tasks = claim(&state.pool, agent.id, max, lease).await?;
        let now = Instant::now();
        if !tasks.is_empty() || now >= deadline || wake::is_closed() {
            return Ok(Json(Claimed { tasks }));
        }
        woken = tokio::select! {
            () = notified => true,
            () = tokio::time::sleep_until(deadline.min(now + RECHECK)) => false,
        };
    }
}

/// Report the result of a leased task (agent listener). Idempotent by
/// `result_id`: the same result again gets the same answer and changes
/// nothing. A late result of an attempt whose lease ran out is still taken
/// while the task has not finished.
#[utoipa::path(post, path = "/api/v1/agent/tasks/{id}/result", tag = "agent", request_body = ReportedResult,
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ResultAccepted), (status = 400), (status = 401),
        (status = 404, description = "no such task for this agent"),
        (status = 409, description = "the task is not leased, has finished, or the result id was used for another result")),
    security(("agent" = [])))]
pub async fn report(
    State(state): State<AppState>,
    agent: AgentCaller,
    Path(id): Path<Uuid>,
    Json(report): Json<ReportedResult>,
) -> ApiResult<Json<ResultAccepted>> {
    if let Some(result) = &report.result {
        check_json("result", result)?;
    }
    if let Some(error) = &report.error
        && error.chars().count() > MAX_ERROR_CHARS
    {
        return Err(ApiError::bad_request(
            "invalid_error",
            format!("error must be at most {MAX_ERROR_CHARS} characters"),
        ));
    }
    let mut tx = state.pool.begin().await?;
    // The task's lock orders concurrent reports of it, retries included.
    let task = sqlx::query(
        "SELECT state, attempts, max_attempts FROM tasks WHERE id = $1 AND agent_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(agent.id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
    let stored =
        sqlx::query("SELECT task_id, outcome, attempt, task_state FROM task_results WHERE id = $1")
            .bind(report.result_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(stored) = stored {
        let outcome = outcome(stored.get("outcome"))?;
        if stored.get::<Uuid, _>("task_id") != id || outcome != report.outcome {
            return Err(ApiError::conflict(
                "result_id_reused",
                format!(
                    "result id {} was already used for another result",
                    report.result_id
                ),
            ));
        }
        return Ok(Json(ResultAccepted {
            task_id: id,
            result_id: report.result_id,
            outcome,
            attempt: stored.get("attempt"),
            state: task_state(stored.get("task_state"))?,
        }));
    }
    let current = task_state(task.get("state"))?;
    let attempts: i32 = task.get("attempts");
    let max_attempts: i32 = task.get("max_attempts");
    match current {
        TaskState::Leased => {}
        // A lease that ran out: the work was done all the same.
        TaskState::Queued if attempts > 0 => {}
        TaskState::Queued => {
            return Err(ApiError::conflict(
                "task_not_leased",
                format!("task {id} has not been claimed; poll for it first"),
            ));
        }
        finished => {
            return Err(ApiError::conflict(
                "task_finished",
                format!("task {id} is already {}", finished.as_str()),
            ));
        }
    }
    let next = match report.outcome {
        Outcome::Succeeded => TaskState::Succeeded,
        Outcome::Failed if attempts < max_attempts => TaskState::Queued,
        Outcome::Failed => TaskState::Failed,
    };
    sqlx::query(
        "UPDATE tasks SET state = $2, lease_expires_at = NULL, result = $3, error = $4, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(next.as_str())
    .bind(&report.result)
    .bind(&report.error)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO task_results (id, task_id, attempt, outcome, result, error, task_state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(report.result_id)
    .bind(id)
    .bind(attempts)
    .bind(report.outcome.as_str())
    .bind(&report.result)
    .bind(&report.error)
    .bind(next.as_str())
    .execute(&mut *tx)
    .await
    .map_err(|e| match ApiError::from(e) {
        // The same id, sent concurrently for another task.
        ApiError::Conflict { .. } => ApiError::conflict(
            "result_id_reused",
            format!(
                "result id {} was already used for another result",
                report.result_id
            ),
        ),
        other => other,
    })?;
    if next == TaskState::Queued {
        wake::notify(&mut tx, agent.id).await?;
    }
    agent
        .event("tasks.result", format!("task:{id}"))
        .details(serde_json::json!({
            "result_id": report.result_id,
            "outcome": report.outcome.as_str(),
            "attempt": attempts,
            "state": next.as_str(),
        }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(ResultAccepted {
        task_id: id,
        result_id: report.result_id,
        outcome: report.outcome,
        attempt: attempts,
        state: next,
    }))
}
