//! Forwarding agents' batches to the remote-write receiver, coalesced.
//!
//! Every accepted batch goes through one [`Forwarder`]. At most
//! [`IN_FLIGHT`] requests are open to the receiver at once; batches that
//! arrive while they all are wait, and the next free slot sends everything
//! that waits (up to [`MERGE_SERIES`] series) as one request. When the
//! receiver keeps up, each batch goes alone and at once; when it slows down
//! (a Go GC, a WAL segment cut), the batches that piled up cost it one
//! request instead of one each, so it recovers instead of falling further
//! behind. Series of different agents never collide: each carries its
//! `agent` label.
//!
//! Every batch gets the outcome of the request it went in. A refusal (a 4xx
//! other than 429) says nothing about which batch was at fault, and a
//! receiver may have rolled the whole request back, so a refused request of
//! several batches is sent again one batch at a time: each is stored or
//! refused on its own, and a sample stored twice is stored once.
//!
//! A send runs in its own task: an agent that hangs up does not cancel the
//! batches of others that went in the same request.
//!
//! The backlog is bounded in samples (every series holds at least one, so
//! series are bounded too): when [`MAX_WAITING_SAMPLES`] already wait (the
//! receiver is far behind, or gone silent for its timeout), a new batch is
//! answered [`Outcome::Busy`] at once, a 503 with `Retry-After`, instead of
//! waiting behind a queue that only grows: the agent keeps the batch in its
//! own queue, and the API's memory and the answers it gives stay bounded.
//! [`Forwarder::busy`] lets the writer refuse before decoding a body.
//!
//! No one agent may hold more than [`MAX_WAITING_SAMPLES_PER_AGENT`]
//! samples or [`MAX_WAITING_BATCHES_PER_AGENT`] batches of the backlog (an
//! agent sends one batch at a time, so only a broken or hostile client with
//! a valid credential comes near it): past its share its batches are shed,
//! and the other agents' still go in. A batch larger than the share is
//! taken only into an empty backlog.
//!
//! Before that, the writer admits a request only while its agent has fewer
//! than [`MAX_WRITES_PER_AGENT`] writes in progress ([`Forwarder::begin_write`],
//! before the body is read), and holds, for each step that allocates, room
//! in a budget of [`MEMORY_BUDGET_BYTES`] shared by all writes
//! ([`Forwarder::reserve_memory`]): the body as read (its `Content-Length`,
//! or the largest body), then uncompressed (the size it declares), then
//! decoded (counted on its bytes first). Room is given in arrival order,
//! waited for at most [`MEMORY_WAIT`]. So the memory the agents can make a
//! replica spend on writes is bounded, hostile or not — until the handler
//! ends: a request cancelled (its client gone, the route's timeout) frees
//! its room while its batch may still wait here, which the backlog's own
//! bound covers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use phoenix_wire::remote_write::{self, WriteRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::batch::CLIENT;
use crate::metrics::Metrics;

/// Most requests open to the receiver at once.
pub const IN_FLIGHT: usize = 4;

/// A request is not grown past this many series (it may exceed it by one
/// batch, itself at most 50 000).
pub const MERGE_SERIES: usize = 20_000;

/// Samples waiting for a free slot at most: ten full requests of one sample
/// per series. Past it a batch is answered [`Outcome::Busy`] (a batch larger
/// than the bound, at most 1 000 000 samples, is still taken into an empty
/// backlog).
pub const MAX_WAITING_SAMPLES: usize = 10 * MERGE_SERIES;

/// Samples of one agent waiting at most: a quarter of the backlog.
pub const MAX_WAITING_SAMPLES_PER_AGENT: usize = MAX_WAITING_SAMPLES / 4;

/// Batches of one agent waiting at most: a sixty-fourth of the queue.
pub const MAX_WAITING_BATCHES_PER_AGENT: usize = QUEUE / 64;

