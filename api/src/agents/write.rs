//! The agents' metric path: `POST /api/v1/agent/write`, a Prometheus
//! remote-write 1.0 request, validated ([`super::remote_write`]), relabelled
//! and forwarded to the configured remote-write receiver (the appliance's
//! Prometheus by default, `--remote-write-url`) through the
//! [`Forwarder`], which coalesces batches when the receiver falls behind.
//!
//! Every sample keeps the timestamp the agent collected it at, so a batch
//! held in an agent's queue through an outage lands where it belongs, as
//! long as the receiver's out-of-order window still covers it
//! (`--remote-write-max-age`, the same length). Every series gets
//! `job="phoenix-agent"`, `agent`, `experiment` and `variant`, the labels
//! KPI and cost queries select by ([`crate::push_group`]). Group rules,
//! body bound and refusals are in [`super::batch`]; a batch for an
//! experiment that has left `running` is still taken when all its samples
//! lie in the running window.
//!
//! What the agent should do with a refused batch is in the status: 400,
//! 409, 413 and 415 will never be taken (drop it); 502 and 503 may be later
//! (keep it and retry; a 503 `remote_write_busy` says when, in
//! `Retry-After`, when the forwarder's backlog is full, this agent has its
//! share of it waiting or 4 writes in progress, or the writes' memory
//! budget has no room for this one; see [`super::forward`]). A receiver's 4xx is the first kind, its 5xx, 429 or
//! silence the second. Sending a batch again after a lost answer is safe:
//! a receiver stores a sample it already holds once.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::Utc;
use phoenix_wire::agent::Written;
use phoenix_wire::remote_write::{self, DecodeError, Shape};

use super::batch::{
    self, GroupQuery, Refusal, Taken, experiment_takes, read_body, record_group_series, too_large,
    unsupported_media_type,
};
use super::forward::{
    BUSY_RETRY_AFTER, Forwarder, MAX_WAITING_BATCHES_PER_AGENT, MAX_WAITING_SAMPLES_PER_AGENT,
    MAX_WRITES_PER_AGENT, MEMORY_BUDGET_BYTES, Outcome,
};
use super::remote_write::{Limits, check_shape, relabel, time, validate};
use crate::AppState;
use crate::auth::AgentCaller;
use crate::error::ApiError;
use crate::input::{Json, Query};
use crate::push_group::JOB;

/// Largest compressed body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest body once uncompressed; a larger one is refused before it is.
pub const MAX_UNCOMPRESSED_BYTES: usize = 32 * 1024 * 1024;

/// Most series in one batch.
pub const MAX_SERIES: usize = 50_000;

/// Most samples in one batch.
pub const MAX_SAMPLES: usize = 1_000_000;

/// How far ahead of the API's clock a sample may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(5 * 60);

/// Only remote write 1.0: protobuf `WriteRequest`, snappy block compression.
fn check_media_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("");
    let mut parts = content_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    // Remote write 2.0 names its message in a `proto` parameter.
    let other_message = parts.filter_map(|p| p.split_once('=')).any(|(k, v)| {
        k.trim().eq_ignore_ascii_case("proto") && v.trim() != "prometheus.WriteRequest"
    });
    if !essence.eq_ignore_ascii_case(remote_write::CONTENT_TYPE) || other_message {
        return Err(unsupported_media_type(format!(
            "Content-Type {content_type:?} is not accepted; send a Prometheus remote-write 1.0 \
             request as `{}`",
            remote_write::CONTENT_TYPE
        )));
    }
    let snappy = headers.get(header::CONTENT_ENCODING).is_some_and(|e| {
        e.as_bytes()
            .eq_ignore_ascii_case(remote_write::CONTENT_ENCODING.as_bytes())
    });
    if !snappy {
        return Err(unsupported_media_type(format!(
            "Content-Encoding must be `{}` (the snappy block format of remote write 1.0)",
            remote_write::CONTENT_ENCODING
        )));
    }
    Ok(())
}

fn receiver(state: &AppState) -> Result<&Forwarder, Refusal> {
    state.forwarder.as_ref().ok_or_else(|| {
        Refusal::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            "remote_write_not_configured",
            "this API has no remote-write receiver (--remote-write-url); samples cannot be \
             accepted yet: keep the batch"
                .into(),
        )
    })
}

/// 503 `remote_write_busy` with `Retry-After`.
fn retry_later(detail: String) -> Refusal {
    Refusal::RetryAfter {
        code: "remote_write_busy",
        detail,
        after: BUSY_RETRY_AFTER,
    }
}

fn decode_refusal(error: DecodeError) -> Refusal {
    match error {
        DecodeError::TooLarge { .. } => too_large(error.to_string()),
        DecodeError::Snappy(_) | DecodeError::Protobuf(_) => Refusal::Api(ApiError::bad_request(
            "invalid_write_request",
            error.to_string(),
        )),
    }
}

