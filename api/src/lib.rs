//! The Phoenix control-plane API.
//!
//! Code map:
//! - [`config`]: flags (clap, each also from the environment) and their
//!   validation into a [`config::Config`]. Never touches the network.
//! - [`db`]: the PostgreSQL pool: patient connect at startup, the embedded
//!   forward-only migrations (`api/migrations`), the health ping.
//! - [`auth`]: users, roles, passwords, tokens and sessions; the [`auth::Caller`]
//!   extractor that authenticates every protected request against the database.
//! - [`audit`]: the append-only audit log: writing entries (in the same
//!   transaction as the change they record, texts bounded), summing
//!   repeated refusals ([`audit::refusals`]), monthly partitions dropped
//!   past the retention ([`audit::retention`]); below [`auth`], which
//!   records through it.
//! - [`audit_admin`]: reading the audit log and setting its retention.
//! - [`error`]: [`error::ApiError`], each variant one status and a stable code.
//! - [`input`]: the `Json`, `Query` and `Path` extractors every handler
//!   takes, which refuse U+0000 in any string (400 `invalid_text`) before
//!   it can reach PostgreSQL; paging limits refused outside their range.
//! - [`health`], [`metrics`]: `GET /health` and `GET /metrics`; the metrics
//!   middleware times every request under its matched route.
//! - [`problem`]: RFC 9457 problem details, the one shape of every error
//!   response.
//! - [`server`]: binds the listeners, reloads the certificate on SIGHUP, and
//!   shuts down gracefully on SIGTERM/SIGINT.
//! - [`shutdown`]: the one shutdown future every task observes.
//! - [`edge`]: what faces the network on both listeners: the connection
//!   limit, TLS, HTTP/1.1 and HTTP/2 with their timeouts, and the lingering
//!   read of request bodies an early answer left unread.
//! - reduction pipelines and experiment task payloads as data live in the
//!   `phoenix-wire` crate (`phoenix_wire::pipeline`), shared with agents.
//! - [`pipelines`]: saved pipelines and templates.
//! - [`experiment_state`]: the experiment state machine, a pure function;
//!   a leaf that experiments and agents' writes read.
//! - [`experiments`]: experiments and operators' actions; every transition
//!   goes through `experiments::Transition::apply`; [`experiments::driver`]
//!   is the background task that advances experiments.
//! - [`kpi`]: KPIs measured with Prometheus queries; [`cost`]: the cost summary.
//! - [`push_group`]: the labels of agents' series, which writes set and
//!   KPI and cost queries select by; a leaf.
//! - [`agents`]: enrollment, agent credentials, the agent registry,
//!   heartbeats, and metric writes forwarded by remote write.
//! - [`tasks`]: the per-agent task queue: claims with leases, results,
//!   long-poll wake-ups.
//!
//! Retry delays come from the workspace's `phoenix-backoff` crate.
//!
//! The HTTP surface is [`router`]: handlers get an [`AppState`] and nothing
//! else; every documented route is registered through [`openapi`]'s router,
//! so the OpenAPI document cannot miss one.
#![forbid(unsafe_code)]

pub mod agents;
pub mod audit;
pub mod audit_admin;
pub mod auth;
pub mod charts;
pub mod config;
pub mod console;
pub mod cost;
pub mod db;
pub mod edge;
pub mod error;
pub mod experiment_state;
pub mod experiments;
pub mod health;
pub mod input;
pub mod kpi;
pub mod metrics;
pub mod peer;
pub mod pipelines;
pub mod problem;
pub mod push_group;
pub mod server;
pub mod shutdown;
pub mod singleton;
pub mod tasks;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{StatusCode, header},
    middleware,
    routing::get,
};
use sqlx::PgPool;
use tower_http::{
    limit::RequestBodyLimitLayer,
    timeout::TimeoutLayer,
    trace::{DefaultMakeSpan, DefaultOnFailure, TraceLayer},
};
use tracing::Level;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    agents::AgentCredentialScheme, auth::limiter::LoginLimiter, auth::tokens::JwtKeys,
    config::HttpLimits, metrics::Metrics,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<AuthState>,
    pub settings: Arc<Settings>,
    pub audit: Arc<audit::AuditState>,
    /// Sends agents' batches to the remote-write receiver; `None` without
    /// `--remote-write-url`.
    pub forwarder: Option<agents::forward::Forwarder>,
    /// Whether this replica does the singleton work.
    pub leader: singleton::Leader,
    /// The agents' metric groups whose series count this replica wrote.
    pub recorded_groups: Arc<agents::batch::RecordedGroups>,
}