/// Writes of one agent in progress at once at most (an agent sends one
/// batch at a time; a retry after a lost answer may overlap the first).
pub const MAX_WRITES_PER_AGENT: usize = 4;

/// Bytes of the writes in progress (bodies read, uncompressed, decoded)
/// over all agents, at most.
pub const MEMORY_BUDGET_BYTES: usize = 512 << 20;
const _: () = assert!(MEMORY_BUDGET_BYTES <= u32::MAX as usize);

/// How long a write waits for room in the budget before it is shed.
pub const MEMORY_WAIT: Duration = Duration::from_secs(1);

/// Batches waiting for a free slot at most (however few their series).
const QUEUE: usize = 4096;

/// How long an agent whose batch was shed is asked to wait (`Retry-After`).
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What became of a batch at the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// A 4xx other than 429: these samples will never be stored.
    Refused {
        status: StatusCode,
        message: String,
    },
    /// Unreachable, 5xx, 429 or silence: they may be later.
    Unavailable {
        detail: String,
    },
    /// Not sent: this many samples (and batches) already wait — in the
    /// whole backlog, or of this agent when `agent_share` (past its share).
    Busy {
        waiting_samples: usize,
        waiting_batches: usize,
        agent_share: bool,
    },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Refused { .. } => "refused",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Busy { .. } => "busy",
        }
    }
}

struct Job {
    request: WriteRequest,
    queued: tokio::time::Instant,
    series: usize,
    samples: usize,
    agent: Uuid,
    done: oneshot::Sender<Outcome>,
}

/// The one way batches reach the receiver; see the module.
#[derive(Debug, Clone)]
pub struct Forwarder {
    jobs: mpsc::Sender<Job>,
    backlog: Arc<Backlog>,
    writes: Arc<Mutex<HashMap<Uuid, usize>>>,
    memory: Arc<Semaphore>,
}

/// A write of one agent in progress; see [`Forwarder::begin_write`].
#[derive(Debug)]
pub struct Writing {
    writes: Arc<Mutex<HashMap<Uuid, usize>>>,
    agent: Uuid,
}

impl Drop for Writing {
    fn drop(&mut self) {
        // Never panic in a drop: a poisoned map is still a map.
        let mut writes = self
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = writes.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                writes.remove(&self.agent);
            }
        }
    }
}

/// The samples of the batches in the queue, in all and per agent.
#[derive(Debug)]
struct Backlog {
    /// `waiting.all.samples`, readable without the lock.
    samples: AtomicUsize,
    waiting: Mutex<Waiting>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Waiting {
    all: Share,
    /// Only agents with batches waiting.
    by_agent: HashMap<Uuid, Share>,
}

impl Waiting {
    fn of(&self, agent: Uuid) -> Share {
        self.by_agent.get(&agent).copied().unwrap_or_default()
    }
}

/// What waits, of one agent or of all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Share {
    samples: usize,
    batches: usize,
}

impl Share {
    fn add(&mut self, samples: usize) {
        self.samples += samples;
        self.batches += 1;
    }

    fn take(&mut self, samples: usize) {
        self.samples -= samples;
        self.batches -= 1;
    }

    fn is_full(self) -> bool {
        self.samples >= MAX_WAITING_SAMPLES_PER_AGENT
            || self.batches >= MAX_WAITING_BATCHES_PER_AGENT
    }
}

/// Why a batch was not taken, and what waits (see [`Outcome::Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    Full(Share),
    AgentShare(Share),
}

impl Backlog {
    fn new(metrics: Arc<Metrics>) -> Backlog {
        Backlog {
            samples: AtomicUsize::new(0),
            waiting: Mutex::default(),
            metrics,
        }
    }

    /// Why a batch of `agent` would be refused now, if it would.
    fn refusal_for(&self, agent: Uuid) -> Option<Shed> {
        let waiting = self.waiting.lock().expect("backlog lock");
        let (all, mine) = (waiting.all, waiting.of(agent));
        if all.samples >= MAX_WAITING_SAMPLES || all.batches >= QUEUE {
            Some(Shed::Full(all))
        } else if mine.is_full() {
            Some(Shed::AgentShare(mine))
        } else {
            None
        }
    }

