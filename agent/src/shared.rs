//! What the agent's loops share ([`Agent`]), and the status the heartbeat
//! reports and the health endpoint shows.

use std::sync::Arc;

use serde_json::json;

use crate::collect::now_ms;
use crate::config::Config;
use crate::deliver::Health;
use crate::queue::Queue;
use crate::state::State;

/// Everything the loops share.
#[derive(Clone)]
pub struct Agent {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub state: State,
    pub api_health: Arc<Health>,
    pub external_health: Arc<Health>,
    pub collections: Arc<std::sync::atomic::AtomicU64>,
    /// Collections sampled and not yet written to the queue.
    pub unwritten: Arc<std::sync::atomic::AtomicU64>,
}

/// What the heartbeat reports and `phoenix-agent status` prints.
pub async fn status(agent: &Agent) -> serde_json::Value {
    let stats = agent.queue.stats().await.unwrap_or_default();
    let running = agent.state.current(now_ms()).await;
    let health = |h: &Health| {
        use std::sync::atomic::Ordering::Relaxed;
        let last = h.last_success_ms.load(Relaxed);
        json!({
            "send_failures": h.send_failures.load(Relaxed),
            "delivered_batches": h.delivered_batches.load(Relaxed),
            "last_success": (last > 0).then(|| chrono::DateTime::from_timestamp_millis(last)),
        })
    };
    let mut destinations = json!({"api": health(&agent.api_health)});
    if agent.config.remote_write.is_some() {
        destinations["external"] = health(&agent.external_health);
    }
    json!({
        "queue": {
            "batches": stats.batches,
            "bytes": stats.bytes,
            "samples": stats.samples,
            "oldest_age_secs": stats.oldest_collected_at_ms.map(|t| ((now_ms() - t).max(0)) / 1000),
            "evicted_batches": stats.evicted_batches,
            "evicted_samples": stats.evicted_samples,
            "rejected_batches": stats.rejected_batches,
            "results": stats.results,
            "tasks": stats.tasks,
        },
        "destinations": destinations,
        "live_pipeline": running.live.spec(),
        "experiments": running.experiments.keys().collect::<Vec<_>>(),
    })
}
