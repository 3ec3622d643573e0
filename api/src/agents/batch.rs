//! What the agents' metric write ([`super::write`]) rests on: the group a
//! batch is for (`?experiment=&variant=`) and whether its experiment takes
//! it, the body read within a bound, the refusal as a problem document, and
//! the `agent_metric_groups` row whose series the agents listing sums
//! (`pushed_series`), written when a group's count changes, not per batch.
//!
//! A batch naming an experiment is taken from the experiment's own agents
//! while it is `deploying` or `running`. A remote-write batch may arrive
//! after that, held in an agent's queue through an outage: it is still taken
//! when every sample lies in the experiment's running window (from
//! `started_at` to when it left `running`), which [`Taken::Within`] hands
//! back for the caller to check against the samples.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::auth::agent::ASYNC_COMMIT;
use crate::error::ApiError;
use crate::experiment_state::State as ExperimentState;
use crate::problem::Problem;
use crate::push_group::NONE;

/// How long a request to the Pushgateway or the remote-write receiver may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection pool for what the API forwards.
pub(super) static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .user_agent(concat!("phoenix-api/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a default HTTP client builds")
});

/// A misspelt parameter is refused: taken silently, it would send the
/// batch to the live group instead of the experiment.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    /// The experiment these metrics belong to (letters, digits, `.`, `_`,
    /// `:`, `-`; at most 128); `none` when absent.
    pub experiment: Option<String>,
    /// The variant within the experiment, e.g. `baseline` or `candidate`.
    pub variant: Option<String>,
}