/// Keys and limits of authentication.
#[derive(Debug)]
pub struct AuthState {
    pub keys: JwtKeys,
    pub limiter: LoginLimiter,
}

/// Where the API's neighbours are, and what a series costs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where agents' remote-write batches are forwarded to.
    pub remote_write_url: Option<url::Url>,
    /// The oldest sample a batch may hold, as an age: the receiver's
    /// out-of-order window.
    pub remote_write_max_age: std::time::Duration,
    /// Base URL of the Prometheus that experiment KPIs are queried from.
    pub prometheus_url: Option<url::Url>,
    /// The supervisor's `/health`, for the console's overview.
    pub supervisor_health_url: Option<url::Url>,
    /// Price of one active series per month, in dollars, for cost figures.
    pub price_per_series_month: f64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Phoenix API",
        description = "Control plane of the Phoenix observability-cost appliance. People and tools use \
                       the HTTPS listener (`/api/v1/...`, bearer JWT from `/api/v1/auth/login`)."
    ),
    modifiers(&BearerScheme, &AgentCredentialScheme),
    components(schemas(audit::Outcome)),
    tags(
        (name = "auth", description = "Log in, refresh, log out"),
        (name = "users", description = "User management (admin)"),
        (name = "audit", description = "The append-only audit log (admin)"),
        (name = "pipelines", description = "Reduction pipelines: templates and saved pipelines"),
        (name = "experiments", description = "A/B experiments of two pipelines, their state machine and measured KPIs"),
        (name = "cost", description = "Series and cost per month before and after promoted pipelines"),
        (name = "agents", description = "Enrollment tokens (admin) and the agents that enrolled"),
        (name = "tasks", description = "Work queued for agents, and its results"),
        (name = "agent", description = "For agents only, on the agent listener (port 6700): enrollment, \
                                        heartbeat, task long-poll and results, metric write"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The documented routes of the user listener.
fn user_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::routes::login))
        .routes(routes!(auth::routes::refresh))
        .routes(routes!(auth::routes::logout))
        .routes(routes!(auth::routes::me))
        .routes(routes!(auth::users::list, auth::users::create))
        .routes(routes!(auth::users::update, auth::users::delete))
        .routes(routes!(audit_admin::list))
        .routes(routes!(audit_admin::show, audit_admin::update))
        .routes(routes!(pipelines::list_templates))
        .routes(routes!(pipelines::list, pipelines::create))
        .routes(routes!(
            pipelines::get,
            pipelines::update,
            pipelines::delete
        ))
        .routes(routes!(experiments::list, experiments::create))
        .routes(routes!(experiments::get))
        .routes(routes!(experiments::start))
        .routes(routes!(experiments::stop))
        .routes(routes!(experiments::promote))
        .routes(routes!(experiments::rollback))
        .routes(routes!(charts::experiment))
        .routes(routes!(cost::summary))
        .routes(routes!(charts::history))
        .routes(routes!(
            agents::enrollment::list_tokens,
            agents::enrollment::create_token
        ))
        .routes(routes!(agents::enrollment::revoke_token))
        .routes(routes!(agents::registry::list))
        .routes(routes!(agents::registry::get, agents::registry::revoke))
        .routes(routes!(tasks::create))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::get, tasks::cancel))
}

/// The documented routes of the agent listener (agent credentials only).
fn agent_api() -> OpenApiRouter<AppState> {
    agent_json_api().merge(agent_write_api())
}

/// Agent routes with JSON bodies, bounded by --max-body-bytes.
fn agent_json_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agents::enrollment::enroll))
        .routes(routes!(agents::registry::heartbeat))
        .routes(routes!(tasks::poll))
        .routes(routes!(tasks::report))
}

/// The metric write, whose bodies may be larger than --max-body-bytes: it
/// bounds its own (`agents::write::MAX_BODY_BYTES`) and answers with a
/// problem.
fn agent_write_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(agents::write::write))
}

