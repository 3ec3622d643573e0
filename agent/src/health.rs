//! The agent's own health: `/metrics` in the Prometheus text format on a
//! loopback listener, built at each scrape from the queue database and the
//! delivery loops' figures.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `phoenix_agent_queue_batches` | gauge | batches waiting |
//! | `phoenix_agent_queue_bytes` | gauge | their bytes |
//! | `phoenix_agent_queue_samples` | gauge | their samples |
//! | `phoenix_agent_queue_oldest_age_seconds` | gauge | age of the oldest, 0 when empty |
//! | `phoenix_agent_queue_results` | gauge | task results not yet answered |
//! | `phoenix_agent_evicted_batches_total`, `phoenix_agent_evicted_samples_total` | counter | dropped by the queue's bounds or a full disk |
//! | `phoenix_agent_rejected_batches_total` | counter | refused by a destination for good |
//! | `phoenix_agent_send_failures_total{destination}` | counter | attempts that will be retried |
//! | `phoenix_agent_last_success_timestamp_seconds{destination}` | gauge | last delivered batch |
//! | `phoenix_agent_collections_total` | counter | collections since start, handed to the queue's writer |
//! | `phoenix_agent_collections_unwritten` | gauge | collections handed over and not yet in the queue (a slow disk) |
//! | `phoenix_agent_experiments` | gauge | experiments running |
//!
//! The listener takes at most 16 requests at once, each for at most 10 s.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::collect::now_ms;
use crate::shared::Agent;

pub async fn serve(listener: tokio::net::TcpListener, agent: Agent) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(16))
        .with_state(agent);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the /metrics listener stopped");
    }
}

async fn metrics(State(agent): State<Agent>) -> impl IntoResponse {
    match render(&agent).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot read the queue: {e}\n"),
        ),
    }
}

pub async fn render(agent: &Agent) -> anyhow::Result<String> {
    let stats = agent.queue.stats().await?;
    let experiments = agent.state.current(now_ms()).await.experiments.len();
    let mut r = Registry::with_prefix("phoenix_agent");
    let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
        r.register(name, help, ConstGauge::new(v))
    };
    gauge(
        &mut r,
        "queue_batches",
        "Batches waiting to be delivered",
        stats.batches,
    );
    gauge(
        &mut r,
        "queue_bytes",
        "Bytes of the batches waiting",
        stats.bytes,
    );
    gauge(
        &mut r,
        "queue_samples",
        "Samples in the batches waiting",
        stats.samples,
    );
    gauge(
        &mut r,
        "queue_oldest_age_seconds",
        "Age of the oldest batch waiting, 0 when none",
        stats
            .oldest_collected_at_ms
            .map_or(0, |t| (now_ms() - t).max(0) / 1000),
    );
    gauge(
        &mut r,
        "queue_results",
        "Task results not yet answered by the control plane",
        stats.results,
    );
    gauge(
        &mut r,
        "collections_unwritten",
        "Collections sampled and not yet written to the queue; above 1 the disk is slow",
        agent.unwritten.load(Relaxed) as i64,
    );
    gauge(
        &mut r,
        "experiments",
        "Experiments running",
        experiments as i64,
    );
    let counter = |r: &mut Registry, name: &str, help: &str, v: i64| {
        r.register(name, help, ConstCounter::new(v.max(0) as u64))
    };
    counter(
        &mut r,
        "evicted_batches",
        "Batches dropped by the queue's bounds or a full disk",
        stats.evicted_batches,
    );
    counter(
        &mut r,
        "evicted_samples",
        "Samples in the batches dropped by the queue's bounds or a full disk",
        stats.evicted_samples,
    );
    counter(
        &mut r,
        "rejected_batches",
        "Batches a destination refused for good",
        stats.rejected_batches,
    );
    counter(
        &mut r,
        "collections",
        "Collections since the agent started",
        agent.collections.load(Relaxed) as i64,
    );
    let failures =
        Family::<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>::default();
    let last = Family::<Vec<(String, String)>, Gauge>::default();
    let mut destinations = vec![("api", &agent.api_health)];
    if agent.config.remote_write.is_some() {
        destinations.push(("external", &agent.external_health));
    }
    for (name, h) in destinations {
        let labels = vec![("destination".to_owned(), name.to_owned())];
        failures
            .get_or_create(&labels)
            .inc_by(h.send_failures.load(Relaxed));
        last.get_or_create(&labels)
            .set(h.last_success_ms.load(Relaxed) / 1000);
    }
    r.register(
        "send_failures",
        "Delivery attempts that failed and will be retried",
        failures,
    );
    r.register(
        "last_success_timestamp_seconds",
        "When a batch was last delivered, in seconds since the epoch; 0 before the first",
        last,
    );
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}
