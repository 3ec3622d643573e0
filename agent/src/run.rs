//! `phoenix-agent run`: enrolls if needed, resumes unfinished tasks, then
//! runs the loops until SIGTERM/SIGINT or until the credential is refused:
//!
//! - **collect**, every `collect_interval`: samples the processes once and
//!   queues one batch per pipeline — the live one for the control plane
//!   (and the external endpoint, if any), and baseline and candidate of
//!   each running experiment. Never waits on the network.
//! - **deliver** ([`crate::deliver`]): one loop per destination, and one for
//!   task results.
//! - **poll**: the task long poll; each task is recorded, run and its
//!   result queued ([`crate::tasks`]).
//! - **heartbeat**, at the interval the control plane asks for, with the
//!   queue's figures as status.
//! - **health**: `/metrics` on the loopback listener ([`crate::health`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_wire::agent::{Claimed, Heartbeat, HeartbeatReply, NO_GROUP, path};
use phoenix_wire::remote_write::{WriteRequest, encode};
use tokio::sync::{Notify, watch};

use crate::client::{Refusal, check, http_client};
use crate::collect::Collector;
use crate::config::Config;
use crate::deliver::{self, BACKOFF, Fatal, Target};
use crate::enroll::{self, Credential};
use crate::pipeline::{Compiled, Row, to_series};
use crate::queue::{Destination, Queue};
use crate::shared::{Agent, status};
use crate::state::State;

/// The exit status when the credential was refused: systemd's unit does
/// not restart on it (`RestartPreventExitStatus=78`, EX_CONFIG).
pub const EXIT_REENROLL: i32 = 78;

/// Long-poll wait, below the API's request timeout.
const POLL_WAIT_SECS: u64 = 25;
const LEASE_SECS: u64 = 120;

/// Runs the agent; returns the reason it must stop for good, if it must.
pub async fn run(config: Config) -> anyhow::Result<Option<String>> {
    prepare_state_dir(&config.state_dir)?;
    let client = http_client(config.api.ca_file.as_deref())?;
    let queue = Queue::open(&config.state_dir, config.queue).await?;
    let credential = enroll_until_done(&config, &client).await?;
    tracing::info!(agent_id = %credential.agent_id, api = %config.api.url, "agent starting");
    let state = State::load(queue.clone()).await?;
    let resumed = crate::tasks::resume(&queue, &state).await?;
    if resumed > 0 {
        tracing::info!(resumed, "tasks received before a restart were run again");
    }
    let agent = Agent {
        config: Arc::new(config),
        queue: queue.clone(),
        state,
        api_health: Arc::default(),
        external_health: Arc::default(),
        collections: Arc::default(),
    };
    let (fatal, mut fatal_rx): (Fatal, _) = watch::channel(None);
    let wake_api = Arc::new(Notify::new());
    let wake_external = Arc::new(Notify::new());
    let wake_results = Arc::new(Notify::new());
    let mut set = tokio::task::JoinSet::new();

    if let Some(addr) = agent.config.health_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for /metrics ([health] listen): {e}")
        })?;
        set.spawn(crate::health::serve(listener, agent.clone()));
    }
    set.spawn(collect_loop(
        agent.clone(),
        wake_api.clone(),
        wake_external.clone(),
    ));
    set.spawn(deliver::batches(
        queue.clone(),
        Target::Api {
            client: client.clone(),
            base: agent.config.api.url.clone(),
            credential: credential.clone(),
        },
        wake_api,
        agent.api_health.clone(),
        fatal.clone(),
    ));
    if let Some(rw) = &agent.config.remote_write {
        set.spawn(deliver::batches(
            queue.clone(),
            Target::External {
                client: http_client(rw.ca_file.as_deref())?,
                config: rw.clone(),
            },
            wake_external,
            agent.external_health.clone(),
            fatal.clone(),
        ));
    }
    set.spawn(deliver::results(
        queue.clone(),
        client.clone(),
        agent.config.api.url.clone(),
        credential.clone(),
        wake_results.clone(),
        fatal.clone(),
    ));
    set.spawn(poll_loop(
        agent.clone(),
        client.clone(),
        credential.clone(),
        wake_results,
        fatal.clone(),
    ));
    set.spawn(heartbeat_loop(agent.clone(), client, credential, fatal));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        r = fatal_rx.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
    };
    set.shutdown().await;
    if reason.is_none() {
        tracing::info!("agent stopped; queued batches and results stay for the next start");
    }
    Ok(reason)
}

fn prepare_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state folder {}: {e}", dir.display()))
}