    /// Counts a batch of `samples` of `agent` in, unless it would take the
    /// backlog past its bound or the agent past its share; a batch larger
    /// than those is taken only into an empty backlog. A refused batch is
    /// never counted, not even for a moment.
    fn admit(&self, agent: Uuid, samples: usize) -> Result<(), Shed> {
        let mut waiting = self.waiting.lock().expect("backlog lock");
        let (all, mine) = (waiting.all, waiting.of(agent));
        let empty = all.samples == 0;
        if !empty && all.samples + samples > MAX_WAITING_SAMPLES {
            return Err(Shed::Full(all));
        }
        if !empty
            && (mine.samples + samples > MAX_WAITING_SAMPLES_PER_AGENT
                || mine.batches + 1 > MAX_WAITING_BATCHES_PER_AGENT)
        {
            return Err(Shed::AgentShare(mine));
        }
        waiting.all.add(samples);
        waiting.by_agent.entry(agent).or_default().add(samples);
        self.samples.store(waiting.all.samples, Ordering::Release);
        self.metrics.add_forward_waiting(samples, true);
        Ok(())
    }

    /// Counts the batches `jobs` (agent, samples) out.
    fn release(&self, jobs: impl IntoIterator<Item = (Uuid, usize)>) {
        let mut waiting = self.waiting.lock().expect("backlog lock");
        for (agent, samples) in jobs {
            waiting.all.take(samples);
            if let Some(mine) = waiting.by_agent.get_mut(&agent) {
                mine.take(samples);
                if mine.batches == 0 {
                    waiting.by_agent.remove(&agent);
                }
            }
            self.metrics.add_forward_waiting(samples, false);
        }
        self.samples.store(waiting.all.samples, Ordering::Release);
    }
}

impl Forwarder {
    /// Starts the task that sends to `url`. Needs a Tokio runtime.
    pub fn start(url: url::Url, metrics: Arc<Metrics>) -> Forwarder {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let backlog = Arc::new(Backlog::new(metrics.clone()));
        tokio::spawn(run(url, queue, backlog.clone(), metrics));
        Forwarder {
            jobs,
            backlog,
            writes: Arc::default(),
            memory: Arc::new(Semaphore::new(MEMORY_BUDGET_BYTES)),
        }
    }

    /// A write of `agent` in progress until the guard is dropped, unless
    /// [`MAX_WRITES_PER_AGENT`] already are (then counted as shed).
    pub fn begin_write(&self, agent: Uuid) -> Option<Writing> {
        let mut writes = self.writes.lock().expect("writes lock");
        let n = writes.entry(agent).or_default();
        if *n >= MAX_WRITES_PER_AGENT {
            drop(writes);
            self.backlog.metrics.observe_forward_shed();
            return None;
        }
        *n += 1;
        Some(Writing {
            writes: self.writes.clone(),
            agent,
        })
    }

