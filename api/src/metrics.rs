//! Prometheus metrics: what they are, the middleware that times every request,
//! and the `/metrics` endpoint, which only the local Prometheus (over
//! loopback) and admins may read.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::{Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;

use crate::{
    AppState,
    auth::{
        Caller, Role,
        caller::{bearer, client_ip},
    },
    error::{ApiError, ApiResult},
    problem::Problem,
};

/// Media type of the OpenMetrics text format that [`encode`] writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Route label for requests that matched no route; keeps scanners from
/// creating one series per probed path.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Bucket bounds in seconds; 0.2 and 0.5 are the warning and critical p95
/// latencies of the scaling checks.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskStateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The service's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    request_duration: HistogramFamily,
    database_up: Gauge,
    database_size: Gauge,
    agents_connected: Gauge,
    agents_offline: Gauge,
    tasks: Family<TaskStateLabels, Gauge>,
    forwards: Family<OutcomeLabels, Counter>,
    forwarded_batches: Family<OutcomeLabels, Counter>,
    forward_duration: Histogram,
    forward_wait: Histogram,
    forward_request: Histogram,
    forward_shed: Counter,
    forward_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phoenix_api");
        let request_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS.into_iter()));
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by method, matched route and status",
            Unit::Seconds,
            request_duration.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "Whether the last database ping succeeded (1) or not (0)",
            database_up.clone(),
        );
        let database_size = Gauge::default();
        registry.register_with_unit(
            "database_size",
            "Size of the API's database (pg_database_size)",
            Unit::Bytes,
            database_size.clone(),
        );
        let agents_connected = Gauge::default();
        registry.register(
            "agents_connected",
            "Agents seen within the last three heartbeat intervals (45 s)",
            agents_connected.clone(),
        );
        let agents_offline = Gauge::default();
        registry.register(
            "agents_offline",
            "Agents not revoked and not seen within the last three heartbeat intervals (45 s)",
            agents_offline.clone(),
        );
        let tasks = Family::<TaskStateLabels, Gauge>::default();
        registry.register("tasks", "Tasks by state", tasks.clone());
        let forwards = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "remote_write_requests",
            "Requests sent to the remote-write receiver, by outcome (stored, refused, unavailable)",
            forwards.clone(),
        );
        let forwarded_batches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "remote_write_batches",
            "Agents' batches in those requests (several batches may share one request), by outcome",
            forwarded_batches.clone(),
        );
        let forward_duration = Histogram::new(LATENCY_BUCKETS.into_iter());
        registry.register_with_unit(
            "remote_write_forward_duration",
            "Time from a batch's arrival at the forwarder to the receiver's answer, waiting for a free request included",
            Unit::Seconds,
            forward_duration.clone(),
        );
        let forward_wait = Histogram::new(LATENCY_BUCKETS.into_iter());
        registry.register_with_unit(
            "remote_write_forward_wait",
            "Time a batch waited at the forwarder before its request started",
            Unit::Seconds,
            forward_wait.clone(),
        );
        let forward_request = Histogram::new(LATENCY_BUCKETS.into_iter());
        registry.register_with_unit(
            "remote_write_request_duration",
            "Time of one request to the remote-write receiver, encoding and the answer included",
            Unit::Seconds,
            forward_request.clone(),
        );
        let forward_shed = Counter::default();
        registry.register(
            "remote_write_batches_shed",
            "Agents' batches answered 503 at once because the forwarder's backlog was full (the agents keep them and retry)",
            forward_shed.clone(),
        );
        let forward_waiting = Gauge::default();
        registry.register(
            "remote_write_waiting_samples",
            "Samples of agents' batches waiting at the forwarder for a request to the receiver",
            forward_waiting.clone(),
        );
        Self {
            registry,
            request_duration,
            database_up,
            database_size,
            agents_connected,
            agents_offline,
            tasks,
            forwards,
            forwarded_batches,
            forward_duration,
            forward_wait,
            forward_request,
            forward_shed,
            forward_waiting,
        }
    }

    /// Records a batch refused because the forwarder's backlog was full.
    pub fn observe_forward_shed(&self) {
        self.forward_shed.inc();
    }

    /// Adds to (or takes from) the samples waiting at the forwarder.
    pub fn add_forward_waiting(&self, samples: usize, add: bool) {
        let samples = i64::try_from(samples).unwrap_or(i64::MAX);
        if add {
            self.forward_waiting.inc_by(samples);
        } else {
            self.forward_waiting.dec_by(samples);
        }
    }

    /// Records how long one batch took to be forwarded.
    pub fn observe_forward_duration(&self, elapsed: Duration) {
        self.forward_duration.observe(elapsed.as_secs_f64());
    }

    /// Records how long a batch waited before its request started.
    pub fn observe_forward_wait(&self, elapsed: Duration) {
        self.forward_wait.observe(elapsed.as_secs_f64());
    }

    /// Records how long one request to the receiver took.
    pub fn observe_forward_request(&self, elapsed: Duration) {
        self.forward_request.observe(elapsed.as_secs_f64());
    }

    /// Records one request to the remote-write receiver holding `batches`
    /// agents' batches.
    pub fn observe_forward(&self, batches: usize, outcome: &'static str) {
        let labels = OutcomeLabels { outcome };
        self.forwards.get_or_create(&labels).inc();
        self.forwarded_batches
            .get_or_create(&labels)
            .inc_by(batches as u64);
    }

    /// Records one answered request. `route` is the matched route template,
    /// `None` when no route matched.
    pub fn observe_request(
        &self,
        method: &Method,
        route: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.unwrap_or(UNMATCHED_ROUTE).to_owned(),
            status: status.as_u16(),
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records the outcome of a database ping; returns whether the previous
    /// one had succeeded.
    pub fn set_database_up(&self, up: bool) -> bool {
        self.database_up.set(i64::from(up)) == 1
    }

    /// Records how many agents are connected (from the database).
    pub fn set_database_size(&self, bytes: i64) {
        self.database_size.set(bytes);
    }

    pub fn set_agents_connected(&self, agents: i64) {
        self.agents_connected.set(agents);
    }

    /// Records how many agents are enrolled, not revoked, and not seen
    /// within the online window (from the database).
    pub fn set_agents_offline(&self, agents: i64) {
        self.agents_offline.set(agents);
    }

    /// Records how many tasks are in `state` (from the database).
    pub fn set_tasks(&self, state: &'static str, tasks: i64) {
        self.tasks
            .get_or_create(&TaskStateLabels { state })
            .set(tasks);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Bounded label values: a client cannot mint new series with made-up methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware that times each request under its matched route.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.observe_request(
        &method,
        route.as_deref(),
        response.status(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`. Agent counts, the database size and per-route latencies
/// are not for strangers on the public listener: served without a token
/// only to a loopback peer (the appliance's Prometheus), otherwise only to
/// an admin's token. A token, when sent, is always checked, even over
/// loopback.
pub async fn handler(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if let Err(refusal) = authorize(&mut parts, &state).await {
        return refusal.into_response();
    }
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "could not render metrics");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                .with_detail("the metrics could not be rendered")
                .into_response()
        }
    }
}

async fn authorize(parts: &mut Parts, state: &AppState) -> ApiResult<()> {
    if bearer(parts).is_none() {
        return if is_local_scrape(client_ip(parts)) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "missing_token",
                "/metrics answers without a token only over loopback (the local Prometheus); \
                 send `Authorization: Bearer <access token of an admin>`",
            ))
        };
    }
    let caller = Caller::from_request_parts(parts, state).await?;
    caller.require(Role::Admin, "metrics.read", state).await
}

/// Whether `peer` may read the metrics without a token: a loopback address,
/// also as an IPv4-mapped IPv6 one (a listener on `[::]`).
pub fn is_local_scrape(peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_request_histogram_and_database_gauge() {
        let metrics = Metrics::new();
        metrics.observe_request(
            &Method::GET,
            Some("/health"),
            StatusCode::OK,
            Duration::from_millis(3),
        );
        metrics.observe_request(
            &Method::GET,
            Some("/health"),
            StatusCode::OK,
            Duration::from_millis(400),
        );
        metrics.set_database_up(true);
        let text = metrics.render().unwrap();

        assert!(
            text.contains("# TYPE phoenix_api_http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT phoenix_api_http_request_duration_seconds seconds"),
            "{text}"
        );
        let labels = r#"method="GET",route="/health",status="200""#;
        assert!(
            text.contains(&format!(
                "phoenix_api_http_request_duration_seconds_count{{{labels}}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "phoenix_api_http_request_duration_seconds_bucket{{le=\"0.005\",{labels}}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "phoenix_api_http_request_duration_seconds_bucket{{le=\"0.5\",{labels}}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE phoenix_api_database_up gauge"),
            "{text}"
        );
        assert!(text.contains("\nphoenix_api_database_up 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn unknown_routes_and_methods_share_bounded_labels() {
        let metrics = Metrics::new();
        let brew = Method::from_bytes(b"BREW").unwrap();
        metrics.observe_request(&brew, None, StatusCode::NOT_FOUND, Duration::from_millis(1));
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"method="other",route="unmatched",status="404""#),
            "{text}"
        );
    }

    #[test]
    fn only_loopback_peers_scrape_without_a_token() {
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(is_local_scrape(Some(local.parse().unwrap())), "{local}");
        }
        for remote in [
            "192.0.2.1",
            "10.0.0.1",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:192.0.2.1",
            "::",
        ] {
            assert!(!is_local_scrape(Some(remote.parse().unwrap())), "{remote}");
        }
        assert!(!is_local_scrape(None), "no peer address, no exception");
    }

    #[test]
    fn database_gauge_follows_the_last_ping() {
        let metrics = Metrics::new();
        assert!(!metrics.set_database_up(true));
        assert!(metrics.set_database_up(false));
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("\nphoenix_api_database_up 0\n")
        );
    }
}
