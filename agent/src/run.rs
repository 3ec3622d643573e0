//! `phoenix-agent run`: enrolls if needed, resumes unfinished tasks, then
//! runs the loops until SIGTERM/SIGINT or until the credential is refused:
//!
//! - **collect**, every `collect_interval`: samples the processes once and
//!   builds one batch per pipeline — the live one for the control plane
//!   (and the external endpoint, if any), and baseline and candidate of
//!   each running experiment. Never waits on the network, nor on the disk
//!   unless 32 collections already wait to be written.
//! - **write**: writes each collection's batches to the queue in one
//!   transaction, then wakes the delivery loops.
//! - **deliver** ([`crate::deliver`]): one loop per destination, and one for
//!   task results.
//! - **poll**: the task long poll; each task is recorded, run and its
//!   result queued ([`crate::tasks`]).
//! - **heartbeat**, at the interval the control plane asks for, with the
//!   queue's figures as status.
//! - **health**: `/metrics` on the loopback listener ([`crate::health`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_wire::agent::{Claimed, Heartbeat, HeartbeatReply, NO_GROUP, path};
use phoenix_wire::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use tokio::sync::{Notify, mpsc, watch};

use crate::client::{Refusal, check, http_client};
use crate::collect::Collector;
use crate::config::Config;
use crate::deliver::{self, BACKOFF, Fatal, Target};
use crate::enroll::{self, Credential};
use crate::pipeline::{Compiled, Row, to_series};
use crate::queue::{Destination, NewBatch, Queue};
use crate::shared::{Agent, status};
use crate::state::State;

/// The exit status when retrying cannot help (a refused credential or
/// enrollment token, an invalid configuration): systemd's unit does not
/// restart on it (`RestartPreventExitStatus=78`, EX_CONFIG).
pub const EXIT_REENROLL: i32 = 78;

/// An error that retrying cannot fix: the operator must act (a refused
/// enrollment token, no token to enroll with). The agent exits with
/// [`EXIT_REENROLL`] so that systemd does not restart it in a loop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NeedsOperator(pub String);

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
        unwritten: Arc::default(),
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
    let (to_write, collected) = mpsc::channel(UNWRITTEN_COLLECTIONS);
    let mut writer = tokio::spawn(write_loop(
        agent.clone(),
        collected,
        wake_api.clone(),
        wake_external.clone(),
    ));
    set.spawn(collect_loop(agent.clone(), to_write));
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
        ended = &mut writer => {
            // Only a bug ends it while the collect loop runs: stop, and let
            // the service manager start the agent again.
            set.shutdown().await;
            anyhow::bail!(
                "the queue's writer stopped ({}); nothing is collected without it",
                ended.err().map_or_else(|| "it returned".to_owned(), |e| e.to_string())
            );
        }
    };
    set.shutdown().await;
    // The collect loop has ended: write what it sampled before stopping.
    match tokio::time::timeout(Duration::from_secs(10), writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the queue's writer failed while stopping"),
        Err(_) => {
            tracing::warn!("the disk is too slow: the last collections sampled were not written")
        }
    }
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
            Err(e) => return Err(NeedsOperator(format!("{e:#}")).into()),
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

/// One stream's batch of a collection, for the stream's destination and
/// group, with staleness markers for the series it sent last time and no
/// longer has.
fn batch(
    stream: Stream,
    stale: &mut Staleness,
    rows: &[Row],
    pipeline: &Compiled,
    timestamp_ms: i64,
    extra: &BTreeMap<String, String>,
) -> NewBatch {
    let mut timeseries = to_series(&pipeline.run(rows), timestamp_ms, extra);
    let (destination, experiment, variant) = (
        stream.destination,
        stream.experiment.clone(),
        stream.variant.to_owned(),
    );
    stale.mark(stream, &mut timeseries, timestamp_ms);
    let request = WriteRequest {
        timeseries,
        ..Default::default()
    };
    NewBatch {
        destination,
        experiment,
        variant,
        samples: request.sample_count() as i64,
        body: encode(&request),
    }
}

/// One collection: its time and one batch per stream.
pub struct Collected {
    pub timestamp_ms: i64,
    pub batches: Vec<NewBatch>,
}

/// Collects and runs the pipelines; touches neither disk nor network.
pub async fn collect_once(
    agent: &Agent,
    collector: &Arc<Mutex<Collector>>,
    stale: &mut Staleness,
) -> anyhow::Result<Collected> {
    let c = collector.clone();
    let collection =
        tokio::task::spawn_blocking(move || c.lock().expect("collector lock").collect()).await?;
    let running = agent.state.current(collection.timestamp_ms).await;
    let none = BTreeMap::new();
    let ts = collection.timestamp_ms;
    stale.begin();
    let mut batches = vec![batch(
        Stream::live(Destination::Api),
        stale,
        &collection.rows,
        &running.live,
        ts,
        &none,
    )];
    if agent.config.remote_write.is_some() {
        batches.push(batch(
            Stream::live(Destination::External),
            stale,
            &collection.rows,
            &running.live,
            ts,
            &external_labels(&agent.config),
        ));
    }
    for (id, experiment) in &running.experiments {
        let id = id.to_string();
        for (variant, pipeline) in [
            ("baseline", &experiment.baseline),
            ("candidate", &experiment.candidate),
        ] {
            let stream = Stream {
                destination: Destination::Api,
                experiment: id.clone(),
                variant,
            };
            batches.push(batch(stream, stale, &collection.rows, pipeline, ts, &none));
        }
    }
    stale.finish();
    Ok(Collected {
        timestamp_ms: ts,
        batches,
    })
}