/// Enrolls, retrying while the control plane cannot be reached; a refusal
/// is final.
async fn enroll_until_done(
    config: &Config,
    client: &reqwest::Client,
) -> anyhow::Result<Credential> {
    let mut attempt = 0;
    loop {
        match enroll::credential(config, client).await {
            Ok(c) => return Ok(c),
            Err(e) if e.to_string().starts_with("cannot enroll:") => {
                let delay = BACKOFF.delay(attempt);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the control plane to enroll yet");
                attempt += 1;
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The labels the agent puts on what it sends to an external endpoint; the
/// control plane adds its own (`job`, `agent`, `experiment`, `variant`).
fn external_labels(config: &Config) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("job".to_owned(), "phoenix-agent".to_owned()),
        (
            "instance".to_owned(),
            config
                .api
                .name
                .clone()
                .or_else(sysinfo::System::host_name)
                .unwrap_or_else(|| "unknown".into()),
        ),
    ]);
    if let Some(rw) = &config.remote_write {
        labels.extend(rw.labels.clone());
    }
    labels
}

fn body(
    rows: &[Row],
    pipeline: &Compiled,
    timestamp_ms: i64,
    extra: &BTreeMap<String, String>,
) -> (Vec<u8>, i64) {
    let request = WriteRequest {
        timeseries: to_series(&pipeline.run(rows), timestamp_ms, extra),
        ..Default::default()
    };
    (encode(&request), request.sample_count() as i64)
}

/// Collects, runs the pipelines and queues their batches.
pub async fn collect_once(agent: &Agent, collector: &Arc<Mutex<Collector>>) -> anyhow::Result<()> {
    let c = collector.clone();
    let collection =
        tokio::task::spawn_blocking(move || c.lock().expect("collector lock").collect()).await?;
    let running = agent.state.current(collection.timestamp_ms).await;
    let none = BTreeMap::new();
    let ts = collection.timestamp_ms;
    let (live, samples) = body(&collection.rows, &running.live, ts, &none);
    agent
        .queue
        .push(Destination::Api, NO_GROUP, NO_GROUP, ts, samples, &live)
        .await?;
    if agent.config.remote_write.is_some() {
        let (external, samples) = body(
            &collection.rows,
            &running.live,
            ts,
            &external_labels(&agent.config),
        );
        agent
            .queue
            .push(
                Destination::External,
                NO_GROUP,
                NO_GROUP,
                ts,
                samples,
                &external,
            )
            .await?;
    }
    for (id, experiment) in &running.experiments {
        let id = id.to_string();
        for (variant, pipeline) in [
            ("baseline", &experiment.baseline),
            ("candidate", &experiment.candidate),
        ] {
            let (batch, samples) = body(&collection.rows, pipeline, ts, &none);
            agent
                .queue
                .push(Destination::Api, &id, variant, ts, samples, &batch)
                .await?;
        }
    }
    agent
        .collections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

async fn collect_loop(agent: Agent, wake_api: Arc<Notify>, wake_external: Arc<Notify>) {
    let collector = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(Collector::new)
            .await
            .expect("the collector starts"),
    ));
    let mut tick = tokio::time::interval(agent.config.collect_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match collect_once(&agent, &collector).await {
            Ok(()) => {
                wake_api.notify_one();
                wake_external.notify_one();
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot queue this collection"),
        }
    }
}

async fn poll_loop(
    agent: Agent,
    client: reqwest::Client,
    credential: Credential,
    wake_results: Arc<Notify>,
    fatal: Fatal,
) {
    let mut attempt = 0u32;
    loop {
        let Ok(mut url) = agent.config.api.url.join(path::TASKS) else {
            return;
        };
        url.query_pairs_mut()
            .append_pair("wait", &POLL_WAIT_SECS.to_string())
            .append_pair("max", "10")
            .append_pair("lease", &LEASE_SECS.to_string());
        let answer = check(
            client
                .get(url)
                .header(reqwest::header::AUTHORIZATION, credential.bearer())
                .timeout(Duration::from_secs(POLL_WAIT_SECS) + crate::client::REQUEST_TIMEOUT)
                .send()
                .await,
        )
        .await;
        let claimed = match answer {
            Ok(response) => response
                .json::<Claimed>()
                .await
                .map_err(|e| Refusal::Retry(e.to_string())),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(claimed) => {
                attempt = 0;
                for task in claimed.tasks {
                    let id = task.id;
                    if let Err(e) = crate::tasks::receive(&agent.queue, &agent.state, task).await {
                        // Not recorded: the lease runs out and the task comes back.
                        tracing::error!(task = %id, error = %format!("{e:#}"), "cannot record a task");
                    }
                }
                wake_results.notify_one();
            }
            Err(Refusal::Credential { code, detail }) => {
                deliver::credential_refused(&fatal, &code, &detail);
                return;
            }
            Err(e) => {
                let delay = BACKOFF.delay(attempt);
                if attempt == 0 || attempt.is_multiple_of(10) {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot poll for tasks");
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn heartbeat_loop(
    agent: Agent,
    client: reqwest::Client,
    credential: Credential,
    fatal: Fatal,
) {
    let mut interval = Duration::from_secs(15);
    let mut attempt = 0u32;
    loop {
        let beat = Heartbeat {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            status: Some(status(&agent).await),
        };
        let Ok(url) = agent.config.api.url.join(path::HEARTBEAT) else {
            return;
        };
        let answer = check(
            client
                .post(url)
                .header(reqwest::header::AUTHORIZATION, credential.bearer())
                .json(&beat)
                .send()
                .await,
        )
        .await;
        let delay = match answer {
            Ok(response) => {
                attempt = 0;
                if let Ok(reply) = response.json::<HeartbeatReply>().await {
                    interval = Duration::from_secs(reply.heartbeat_interval_secs.clamp(1, 3600));
                }
                interval
            }
            Err(Refusal::Credential { code, detail }) => {
                deliver::credential_refused(&fatal, &code, &detail);
                return;
            }
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                attempt = attempt.saturating_add(1);
                BACKOFF.delay(attempt).min(interval)
            }
        };
        tokio::time::sleep(delay).await;
    }
}
