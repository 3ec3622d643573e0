//! `GET /health` in the IETF "Health Check Response Format for HTTP APIs"
//! draft (`application/health+json`): pass with 200 when the database answers
//! a ping in time, fail with 503 otherwise.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::{AppState, db};

/// Media type of the health document.
pub const HEALTH_CONTENT_TYPE: &str = "application/health+json";

/// How long the database ping may take before the check fails.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Key of the database check: component `postgres`, measurement `connections`.
pub const DATABASE_CHECK: &str = "postgres:connections";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
}

/// The whole health document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub status: Status,
    pub version: &'static str,
    pub checks: BTreeMap<&'static str, Vec<Check>>,
    /// `held` on the replica doing the singleton work (the experiment
    /// driver, the sweeps), `standby` on the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub singleton: Option<&'static str>,
}

/// One measurement of one component.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub component_type: &'static str,
    pub status: Status,
    /// Ping round trip in milliseconds (time spent before giving up on failure).
    pub observed_value: f64,
    pub observed_unit: &'static str,
    /// When the measurement was taken, RFC 3339.
    pub time: String,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Health {
    /// The document for one database ping taken at `at`.
    pub fn from_ping(ping: &Result<Duration, db::PingError>, at: DateTime<Utc>) -> Self {
        let (status, elapsed, output) = match ping {
            Ok(latency) => (Status::Pass, *latency, None),
            Err(error) => (Status::Fail, error.elapsed(), Some(error.to_string())),
        };
        let check = Check {
            component_type: "datastore",
            status,
            observed_value: round_to_microseconds(elapsed),
            observed_unit: "ms",
            time: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            output,
        };
        Self {
            status,
            version: env!("CARGO_PKG_VERSION"),
            checks: BTreeMap::from([(DATABASE_CHECK, vec![check])]),
            singleton: None,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self.status {
            Status::Pass => StatusCode::OK,
            Status::Fail => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Milliseconds with three decimals.
fn round_to_microseconds(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1000.0
}

impl IntoResponse for Health {
    fn into_response(self) -> Response {
        let status = self.http_status();
        match serde_json::to_vec(&self) {
            Ok(body) => (
                status,
                [
                    (header::CONTENT_TYPE, HEALTH_CONTENT_TYPE),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "could not serialize the health document");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// `GET /health`: pings the database, updates `phoenix_api_database_up`.
pub async fn handler(State(state): State<AppState>) -> Health {
    let ping = db::ping(&state.pool, PING_TIMEOUT).await;
    // Log changes only: a load balancer probing every second must not flood the log.
    let was_up = state.metrics.set_database_up(ping.is_ok());
    match &ping {
        Err(error) if was_up => tracing::warn!(%error, "database ping failed; health is now fail"),
        Ok(_) if !was_up => tracing::info!("database answers again; health is now pass"),
        _ => {}
    }
    Health {
        singleton: Some(if state.leader.holds() {
            "held"
        } else {
            "standby"
        }),
        ..Health::from_ping(&ping, Utc::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 30, 5).unwrap()
    }

    #[test]
    fn a_prompt_ping_passes() {
        let health = Health::from_ping(&Ok(Duration::from_micros(1_234)), at());
        assert_eq!(health.http_status(), StatusCode::OK);
        assert_eq!(
            serde_json::to_value(&health).unwrap(),
            json!({
                "status": "pass",
                "version": env!("CARGO_PKG_VERSION"),
                "checks": {
                    "postgres:connections": [{
                        "componentType": "datastore",
                        "status": "pass",
                        "observedValue": 1.234,
                        "observedUnit": "ms",
                        "time": "2025-03-01T12:30:05.000Z",
                    }]
                }
            })
        );
    }

    #[test]
    fn a_timed_out_ping_fails_and_says_why() {
        let ping = Err(db::PingError::TimedOut {
            limit: PING_TIMEOUT,
        });
        let health = Health::from_ping(&ping, at());
        assert_eq!(health.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let value = serde_json::to_value(&health).unwrap();
        assert_eq!(value["status"], "fail");
        let check = &value["checks"]["postgres:connections"][0];
        assert_eq!(check["status"], "fail");
        assert_eq!(check["observedValue"], 2000.0);
        assert_eq!(check["observedUnit"], "ms");
        assert_eq!(check["output"], "no answer from PostgreSQL within 2s");
    }

    #[test]
    fn the_response_is_health_json_and_not_cached() {
        let ping = Err(db::PingError::Failed {
            elapsed: Duration::from_millis(3),
            error: "connection refused".to_owned(),
        });
        let response = Health::from_ping(&ping, at()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            HEALTH_CONTENT_TYPE
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