/// The OpenAPI document of both listeners, generated from the handlers'
/// annotations (paths tagged `agent` are served on the agent listener).
pub fn openapi() -> utoipa::openapi::OpenApi {
    user_api().merge(agent_api()).split_for_parts().1
}

/// The user listener: `/api/v1/...`, `/health`, `/metrics` and the OpenAPI
/// document, with request tracing, metrics, the request timeout (answered
/// with 503) and the body size limit (answered with 413). Unknown paths get a
/// 404 problem document.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let (api, _) = user_api().split_for_parts();
    let doc = Arc::new(
        openapi()
            .to_json()
            .expect("the OpenAPI document serializes"),
    );
    let app = Router::new()
        .route("/health", get(health::handler))
        .route("/metrics", get(metrics::handler))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .merge(api)
        .merge(console::router());
    with_layers(app, state, limits)
}

/// The agent listener: agent endpoints and `/health`; user tokens are not
/// accepted here, and agent credentials are not accepted on the user listener.
pub fn agent_router(state: AppState, limits: HttpLimits) -> Router {
    let (json, _) = agent_json_api().split_for_parts();
    let (write, _) = agent_write_api().split_for_parts();
    // The body limit is per route here: the JSON routes keep
    // --max-body-bytes, the metric write enforces its own larger one.
    let app = Router::new()
        .route("/health", get(health::handler))
        .merge(json.route_layer(RequestBodyLimitLayer::new(limits.max_body_bytes)))
        .merge(write);
    let limits = HttpLimits {
        max_body_bytes: usize::MAX,
        ..limits
    };
    with_layers(app, state, limits)
}