    /// Room for `bytes` more of a write's memory, held until the permit is
    /// dropped (permits merge); none, counted as shed, when it is not free
    /// within [`MEMORY_WAIT`]. Waiters are served in arrival order, so a
    /// large body is not starved by small ones.
    pub async fn reserve_memory(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let permits = bytes.clamp(1, MEMORY_BUDGET_BYTES) as u32;
        let room = self.memory.clone().acquire_many_owned(permits);
        match tokio::time::timeout(MEMORY_WAIT, room).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                self.backlog.metrics.observe_forward_shed();
                None
            }
        }
    }

    /// [`Outcome::Busy`] for `agent`, counted, if a batch it sent now
    /// would be shed: then there is no point in decoding it.
    pub fn busy(&self, agent: Uuid) -> Option<Outcome> {
        self.backlog.refusal_for(agent).map(|shed| self.shed(shed))
    }

    fn shed(&self, shed: Shed) -> Outcome {
        self.backlog.metrics.observe_forward_shed();
        let (share, agent_share) = match shed {
            Shed::Full(all) => (all, false),
            Shed::AgentShare(mine) => (mine, true),
        };
        Outcome::Busy {
            waiting_samples: share.samples,
            waiting_batches: share.batches,
            agent_share,
        }
    }

    /// Sends `request` (from `agent`) and waits for its outcome; a full
    /// backlog answers [`Outcome::Busy`] at once.
    pub async fn send(&self, request: WriteRequest, agent: Uuid) -> Outcome {
        let stopped = || Outcome::Unavailable {
            detail: "the API is stopping; keep the batch and retry later".into(),
        };
        let (done, outcome) = oneshot::channel();
        let series = request.timeseries.len();
        let samples = request.sample_count();
        if let Err(shed) = self.backlog.admit(agent, samples) {
            return self.shed(shed);
        }
        let job = Job {
            request,
            queued: tokio::time::Instant::now(),
            series,
            samples,
            agent,
            done,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.backlog.release([(agent, job.samples)]);
                return self.shed(Shed::Full(Share {
                    samples: self.backlog.samples.load(Ordering::Acquire),
                    batches: QUEUE,
                }));
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                self.backlog.release([(agent, job.samples)]);
                return stopped();
            }
        }
        outcome.await.unwrap_or_else(|_| stopped())
    }
}

async fn run(
    url: url::Url,
    mut queue: mpsc::Receiver<Job>,
    backlog: Arc<Backlog>,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while none is free, batches wait in the queue and
        // the next request takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut series = first.series;
        let mut jobs = vec![first];
        while series < MERGE_SERIES {
            let Ok(job) = queue.try_recv() else { break };
            series += job.series;
            jobs.push(job);
        }
        backlog.release(jobs.iter().map(|job| (job.agent, job.samples)));
        let (url, metrics) = (url.clone(), metrics.clone());
        tokio::spawn(async move {
            deliver(&url, jobs, &metrics).await;
            drop(slot);
        });
    }
}

/// Sends `jobs` as one request and answers each; a refused request of
/// several is sent again a batch at a time.
async fn deliver(url: &url::Url, mut jobs: Vec<Job>, metrics: &Metrics) {
    let started = tokio::time::Instant::now();
    for job in &jobs {
        metrics.observe_forward_wait(started.saturating_duration_since(job.queued));
    }
    let outcome = if let [job] = jobs.as_slice() {
        post(url, &job.request).await
    } else {
        post(url, &merged(&jobs)).await
    };
    metrics.observe_forward_request(started.elapsed());
    metrics.observe_forward(jobs.len(), outcome.label());
    if let Outcome::Unavailable { detail } = &outcome {
        tracing::warn!(batches = jobs.len(), %detail, "the remote-write receiver did not take a request; its agents will retry");
    }
    if jobs.len() > 1 && matches!(outcome, Outcome::Refused { .. }) {
        for job in jobs {
            let outcome = post(url, &job.request).await;
            metrics.observe_forward(1, outcome.label());
            answer(job, outcome, metrics);
        }
        return;
    }
    if let Some(last) = jobs.pop() {
        for job in jobs {
            answer(job, outcome.clone(), metrics);
        }
        answer(last, outcome, metrics);
    }
}

fn answer(job: Job, outcome: Outcome, metrics: &Metrics) {
    metrics.observe_forward_duration(job.queued.elapsed());
    if let Outcome::Refused { status, message } = &outcome {
        tracing::debug!(agent = %job.agent, %status, %message, "the remote-write receiver refused a batch");
    }
    // The writer may have hung up; its agent will send the batch again.
    let _ = job.done.send(outcome);
}

