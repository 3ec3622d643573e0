//! /health (application/health+json), /livez, /readyz and /metrics, all
//! rendered from the published snapshot: no request ever probes a service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::status::{Snapshot, State, now_ms};

/// The loop is considered stuck when its heartbeat is older than this.
const LIVENESS_STALE_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// `phoenixctl health` exit code.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

pub fn service_status(state: State, wanted: bool) -> Status {
    match state {
        State::Ready | State::Exited => Status::Pass,
        State::Stopped if !wanted => Status::Warn,
        State::Failed => Status::Fail,
        _ => Status::Warn,
    }
}

/// The health document and its overall status.
pub fn health_document(s: &Snapshot) -> (Status, Value) {
    let now = now_ms();
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut overall = if s.shutting_down {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut checks = serde_json::Map::new();
    for svc in &s.services {
        let status = service_status(svc.state, svc.wanted);
        overall = overall.max(status);
        let mut check = json!({
            "componentId": svc.name,
            "componentType": "service",
            "observedValue": svc.state.as_str(),
            "status": status.as_str(),
            "time": time,
            "restarts": svc.restarts,
            "pid": svc.pid,
            "uptimeSeconds": svc.started_at_ms.map(|t| now.saturating_sub(t) / 1000),
        });
        let mut output = Vec::new();
        if let Some(e) = &svc.last_error {
            output.push(e.clone());
        }
        if !svc.depends_on.is_empty() {
            output.push(format!("waiting for {}", svc.depends_on.join(", ")));
        }
        if !output.is_empty() {
            check["output"] = json!(output.join("; "));
        }
        checks.insert(format!("{}:state", svc.name), json!([check]));
    }
    let mut doc = json!({
        "status": overall.as_str(),
        "version": s.version,
        "description": "Phoenix appliance supervisor",
        "checks": checks,
    });
    if let Some(why) = &s.limits_unavailable {
        // Expected on dev machines; noted, not counted against health.
        doc["notes"] = json!([format!("resource limits are not applied: {why}")]);
    }
    (overall, doc)
}

pub fn all_ready(s: &Snapshot) -> bool {
    !s.shutting_down
        && s.services
            .iter()
            .all(|svc| !svc.wanted || matches!(svc.state, State::Ready | State::Exited))
}

#[derive(Clone)]
struct Shared {
    snapshot: watch::Receiver<Snapshot>,
    heartbeat: Arc<AtomicU64>,
}

pub fn router(snapshot: watch::Receiver<Snapshot>, heartbeat: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Shared {
            snapshot,
            heartbeat,
        })
}

async fn health(AxState(sh): AxState<Shared>) -> Response {
    let (status, doc) = health_document(&sh.snapshot.borrow());
    let code = if status == Status::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/health+json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.to_string(),
    )
        .into_response()
}

async fn livez(AxState(sh): AxState<Shared>) -> Response {
    let age = now_ms().saturating_sub(sh.heartbeat.load(Ordering::Relaxed));
    if age < LIVENESS_STALE_MS {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop silent for {age} ms\n"),
        )
            .into_response()
    }
}

async fn readyz(AxState(sh): AxState<Shared>) -> Response {
    let s = sh.snapshot.borrow();
    if all_ready(&s) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let waiting: Vec<_> = s
            .services
            .iter()
            .filter(|svc| svc.wanted && !matches!(svc.state, State::Ready | State::Exited))
            .map(|svc| format!("{}={}", svc.name, svc.state.as_str()))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(" ")),
        )
            .into_response()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    service: String,
    state: String,
}

pub fn render_metrics(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("phoenix_supervisor");
    let state = Family::<StateLabel, Gauge>::default();
    let restarts = Family::<ServiceLabel, Gauge>::default();
    let uptime = Family::<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let now = now_ms();
    for svc in &s.services {
        for st in State::ALL {
            state
                .get_or_create(&StateLabel {
                    service: svc.name.clone(),
                    state: st.as_str().into(),
                })
                .set(i64::from(svc.state == st));
        }
        restarts
            .get_or_create(&ServiceLabel {
                service: svc.name.clone(),
            })
            .set(svc.restarts as i64);
        uptime
            .get_or_create(&ServiceLabel {
                service: svc.name.clone(),
            })
            .set(
                svc.started_at_ms
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
            );
    }
    registry.register("service_state", "1 for the state each service is in", state);
    registry.register(
        "service_restarts",
        "Automatic restarts of each service",
        restarts,
    );
    registry.register(
        "service_uptime_seconds",
        "Seconds since the service's process started",
        uptime,
    );
    let orphans = Gauge::<i64>::default();
    orphans.set(s.orphans_reaped as i64);
    registry.register("orphans_reaped", "Orphaned processes reaped", orphans);
    let (status, _) = health_document(s);
    let health = Gauge::<i64>::default();
    health.set(status as i64);
    registry.register(
        "health_status",
        "Overall health: 0 pass, 1 warn, 2 fail",
        health,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

async fn metrics(AxState(sh): AxState<Shared>) -> Response {
    let body = render_metrics(&sh.snapshot.borrow());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ServiceStatus;

    fn svc(name: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            pid: Some(42),
            restarts: 3,
            oneshot: false,
            wanted: true,
            started_at_ms: Some(now_ms() - 5_000),
            since_ms: now_ms(),
            last_exit: None,
            last_error: None,
            depends_on: vec![],
        }
    }

    fn snap(services: Vec<ServiceStatus>) -> Snapshot {
        Snapshot {
            version: "1.2.3".into(),
            started_at_ms: 0,
            pid1: false,
            config_file: "x".into(),
            limits_unavailable: None,
            shutting_down: false,
            orphans_reaped: 0,
            services,
        }
    }

    #[test]
    fn worst_service_decides_overall_status() {
        let (s, doc) =
            health_document(&snap(vec![svc("a", State::Ready), svc("b", State::Exited)]));
        assert_eq!(s, Status::Pass);
        assert_eq!(doc["status"], "pass");
        assert_eq!(doc["checks"]["a:state"][0]["restarts"], 3);
        assert!(
            doc["checks"]["a:state"][0]["uptimeSeconds"]
                .as_u64()
                .unwrap()
                >= 4
        );
        assert_eq!(
            health_document(&snap(vec![
                svc("a", State::Ready),
                svc("b", State::Backoff)
            ]))
            .0,
            Status::Warn
        );
        assert_eq!(
            health_document(&snap(vec![
                svc("a", State::Failed),
                svc("b", State::Backoff)
            ]))
            .0,
            Status::Fail
        );
    }

    #[test]
    fn metrics_expose_state_and_restarts() {
        let text = render_metrics(&snap(vec![svc("api", State::Ready)]));
        assert!(
            text.contains(r#"phoenix_supervisor_service_state{service="api",state="ready"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"phoenix_supervisor_service_state{service="api",state="failed"} 0"#)
        );
        assert!(text.contains(r#"phoenix_supervisor_service_restarts{service="api"} 3"#));
        assert!(text.contains("phoenix_supervisor_health_status 0"));
    }
}