/// Tracing, metrics, timeout and body limit, for both listeners.
fn with_layers(app: Router<AppState>, state: AppState, limits: HttpLimits) -> Router {
    // Each `layer` wraps everything added before it, so the last one added
    // sees a request first: the drain of unread bodies, trace, then metrics
    // (which so also time timeouts and refusals), then the timeout, then the
    // body limit.
    app.fallback(problem::not_found)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        // Every error leaves as a problem document, the framework's included.
        .layer(middleware::from_fn(problem::ensure_problem))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(middleware::from_fn(edge::drain_unread_body))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{
        body::Body,
        http::{Request, header},
    };
    use http_body_util::BodyExt;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::time::Duration;
    use tower::ServiceExt;

    /// A state whose pool points at a port where nothing listens: no test
    /// here needs a database, and the health check must fail.
    fn state_without_database() -> AppState {
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unreachable.local_addr().unwrap().port();
        drop(unreachable);
        let options = PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(port)
            .username("phoenix");
        AppState {
            pool: PgPoolOptions::new()
                .acquire_timeout(Duration::from_millis(200))
                .connect_lazy_with(options),
            metrics: Arc::new(Metrics::new()),
            auth: Arc::new(AuthState {
                keys: JwtKeys::from_secret(&[1u8; 32]).unwrap(),
                limiter: LoginLimiter::new(Default::default()).unwrap(),
            }),
            settings: Arc::new(Settings {
                remote_write_url: None,
                remote_write_max_age: Duration::from_secs(6 * 3600),
                prometheus_url: None,
                supervisor_health_url: None,
                price_per_series_month: 0.05,
            }),
            audit: Arc::default(),
            forwarder: None,
            leader: crate::singleton::Leader::always(),
            recorded_groups: Arc::default(),
        }
    }

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_secs(5),
        max_body_bytes: 16,
    };

    async fn call(app: &Router, request: Request<Body>) -> (StatusCode, String, String) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    /// `GET /metrics` as if from `peer`.
    fn scrape(peer: &str) -> Request<Body> {
        let mut request = get("/metrics");
        let peer = std::net::SocketAddr::new(peer.parse().unwrap(), 40000);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        request
    }

    #[test]
    fn the_openapi_document_has_the_agent_protocol_schemas_of_phoenix_wire() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for schema in [
            "EnrollRequest",
            "Enrolled",
            "Heartbeat",
            "HeartbeatReply",
            "Claimed",
            "ClaimedTask",
            "ReportedResult",
            "ResultAccepted",
            "TaskState",
            "Outcome",
            "Written",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{schema} missing"
            );
        }
        let write = &doc["paths"]["/api/v1/agent/write"]["post"];
        assert_eq!(write["tags"][0], "agent");
        assert!(
            write["requestBody"]["content"]["application/x-protobuf"].is_object(),
            "{write}"
        );
    }

    #[tokio::test]
    async fn metrics_without_a_token_are_for_loopback_peers_only() {
        let app = router(state_without_database(), LIMITS);
        for peer in ["192.0.2.1", "2001:db8::1"] {
            let (status, content_type, body) = call(&app, scrape(peer)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{peer}");
            assert_eq!(content_type, problem::PROBLEM_CONTENT_TYPE);
            assert!(body.contains(r#""code":"missing_token""#), "{body}");
            assert!(!body.contains("phoenix_api"), "{body}");
        }
        let (status, _, body) = call(&app, get("/metrics")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no peer address: {body}");
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let (status, content_type, _) = call(&app, scrape(peer)).await;
            assert_eq!(status, StatusCode::OK, "{peer}");
            assert_eq!(content_type, metrics::METRICS_CONTENT_TYPE);
        }
        let agents = agent_router(state_without_database(), LIMITS);
        let (status, _, _) = call(&agents, scrape("127.0.0.1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "not on the agent listener");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_problems_counted_as_unmatched() {
        let state = state_without_database();
        let app = router(state.clone(), LIMITS);
        let (status, content_type, body) = call(&app, get("/api/v1/nothing")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, problem::PROBLEM_CONTENT_TYPE);
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["title"], "Not Found");
        assert_eq!(
            problem["detail"],
            "there is no resource at GET /api/v1/nothing"
        );

        let (_, content_type, text) = call(&app, scrape("127.0.0.1")).await;
        assert_eq!(content_type, metrics::METRICS_CONTENT_TYPE);
        assert!(
            text.contains(r#"method="GET",route="unmatched",status="404""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn health_fails_with_503_when_the_database_is_unreachable() {
        let state = state_without_database();
        let app = router(state.clone(), LIMITS);
        let (status, content_type, body) = call(&app, get("/health")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, health::HEALTH_CONTENT_TYPE);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "fail");
        assert_eq!(
            health["checks"]["postgres:connections"][0]["status"],
            "fail"
        );

        let (_, _, text) = call(&app, scrape("127.0.0.1")).await;
        assert!(text.contains("\nphoenix_api_database_up 0\n"), "{text}");
        assert!(
            text.contains(r#"method="GET",route="/health",status="503""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn slow_requests_are_cut_off_with_503() {
        // The health ping waits up to 200 ms for a connection that never comes.
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(20),
            ..LIMITS
        };
        let state = state_without_database();
        let app = router(state.clone(), limits);
        let (status, content_type, _) = call(&app, get("/health")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_ne!(
            content_type,
            health::HEALTH_CONTENT_TYPE,
            "the handler was not cut off"
        );
        let (_, _, text) = call(&app, scrape("127.0.0.1")).await;
        assert!(
            text.contains(r#"method="GET",route="/health",status="503""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let app = router(state_without_database(), LIMITS);
        let request = Request::post("/health")
            .header(header::CONTENT_LENGTH, "17")
            .body(Body::from(vec![b'x'; 17]))
            .unwrap();
        let (status, content_type, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(content_type, problem::PROBLEM_CONTENT_TYPE);
        assert!(body.contains(r#""code":"body_too_large""#), "{body}");
    }

    #[tokio::test]
    async fn framework_refusals_are_problem_documents_too() {
        let app = router(state_without_database(), LIMITS);
        // A wrong method keeps its Allow header.
        let (status, content_type, body) = call(
            &app,
            Request::delete("/health").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(content_type, problem::PROBLEM_CONTENT_TYPE);
        assert!(body.contains(r#""code":"method_not_allowed""#), "{body}");
        // A body that does not parse.
        let request = Request::post("/api/v1/auth/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{nope"))
            .unwrap();
        let (status, content_type, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, problem::PROBLEM_CONTENT_TYPE);
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains("JSON"),
            "{problem}"
        );
    }
}