/// Why a batch was refused.
#[derive(Debug)]
pub enum Refusal {
    Api(ApiError),
    /// The body is invalid: a 400 with its code and, when the validator
    /// knows it, where (`line` of a push, `index` of a series).
    Invalid {
        code: &'static str,
        detail: String,
        at: Option<(&'static str, usize)>,
    },
    /// A status `ApiError` has no variant for (413, 415, 502, 503).
    Status(StatusCode, &'static str, String),
    /// 503 with `Retry-After`: come back later with the same batch.
    RetryAfter {
        code: &'static str,
        detail: String,
        after: Duration,
    },
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Api(e.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Api(e) => e.into_response(),
            Refusal::Invalid { code, detail, at } => {
                let mut problem = Problem::new(StatusCode::BAD_REQUEST)
                    .with_code(code)
                    .with_detail(detail);
                if let Some((member, value)) = at {
                    problem = problem.with_extension(member, serde_json::json!(value));
                }
                problem.into_response()
            }
            Refusal::Status(status, code, detail) => Problem::new(status)
                .with_code(code)
                .with_detail(detail)
                .into_response(),
            Refusal::RetryAfter {
                code,
                detail,
                after,
            } => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .with_code(code)
                .with_detail(detail)
                .retry_after(after.as_secs()),
        }
    }
}

/// The group names of a batch, checked.
pub(super) fn group(q: GroupQuery) -> Result<(String, String), ApiError> {
    Ok((
        group_value("experiment", q.experiment)?,
        group_value("variant", q.variant)?,
    ))
}

/// A grouping-key value: `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}`, safe as a URL
/// path segment and as a label value.
fn group_value(field: &str, value: Option<String>) -> Result<String, ApiError> {
    let Some(value) = value else {
        return Ok(NONE.into());
    };
    let valid = (1..=128).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "invalid_group",
            format!(
                "{field} must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// A 415 `unsupported_media_type`.
pub(super) fn unsupported_media_type(detail: String) -> Refusal {
    Refusal::Status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        detail,
    )
}

/// A 413 `metrics_too_large`.
pub(super) fn too_large(detail: String) -> Refusal {
    Refusal::Status(StatusCode::PAYLOAD_TOO_LARGE, "metrics_too_large", detail)
}

/// Reads the body up to `max` bytes; a larger one is refused with a 413 as
/// soon as it is known to be larger. The edge reads and discards the rest
/// after the answer ([`crate::edge::drain_unread_body`]), so a client that
/// writes its whole body before reading the answer gets the problem
/// document instead of a reset connection (and an agent's queue learns not
/// to retry the batch).
pub(super) async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    max: usize,
) -> Result<Vec<u8>, Refusal> {
    let refused = || {
        too_large(format!(
            "a batch may be at most {max} bytes; send smaller batches or reduce cardinality"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(refused());
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            Refusal::Api(ApiError::bad_request(
                "body_unreadable",
                "the request body could not be read to its end",
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len().saturating_add(data.len()) > max {
            return Err(refused());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// Whether an experiment takes a batch, and which of its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Not an experiment's group, or its experiment is deploying or running.
    Now,
    /// The experiment has left `running`: only samples from `from` to
    /// `until` (both included) are taken.
    Within {
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// Refuses a batch for an experiment whose variants are no longer (or not
/// yet) sent, or that the agent is not part of; after the experiment left
/// `running`, a batch is taken only when its samples lie in the running
/// window ([`Taken::Within`], which the caller checks). `experiment` values that
/// are no experiment's id are free-form groups.
pub(super) async fn experiment_takes(
    state: &AppState,
    agent: Uuid,
    experiment: &str,
) -> Result<Taken, ApiError> {
    let Ok(id) = Uuid::parse_str(experiment) else {
        return Ok(Taken::Now);
    };
    // One spelling per experiment, or its series would escape the KPI
    // queries.
    if id.to_string() != experiment {
        return Err(ApiError::bad_request(
            "invalid_group",
            format!("write the experiment id as {id} (lower case, with hyphens)"),
        ));
    }
    type Row = (String, bool, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT e.state, $2 = ANY (e.agent_ids), e.started_at, \
                (SELECT min(ev.at) FROM experiment_events ev \
                 WHERE ev.experiment_id = e.id AND ev.from_state = 'running') \
         FROM experiments e WHERE e.id = $1",
    )
    .bind(id)
    .bind(agent)
    .fetch_optional(&state.pool)
    .await?;
    let Some((experiment_state, member, started_at, left_running_at)) = row else {
        return Ok(Taken::Now);
    };
    if !member {
        return Err(ApiError::conflict(
            "not_in_experiment",
            format!("this agent is not one of experiment {id}'s agents"),
        ));
    }
    if ExperimentState::parse(&experiment_state).is_some_and(ExperimentState::agents_push) {
        return Ok(Taken::Now);
    }
    match (started_at, left_running_at) {
        (Some(from), Some(until)) => Ok(Taken::Within { from, until }),
        _ => Err(not_running(id, &experiment_state)),
    }
}

/// 409 `experiment_not_running`: the batch will never be taken.
pub(super) fn not_running(id: Uuid, experiment_state: &str) -> ApiError {
    ApiError::conflict(
        "experiment_not_running",
        format!(
            "experiment {id} is {experiment_state}: its metrics are not accepted; drop this batch"
        ),
    )
}

/// Groups remembered by [`RecordedGroups`] at most; past it the memory is
/// cleared and each group is written once more.
const MAX_RECORDED_GROUPS: usize = 100_000;

/// A group's count is written again after this long even when unchanged:
/// another replica may have written another count meanwhile, or a crash of
/// PostgreSQL lost the last (asynchronous) write.
const REWRITE_AFTER: Duration = Duration::from_secs(60);

/// The series count this replica last wrote per group (agent, experiment,
/// variant), and when. An agent's batches mostly hold the same series, and
/// a row write per batch was a commit per batch (one per agent every 15 s);
/// now a batch writes the row when its count differs from the one
/// remembered, or that was written over [`REWRITE_AFTER`] ago.
#[derive(Debug, Default)]
pub struct RecordedGroups(Mutex<HashMap<Group, (usize, Instant)>>);

/// A group: agent, experiment, variant.
type Group = (Uuid, String, String);

impl RecordedGroups {
    /// Whether the row of `group` should be written with `series` at `now`;
    /// if so, it is remembered as written.
    fn changed(&self, group: &Group, series: usize, now: Instant) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(count, at)) = seen.get(group)
            && count == series
            && now.saturating_duration_since(at) < REWRITE_AFTER
        {
            return false;
        }
        if seen.len() >= MAX_RECORDED_GROUPS {
            seen.clear();
        }
        seen.insert(group.clone(), (series, now));
        true
    }

    /// Forgets `group` (its row may not hold the count remembered).
    fn forget(&self, group: &Group) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
    }

    /// Forgets every group: the housekeeping deleted rows.
    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Records the series of an agent's latest batch to a group, which the
/// agents listing sums as `pushed_series`, when the count differs from the
/// one this replica wrote last ([`RecordedGroups`]). An upsert: the
/// housekeeping may have forgotten the group while the batch was under way.
pub(super) async fn record_group_series(
    state: &AppState,
    agent: Uuid,
    experiment: &str,
    variant: &str,
    series: usize,
) -> sqlx::Result<()> {
    let group = (agent, experiment.to_owned(), variant.to_owned());
    if !state
        .recorded_groups
        .changed(&group, series, Instant::now())
    {
        return Ok(());
    }
    let written = sqlx::query(&format!(
        "{ASYNC_COMMIT}INSERT INTO agent_metric_groups \
             (agent_id, experiment, variant, series, pushed_at) \
         SELECT $1, $2, $3, $4, now() FROM async_commit \
         ON CONFLICT (agent_id, experiment, variant) \
         DO UPDATE SET series = EXCLUDED.series, pushed_at = EXCLUDED.pushed_at",
    ))
    .bind(agent)
    .bind(experiment)
    .bind(variant)
    .bind(i32::try_from(series).unwrap_or(i32::MAX))
    .execute(&state.pool)
    .await;
    if written.is_err() {
        state.recorded_groups.forget(&group);
    }
    written.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_written_again_when_its_count_changes_or_a_minute_passed() {
        let groups = RecordedGroups::default();
        let a = (Uuid::new_v4(), "none".to_owned(), "none".to_owned());
        let b = (a.0, "none".to_owned(), "other".to_owned());
        let t = Instant::now();
        let at = |secs: u64| t + Duration::from_secs(secs);
        assert!(groups.changed(&a, 200, at(0)));
        assert!(!groups.changed(&a, 200, at(15)));
        assert!(groups.changed(&b, 200, at(15)), "another group");
        assert!(groups.changed(&a, 150, at(30)));
        assert!(!groups.changed(&a, 150, at(45)));
        assert!(!groups.changed(&a, 150, at(89)));
        assert!(
            groups.changed(&a, 150, at(90)),
            "written again after a minute"
        );
        assert!(!groups.changed(&a, 150, at(105)));
        groups.forget(&a);
        assert!(
            groups.changed(&a, 150, at(120)),
            "a failed write is tried again"
        );
        groups.clear();
        assert!(
            groups.changed(&b, 200, at(120)),
            "after the housekeeping deleted rows"
        );
    }

    #[test]
    fn group_values_are_path_and_label_safe() {
        assert_eq!(group_value("experiment", None).unwrap(), "none");
        assert_eq!(
            group_value("variant", Some("base-line_1.0:x".into())).unwrap(),
            "base-line_1.0:x"
        );
        for bad in ["", "..", "-x", "a/b", "a b", "x%2F", "ä", &"x".repeat(129)] {
            assert!(group_value("variant", Some(bad.into())).is_err(), "{bad:?}");
        }
    }
}