/// One request holding the series of every job, in arrival order.
fn merged(jobs: &[Job]) -> WriteRequest {
    WriteRequest {
        timeseries: jobs
            .iter()
            .flat_map(|job| job.request.timeseries.iter().cloned())
            .collect(),
        metadata: Vec::new(),
    }
}

async fn post(url: &url::Url, request: &WriteRequest) -> Outcome {
    let sent = CLIENT
        .post(url.clone())
        .header(header::CONTENT_TYPE, remote_write::CONTENT_TYPE)
        .header(header::CONTENT_ENCODING, remote_write::CONTENT_ENCODING)
        .header(remote_write::VERSION_HEADER, remote_write::VERSION)
        .body(remote_write::encode(request))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            return Outcome::Unavailable {
                detail: format!("the remote-write receiver did not answer: {e}"),
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Stored;
    }
    let message: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    let message = message.trim().to_owned();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        Outcome::Refused { status, message }
    } else {
        Outcome::Unavailable {
            detail: format!("the remote-write receiver answered {status}: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::remote_write::{Label, Sample, TimeSeries};

    fn job(agent: &str, samples: &[(i64, f64)]) -> (Job, oneshot::Receiver<Outcome>) {
        let (done, outcome) = oneshot::channel();
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label::new("__name__", "m"), Label::new("agent", agent)],
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| Sample { value, timestamp })
                    .collect(),
                ..Default::default()
            }],
            metadata: Vec::new(),
        };
        let job = Job {
            series: request.timeseries.len(),
            samples: request.sample_count(),
            queued: tokio::time::Instant::now(),
            request,
            agent: Uuid::nil(),
            done,
        };
        (job, outcome)
    }

    #[test]
    fn a_merged_request_holds_every_series_in_arrival_order() {
        let (a, _) = job("a", &[(1, 1.0), (2, 2.0)]);
        let (b, _) = job("b", &[(1, 3.0)]);
        let (c, _) = job("a", &[(3, 4.0)]);
        let request = merged(&[a, b, c]);
        let got: Vec<(&str, Vec<i64>)> = request
            .timeseries
            .iter()
            .map(|s| {
                (
                    s.label("agent").unwrap(),
                    s.samples.iter().map(|x| x.timestamp).collect(),
                )
            })
            .collect();
        assert_eq!(got, [("a", vec![1, 2]), ("b", vec![1]), ("a", vec![3])]);
    }

    fn request_of(series: usize) -> WriteRequest {
        WriteRequest {
            timeseries: (0..series)
                .map(|i| TimeSeries {
                    labels: vec![Label::new("__name__", format!("m{i}"))],
                    samples: vec![Sample {
                        value: 1.0,
                        timestamp: 1,
                    }],
                    ..Default::default()
                })
                .collect(),
            metadata: Vec::new(),
        }
    }

    /// Waits (in real time, briefly) until `f` holds.
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn past_its_bound_the_backlog_answers_busy_at_once() {
        // A receiver that takes connections and never answers: every
        // request hangs, the 4 slots fill, then the backlog.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: url::Url = format!("http://{}/api/v1/write", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::start(url, metrics.clone());
        let waiting = || forwarder.backlog.samples.load(Ordering::Acquire);
        let send = |series: usize| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move { forwarder.send(request_of(series), Uuid::new_v4()).await })
        };
        // One at a time, so that each takes a request of its own.
        let mut hanging = Vec::new();
        for open in 1..=IN_FLIGHT {
            hanging.push(send(10));
            until("the batch's request is open", || {
                metrics
                    .render()
                    .unwrap()
                    .contains(&format!("remote_write_forward_wait_seconds_count {open}\n"))
            })
            .await;
        }
        for _ in 0..MAX_WAITING_SAMPLES / MERGE_SERIES {
            hanging.push(send(MERGE_SERIES));
        }
        until("the backlog is full", || waiting() == MAX_WAITING_SAMPLES).await;
        assert!(forwarder.backlog.refusal_for(Uuid::new_v4()).is_some());

        let shed = forwarder.send(request_of(1), Uuid::new_v4()).await;
        assert_eq!(
            shed,
            Outcome::Busy {
                waiting_samples: MAX_WAITING_SAMPLES,
                waiting_batches: MAX_WAITING_SAMPLES / MERGE_SERIES,
                agent_share: false,
            }
        );
        assert_eq!(
            waiting(),
            MAX_WAITING_SAMPLES,
            "a shed batch is not counted"
        );
        assert!(
            hanging.iter().all(|h| !h.is_finished()),
            "the rest still wait"
        );
        let text = metrics.render().unwrap();
        assert!(
            text.contains("remote_write_batches_shed_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "remote_write_waiting_samples {MAX_WAITING_SAMPLES}\n"
            )),
            "{text}"
        );
    }

    fn share(samples: usize, batches: usize) -> Share {
        Share { samples, batches }
    }

    #[test]
    fn one_batch_larger_than_the_bound_is_taken_into_an_empty_backlog_and_no_refused_one_is_counted()
     {
        let metrics = Arc::new(Metrics::new());
        let backlog = Backlog::new(metrics.clone());
        let agents: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        assert_eq!(backlog.admit(agents[0], MAX_WAITING_SAMPLES + 1), Ok(()));
        assert_eq!(
            backlog.admit(agents[1], 1),
            Err(Shed::Full(share(MAX_WAITING_SAMPLES + 1, 1)))
        );
        backlog.release([(agents[0], MAX_WAITING_SAMPLES + 1)]);
        assert_eq!(backlog.refusal_for(agents[0]), None);
        for agent in &agents[..4] {
            assert_eq!(backlog.admit(*agent, MAX_WAITING_SAMPLES_PER_AGENT), Ok(()));
        }
        assert_eq!(
            backlog.admit(agents[4], 1),
            Err(Shed::Full(share(MAX_WAITING_SAMPLES, 4))),
            "refused whole"
        );
        backlog.release([(agents[3], MAX_WAITING_SAMPLES_PER_AGENT)]);
        assert_eq!(
            backlog.admit(agents[3], MAX_WAITING_SAMPLES_PER_AGENT - 1),
            Ok(())
        );
        assert_eq!(
            backlog.admit(agents[4], 2),
            Err(Shed::Full(share(MAX_WAITING_SAMPLES - 1, 4)))
        );
        assert_eq!(backlog.admit(agents[4], 1), Ok(()), "what fits is taken");
        assert_eq!(
            backlog.refusal_for(agents[5]),
            Some(Shed::Full(share(MAX_WAITING_SAMPLES, 5)))
        );
        // The gauge follows every change, in whatever order they land.
        let text = metrics.render().unwrap();
        assert!(
            text.contains(&format!(
                "remote_write_waiting_samples {MAX_WAITING_SAMPLES}\n"
            )),
            "{text}"
        );
    }

    /// One agent cannot fill the backlog, with large batches or many small
    /// ones: past its share its batches are shed while another agent's
    /// still go in.
    #[test]
    fn one_agent_holds_at_most_its_share_of_the_backlog() {
        let backlog = Backlog::new(Arc::new(Metrics::new()));
        let (greedy, other, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(backlog.admit(other, 1_000), Ok(()));
        // Past its share in one batch, even with nothing of its own waiting.
        assert_eq!(
            backlog.admit(greedy, MAX_WAITING_SAMPLES_PER_AGENT + 1),
            Err(Shed::AgentShare(share(0, 0)))
        );
        assert_eq!(
            backlog.admit(greedy, MAX_WAITING_SAMPLES_PER_AGENT - 10),
            Ok(())
        );
        assert_eq!(backlog.admit(greedy, 10), Ok(()));
        let full = share(MAX_WAITING_SAMPLES_PER_AGENT, 2);
        assert_eq!(backlog.refusal_for(greedy), Some(Shed::AgentShare(full)));
        assert_eq!(backlog.refusal_for(other), None);
        assert_eq!(backlog.admit(greedy, 1), Err(Shed::AgentShare(full)));
        assert_eq!(backlog.admit(other, 1_000), Ok(()));
        // Many batches of one sample each: past its share of batches.
        for _ in 0..MAX_WAITING_BATCHES_PER_AGENT {
            assert_eq!(backlog.admit(third, 1), Ok(()));
        }
        assert_eq!(
            backlog.admit(third, 1),
            Err(Shed::AgentShare(share(
                MAX_WAITING_BATCHES_PER_AGENT,
                MAX_WAITING_BATCHES_PER_AGENT
            )))
        );
        // Sent: its share is free again, and forgotten.
        backlog.release([(greedy, MAX_WAITING_SAMPLES_PER_AGENT - 10), (greedy, 10)]);
        assert!(
            !backlog
                .waiting
                .lock()
                .unwrap()
                .by_agent
                .contains_key(&greedy)
        );
        assert_eq!(backlog.admit(greedy, 1), Ok(()));
        assert_eq!(
            backlog.samples.load(Ordering::Acquire),
            2_001 + MAX_WAITING_BATCHES_PER_AGENT
        );
    }

    #[tokio::test]
    async fn writes_in_progress_are_bounded_per_agent() {
        let url: url::Url = "http://127.0.0.1:9/api/v1/write".parse().unwrap();
        let forwarder = Forwarder::start(url, Arc::new(Metrics::new()));
        let (hostile, other) = (Uuid::new_v4(), Uuid::new_v4());
        let held: Vec<Writing> = (0..MAX_WRITES_PER_AGENT)
            .map(|_| forwarder.begin_write(hostile).unwrap())
            .collect();
        assert!(forwarder.begin_write(hostile).is_none(), "one more is shed");
        assert!(forwarder.begin_write(other).is_some(), "others still write");
        drop(held);
        assert!(
            forwarder.writes.lock().unwrap().is_empty(),
            "forgotten at 0"
        );
        assert!(forwarder.begin_write(hostile).is_some());
    }

    /// The memory budget: room is given in arrival order, and a write that
    /// does not get it within a second is shed.
    #[tokio::test(start_paused = true)]
    async fn the_memory_budget_is_shared_in_arrival_order_and_shed_after_a_wait() {
        let url: url::Url = "http://127.0.0.1:9/api/v1/write".parse().unwrap();
        let forwarder = Forwarder::start(url, Arc::new(Metrics::new()));
        let quarter = MEMORY_BUDGET_BYTES / 4;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(forwarder.reserve_memory(quarter).await.unwrap());
        }
        // A large body waits first; a small one comes after it.
        let large = tokio::spawn({
            let f = forwarder.clone();
            async move { f.reserve_memory(2 * quarter).await }
        });
        tokio::task::yield_now().await;
        let small = tokio::spawn({
            let f = forwarder.clone();
            async move { f.reserve_memory(1).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!small.is_finished(), "the small one waits behind the large");
        held.pop();
        let large = large
            .await
            .unwrap()
            .expect("the large one got room in time");
        // The small one's second ran out: shed.
        assert!(small.await.unwrap().is_none());
        drop(large);
        drop(held);
        assert!(
            forwarder
                .reserve_memory(MEMORY_BUDGET_BYTES)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_receiver_that_does_not_answer_makes_every_batch_unavailable() {
        // A port where nothing listens.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url: url::Url = format!("http://127.0.0.1:{port}/api/v1/write")
            .parse()
            .unwrap();
        let metrics = Metrics::new();
        let (a, a_out) = job("a", &[(1, 1.0)]);
        let (b, b_out) = job("b", &[(1, 1.0)]);
        deliver(&url, vec![a, b], &metrics).await;
        for out in [a_out, b_out] {
            assert!(
                matches!(out.await.unwrap(), Outcome::Unavailable { .. }),
                "kept for a retry"
            );
        }
    }
}