/// Collections sampled and not yet written: a disk that stalls for longer
/// than this many intervals holds the sampling back.
const UNWRITTEN_COLLECTIONS: usize = 32;

/// Samples on the interval and hands each collection to [`write_loop`], so
/// that a slow disk does not move the next sample off its time.
async fn collect_loop(agent: Agent, write: mpsc::Sender<Collected>) {
    let collector = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(Collector::new)
            .await
            .expect("the collector starts"),
    ));
    let mut tick = tokio::time::interval(agent.config.collect_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut stale = Staleness::default();
    loop {
        tick.tick().await;
        match collect_once(&agent, &collector, &mut stale).await {
            Ok(collected) => {
                let Ok(room) = write.reserve().await else {
                    tracing::error!("the queue's writer has stopped: collection stops");
                    return;
                };
                agent.collections.fetch_add(1, Relaxed);
                agent.unwritten.fetch_add(1, Relaxed);
                room.send(collected);
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot collect"),
        }
    }
}

/// Writes each collection to the queue, then wakes the delivery loops.
/// Ends when the collect loop has ended and every collection it sampled
/// is written.
async fn write_loop(
    agent: Agent,
    mut collected: mpsc::Receiver<Collected>,
    wake_api: Arc<Notify>,
    wake_external: Arc<Notify>,
) {
    while let Some(c) = collected.recv().await {
        let written = agent.queue.push_all(c.timestamp_ms, &c.batches).await;
        agent.unwritten.fetch_sub(1, Relaxed);
        match written {
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
    // A task recorded whose run failed before storing its result (a full
    // disk): run again before the next poll rather than after its lease.
    let mut unfinished = false;
    loop {
        if unfinished {
            match crate::tasks::resume(&agent.queue, &agent.state).await {
                Ok(_) => unfinished = false,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot run the unfinished tasks yet")
                }
            }
        }
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
                        // Recorded: run again before the next poll. Not
                        // recorded: the lease runs out and it comes back.
                        tracing::error!(task = %id, error = %format!("{e:#}"), "cannot record or finish a task");
                        unfinished = true;
                    }
                }
                wake_results.notify_one();
            }
            Err(Refusal::Credential { code, detail }) => {
                deliver::credential_refused(&fatal, &code, &detail);
                return;
            }
            Err(e) => {
                let delay = e.retry_in(BACKOFF.delay(attempt));
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
                e.retry_in(BACKOFF.delay(attempt).min(interval))
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Prometheus's staleness marker: a NaN with this exact bit pattern, which a
/// scrape writes for a series that is gone and which ends the series at once
/// for queries, instead of after the 5-minute lookback.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// One stream of batches: a destination, and an experiment's variant or the
/// live pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stream {
    destination: Destination,
    experiment: String,
    variant: &'static str,
}

impl Stream {
    fn live(destination: Destination) -> Stream {
        Stream {
            destination,
            experiment: NO_GROUP.to_owned(),
            variant: NO_GROUP,
        }
    }
}

/// The series each stream sent in the previous collection, so that a series
/// that ends (its process exited, a pipeline changed, an experiment ended)
/// gets a staleness marker, as a scrape would give it. Kept in memory: after
/// a restart, series that ended meanwhile fade after Prometheus's lookback.
#[derive(Default)]
pub struct Staleness {
    previous: HashMap<Stream, HashSet<Vec<Label>>>,
    current: HashMap<Stream, HashSet<Vec<Label>>>,
}

impl Staleness {
    fn begin(&mut self) {
        self.current.clear();
    }

    /// Appends a marker at `timestamp_ms` for each series `stream` sent last
    /// time and not in `series`, and remembers `series` for next time.
    fn mark(&mut self, stream: Stream, series: &mut Vec<TimeSeries>, timestamp_ms: i64) {
        let now: HashSet<Vec<Label>> = series.iter().map(|s| s.labels.clone()).collect();
        if let Some(before) = self.previous.remove(&stream) {
            series.extend(
                before
                    .into_iter()
                    .filter(|labels| !now.contains(labels))
                    .map(|labels| stale_series(labels, timestamp_ms)),
            );
        }
        self.current.insert(stream, now);
    }

    /// This collection becomes the previous one. A stream not sent this
    /// time is an experiment that ended: its series get no markers, which
    /// the API would refuse after the experiment's running window, and
    /// which no KPI needs (range queries end with the window).
    fn finish(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

fn stale_series(labels: Vec<Label>, timestamp_ms: i64) -> TimeSeries {
    TimeSeries {
        labels,
        samples: vec![Sample {
            value: f64::from_bits(STALE_NAN),
            timestamp: timestamp_ms,
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn agent(dir: &std::path::Path) -> Agent {
        let config = crate::config::parse(
            &format!(
                "[api]\nurl = \"https://cp.example:8443\"\n[agent]\nstate_dir = \"{}\"\ncollect_interval = \"1s\"\n",
                dir.display()
            ),
            std::path::Path::new("agent.toml"),
        )
        .unwrap();
        let queue = Queue::open(dir, config.queue).await.unwrap();
        Agent {
            config: Arc::new(config),
            state: State::load(queue.clone()).await.unwrap(),
            queue,
            api_health: Arc::default(),
            external_health: Arc::default(),
            collections: Arc::default(),
            unwritten: Arc::default(),
        }
    }

    /// Sampling does not wait for the disk: with the writer held, one
    /// collection a second is still sampled, until 32 wait; then it waits,
    /// and the writer, once free, writes every one of them in order.
    #[tokio::test]
    async fn a_stalled_disk_does_not_move_sampling_off_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path()).await;
        // Virtual time from here: the queue's pool has opened on real time.
        tokio::time::pause();
        let (tx, rx) = mpsc::channel(UNWRITTEN_COLLECTIONS);
        let sampler = tokio::spawn(collect_loop(agent.clone(), tx));
        let sampled = |n| {
            let agent = agent.clone();
            async move {
                while agent.collections.load(Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let started = tokio::time::Instant::now();
        sampled(10).await;
        let ten = started.elapsed();
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(12)).contains(&ten),
            "10 collections in {ten:?} while nothing is written"
        );
        assert_eq!(agent.unwritten.load(Relaxed), 10);

        // Held for a minute: 32 wait, the 33rd waits for room.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            agent.collections.load(Relaxed) as usize,
            UNWRITTEN_COLLECTIONS
        );

        // Stopped, then free again: every collection handed over is
        // written, in the order it was handed over.
        sampler.abort();
        let _ = sampler.await;
        tokio::time::resume();
        let mut rx = rx;
        let mut handed = Vec::new();
        while let Ok(c) = rx.try_recv() {
            handed.push(c);
        }
        let expected: Vec<(i64, Vec<u8>)> = handed
            .iter()
            .map(|c| (c.timestamp_ms, c.batches[0].body.clone()))
            .collect();
        let (tx, rx) = mpsc::channel(UNWRITTEN_COLLECTIONS);
        for c in handed {
            tx.send(c).await.unwrap();
        }
        drop(tx);
        write_loop(
            agent.clone(),
            rx,
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        )
        .await;
        assert_eq!(agent.unwritten.load(Relaxed), 0);
        let written: Vec<(i64, Vec<u8>)> = agent
            .queue
            .oldest(Destination::Api, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.collected_at_ms, b.body))
            .collect();
        assert_eq!(written.len(), UNWRITTEN_COLLECTIONS);
        assert!(written == expected, "written in the order handed over");
    }

    fn series(names: &[&str], t: i64) -> Vec<TimeSeries> {
        names
            .iter()
            .map(|n| TimeSeries {
                labels: vec![Label::new("__name__", "m"), Label::new("process", *n)],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: t,
                }],
                ..Default::default()
            })
            .collect()
    }

    fn stale_of(s: &[TimeSeries]) -> Vec<&str> {
        s.iter()
            .filter(|s| s.samples[0].value.to_bits() == STALE_NAN)
            .map(|s| s.label("process").unwrap())
            .collect()
    }

    #[test]
    fn a_series_that_ends_gets_one_marker() {
        let mut st = Staleness::default();
        let live = || Stream::live(Destination::Api);
        let exp = Stream {
            destination: Destination::Api,
            experiment: "e".into(),
            variant: "candidate",
        };
        st.begin();
        let mut a = series(&["a", "b"], 1);
        st.mark(live(), &mut a, 1);
        let mut e = series(&["x"], 1);
        st.mark(exp.clone(), &mut e, 1);
        assert!(stale_of(&a).is_empty() && stale_of(&e).is_empty());
        st.finish();

        // b ends, c starts; the experiment's x ends.
        st.begin();
        let mut a = series(&["a", "c"], 2);
        st.mark(live(), &mut a, 2);
        assert_eq!(stale_of(&a), ["b"]);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].samples[0].timestamp, 2);
        let mut e = series(&["y"], 2);
        st.mark(exp.clone(), &mut e, 2);
        assert_eq!(stale_of(&e), ["x"]);
        st.finish();

        // The experiment ended: the next one of the same id starts afresh.
        st.begin();
        st.finish();
        st.begin();
        let mut e = series(&["z"], 4);
        st.mark(exp, &mut e, 4);
        assert!(stale_of(&e).is_empty());

        // Once marked, a series is not marked again.
        st.begin();
        let mut a = series(&["a", "c"], 3);
        st.mark(live(), &mut a, 3);
        assert!(stale_of(&a).is_empty());
    }
}