/// Write samples (agent listener): a Prometheus remote-write 1.0 request.
/// Each sample keeps its timestamp; every series gets the labels
/// `job="phoenix-agent"`, `agent`, `experiment` and `variant`, and goes on
/// to the remote-write receiver.
#[utoipa::path(post, path = "/api/v1/agent/write", tag = "agent", params(GroupQuery),
    request_body(content = Vec<u8>, content_type = "application/x-protobuf",
        description = "A Prometheus remote-write 1.0 WriteRequest, snappy-compressed \
                       (`Content-Encoding: snappy`): at most 4 MiB, 32 MiB uncompressed, \
                       50000 series and 1000000 samples; float samples only, each series' \
                       samples oldest first; without the labels agent, experiment, variant, \
                       job, instance"),
    responses((status = 200, body = Written),
        (status = 400, description = "invalid request (the problem's `code` says why, `index` which \
                                      series), or the receiver refused the samples \
                                      (`samples_rejected`): drop the batch"),
        (status = 401),
        (status = 409, description = "the experiment is not running and the samples are not from its \
                                      running window, or this agent is not in it \
                                      (`experiment_not_running`, `not_in_experiment`): drop the batch"),
        (status = 413, description = "larger than 4 MiB, or 32 MiB uncompressed: drop the batch"),
        (status = 415, description = "not `application/x-protobuf` with `Content-Encoding: snappy`"),
        (status = 502, description = "the receiver failed or is away: keep the batch and retry"),
        (status = 503, description = "no receiver configured, the database is away, or the receiver is \
                                      far behind, this agent has its share of the backlog or 4 writes in \
                                      progress, or the writes' memory budget is spent \
                                      (`remote_write_busy`, with `Retry-After`): keep the batch")),
    security(("agent" = [])))]
pub async fn write(
    State(state): State<AppState>,
    agent: AgentCaller,
    Query(q): Query<GroupQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Written>, Refusal> {
    let (experiment, variant) = batch::group(q)?;
    check_media_type(&headers)?;
    let forwarder = receiver(&state)?;
    // Before reading the body: a refused batch costs no decoding.
    if let Some(busy) = forwarder.busy(agent.id) {
        // The answer it would get after decoding.
        outcome(busy)?;
    }
    let Some(_writing) = forwarder.begin_write(agent.id) else {
        return Err(retry_later(format!(
            "this agent already has {MAX_WRITES_PER_AGENT} writes in progress; send one batch \
             at a time: keep this batch and send it again in {} s",
            BUSY_RETRY_AFTER.as_secs()
        )));
    };
    let taken = experiment_takes(&state, agent.id, &experiment).await?;
    // Room in the writes' memory budget for each step that allocates.
    let no_room = || {
        retry_later(format!(
            "the API's writes in progress hold {} MiB of batches already; keep this batch and \
             send it again in {} s",
            MEMORY_BUDGET_BYTES >> 20,
            BUSY_RETRY_AFTER.as_secs()
        ))
    };
    let body_size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map_or(MAX_BODY_BYTES, |n| n.min(MAX_BODY_BYTES));
    let mut room = forwarder
        .reserve_memory(body_size)
        .await
        .ok_or_else(no_room)?;
    let bytes = read_body(&headers, body, MAX_BODY_BYTES).await?;
    let declared =
        remote_write::uncompressed_len(&bytes, MAX_UNCOMPRESSED_BYTES).map_err(decode_refusal)?;
    room.merge(
        forwarder
            .reserve_memory(declared)
            .await
            .ok_or_else(no_room)?,
    );
    let raw = remote_write::decompress(&bytes, MAX_UNCOMPRESSED_BYTES).map_err(decode_refusal)?;
    drop(bytes);
    let now = Utc::now().timestamp_millis();
    let limits = Limits {
        max_series: MAX_SERIES,
        max_samples: MAX_SAMPLES,
        oldest_ms: now.saturating_sub(state.settings.remote_write_max_age.as_millis() as i64),
        newest_ms: now.saturating_add(MAX_AHEAD.as_millis() as i64),
    };
    // Counted before decoding: what decoding would allocate is refused,
    // or reserved, first.
    let shape = Shape::of(&raw).map_err(decode_refusal)?;
    check_shape(&shape, &limits).map_err(|invalid| Refusal::Invalid {
        code: invalid.code,
        detail: invalid.to_string(),
        at: None,
    })?;
    room.merge(
        forwarder
            .reserve_memory(shape.decoded_bytes(raw.len()))
            .await
            .ok_or_else(no_room)?,
    );
    let mut request = remote_write::decode_raw(&raw).map_err(decode_refusal)?;
    drop(raw);
    let summary = validate(&mut request, &limits).map_err(|invalid| Refusal::Invalid {
        code: invalid.code,
        detail: invalid.to_string(),
        at: invalid.index.map(|i| ("index", i)),
    })?;
    if let (Taken::Within { from, until }, Some((oldest, newest))) = (taken, summary.span) {
        let (from, until) = (from.timestamp_millis(), until.timestamp_millis());
        if oldest < from || newest > until {
            return Err(ApiError::conflict(
                "experiment_not_running",
                format!(
                    "experiment {experiment} no longer runs: only samples from its running window \
                     ({} to {}) are still accepted, and this batch has samples from {} to {}; \
                     drop this batch",
                    time(from),
                    time(until),
                    time(oldest),
                    time(newest)
                ),
            )
            .into());
        }
    }
    if summary.series > 0 {
        let agent_id = agent.id.to_string();
        relabel(
            &mut request,
            &[
                ("job", JOB),
                ("agent", &agent_id),
                ("experiment", &experiment),
                ("variant", &variant),
            ],
        );
        outcome(forwarder.send(request, agent.id).await)?;
    }
    // The batch is sent and its memory gone.
    drop(room);
    // A late batch adds to a group that is no longer sent to.
    if taken == Taken::Now {
        record_group_series(&state, agent.id, &experiment, &variant, summary.series).await?;
    }
    Ok(Json(Written {
        series: summary.series,
        samples: summary.samples,
        experiment,
        variant,
    }))
}

/// The agent's answer for what the receiver did with its batch: a refusal
/// means these samples will never be stored (out of its window, a
/// conflicting value at the same timestamp); anything else may pass later.
fn outcome(outcome: Outcome) -> Result<(), Refusal> {
    match outcome {
        Outcome::Stored => Ok(()),
        Outcome::Refused { status, message } => Err(Refusal::Api(ApiError::bad_request(
            "samples_rejected",
            format!("the remote-write receiver refused these samples ({status}): {message}"),
        ))),
        Outcome::Unavailable { .. } => Err(Refusal::Status(
            StatusCode::BAD_GATEWAY,
            "remote_write_unavailable",
            "the remote-write receiver did not take the batch; keep it and retry later".into(),
        )),
        Outcome::Busy {
            waiting_samples,
            waiting_batches,
            agent_share,
        } => Err(retry_later(if agent_share {
            format!(
                "this agent's batches waiting to be sent hold {waiting_samples} samples in \
                 {waiting_batches} (at most {MAX_WAITING_SAMPLES_PER_AGENT} samples or \
                 {MAX_WAITING_BATCHES_PER_AGENT} batches); send one batch at a time: keep \
                 this batch and send it again in {} s",
                BUSY_RETRY_AFTER.as_secs()
            )
        } else {
            format!(
                "the remote-write receiver is behind ({waiting_samples} samples wait to be \
                 sent); keep the batch and send it again in {} s",
                BUSY_RETRY_AFTER.as_secs()
            )
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;

    fn headers(content_type: Option<&str>, encoding: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_remote_write_one_point_o_is_accepted() {
        let ok = |ct, enc| check_media_type(&headers(ct, enc)).is_ok();
        assert!(ok(Some("application/x-protobuf"), Some("snappy")));
        assert!(ok(Some("Application/X-Protobuf"), Some("SNAPPY")));
        assert!(ok(
            Some("application/x-protobuf;proto=prometheus.WriteRequest"),
            Some("snappy")
        ));
        assert!(!ok(
            Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
            Some("snappy")
        ));
        assert!(!ok(Some("text/plain"), Some("snappy")));
        assert!(!ok(None, Some("snappy")));
        assert!(!ok(Some("application/x-protobuf"), None));
        assert!(!ok(Some("application/x-protobuf"), Some("gzip")));
    }

    #[test]
    fn a_busy_forwarder_is_a_503_that_says_when_to_retry() {
        let response = outcome(Outcome::Busy {
            waiting_samples: 200_000,
            waiting_batches: 12,
            agent_share: false,
        })
        .unwrap_err()
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            BUSY_RETRY_AFTER.as_secs().to_string()
        );
    }

    #[test]
    fn decode_errors_are_bad_requests_and_bombs_too_large() {
        let code = |e| match decode_refusal(e) {
            Refusal::Api(e) => (e.status(), e.code()),
            Refusal::Status(status, code, _) => (status, code),
            Refusal::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            Refusal::RetryAfter { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
        };
        assert_eq!(
            code(DecodeError::Snappy("x".into())),
            (StatusCode::BAD_REQUEST, "invalid_write_request")
        );
        assert_eq!(
            code(DecodeError::TooLarge {
                declared: 1 << 30,
                limit: MAX_UNCOMPRESSED_BYTES
            }),
            (StatusCode::PAYLOAD_TOO_LARGE, "metrics_too_large")
        );
    }
}
