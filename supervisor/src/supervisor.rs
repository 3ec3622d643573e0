//! The event loop: one task owns every service's state and handles one
//! closed set of events (child exited, check result, timer, signal, control
//! request). Everything else only sends events or reads the published snapshot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

// tokio's clock, so restart and deadline logic can be tested in paused time.
use tokio::time::Instant;

use nix::sys::signal::Signal;
use rand::SeedableRng;
use rand::rngs::StdRng;
use regex::Regex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cgroup::Cgroups;
use crate::config::{self, Config, LoadOptions, Probe, RestartPolicy, ServiceSpec};
use crate::control::{Request, Response};
use crate::leftovers;
use crate::logs::{self, ServiceLog};
use crate::prepare;
use crate::probe::{self, Prober};
use crate::process::{self, RunAs};
use crate::reaper::{ExitStatus, Reaper};
use crate::status::{
    self, CertificateStatus, PlainHttpStatus, ResourceShortage, ScalingStatus, ServiceStatus,
    Snapshot, State, now_ms, unix_ms,
};

#[derive(Debug)]
pub enum Event {
    Signal(i32),
    Exited {
        name: String,
        generation: u64,
        status: ExitStatus,
    },
    Probe {
        name: String,
        generation: u64,
        check: Check,
        result: Result<(), probe::Failure>,
    },
    LogMatched {
        name: String,
        generation: u64,
    },
    Timer {
        name: String,
        generation: u64,
        timer: Timer,
    },
    Control(Request, oneshot::Sender<Response>),
    ShutdownDeadline,
    Tick,
    /// The certificate task looked again, or ordered: what it saw, and
    /// `renewed` when the API is to load the certificate file.
    Certificate {
        status: Box<CertificateStatus>,
        renewed: bool,
    },
    /// The plain-HTTP listener listens, or cannot.
    PlainHttp(PlainHttpStatus),
    /// The capacity checks evaluated their triggers.
    Scaling(Vec<ScalingStatus>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Readiness,
    Liveness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    RestartDue,
    StartDeadline,
    StopDeadline,
    Readiness,
    Liveness,
    /// A parked service's cool-down is over: start it again.
    CoolDown,
}

/// What to do once a stopping service has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum AfterStop {
    #[default]
    Stay,
    /// Start again at once (operator restart, changed spec).
    Restart,
    /// Treat as a failure: restart with backoff (hung, not ready in time).
    Retry,
    /// Removed from the config on reload.
    Remove,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All services stopped in order.
    Clean,
    /// The shutdown timeout ran out and the rest was killed.
    TimedOut,
}

struct Runtime {
    spec: ServiceSpec,
    next_spec: Option<ServiceSpec>,
    run_as: Option<RunAs>,
    log: Arc<ServiceLog>,
    state: State,
    since: SystemTime,
    wanted: bool,
    generation: u64,
    pid: Option<i32>,
    /// The running process by pid and start time, for the record of what
    /// runs (`leftovers`).
    process: Option<leftovers::Proc>,
    spawned: Option<Instant>,
    started_at: Option<SystemTime>,
    restarts: u64,
    attempt: u32,
    starts: VecDeque<Instant>,
    /// Parkings in a row (reset by a stable run), for the cool-down's doubling.
    parks: u32,
    /// When a parked service will be started again.
    retry_at: Option<SystemTime>,
    liveness_failures: u32,
    /// The last readiness check could not be run (the supervisor's own
    /// shortage): the start deadline waits for one that can.
    readiness_unjudged: bool,
    after_stop: AfterStop,
    last_exit: Option<String>,
    last_error: Option<String>,
}

impl Runtime {
    fn new(spec: ServiceSpec, run_as: Option<RunAs>, log: Arc<ServiceLog>) -> Self {
        Runtime {
            spec,
            next_spec: None,
            run_as,
            log,
            state: State::Stopped,
            since: SystemTime::now(),
            wanted: true,
            generation: 0,
            pid: None,
            process: None,
            spawned: None,
            started_at: None,
            restarts: 0,
            attempt: 0,
            starts: VecDeque::new(),
            parks: 0,
            retry_at: None,
            liveness_failures: 0,
            readiness_unjudged: false,
            after_stop: AfterStop::Stay,
            last_exit: None,
            last_error: None,
        }
    }

    /// Before a start the operator or a reload asked for: take the new spec,
    /// and neither the backoff nor the start limit count earlier crashes.
    fn fresh_start(&mut self) {
        if let Some(next) = self.next_spec.take() {
            self.spec = next;
        }
        self.attempt = 0;
        self.starts.clear();
        self.retry_at = None;
    }

    fn running(&self) -> bool {
        self.pid.is_some()
    }

    fn satisfies_dependents(&self) -> bool {
        matches!(self.state, State::Ready | State::Unhealthy | State::Exited)
    }
}

/// Shared pieces the loop needs from its surroundings.
pub struct Context {
    pub opts: LoadOptions,
    pub reaper: Arc<Reaper>,
    pub cgroups: Result<Arc<Cgroups>, String>,
    pub pid1: bool,
    pub heartbeat: Arc<AtomicU64>,
    /// Wakes the certificate task for an ACME order now.
    pub renew_certificate: Arc<tokio::sync::Notify>,
    /// The API's HTTPS port, that plain HTTP redirects to.
    pub https_port: Arc<std::sync::atomic::AtomicU16>,
}

pub struct Supervisor {
    config: Config,
    services: Vec<Runtime>,
    tx: mpsc::UnboundedSender<Event>,
    ctx: Context,
    prober: Arc<Prober>,
    snapshot: watch::Sender<Snapshot>,
    shutting_down: bool,
    done: Option<Outcome>,
    announced_ready: bool,
    rng: StdRng,
    started_at: SystemTime,
    shortage: Option<Shortage>,
    /// What runs, as last written to `leftovers::path(run_dir)`.
    record: leftovers::Record,
    /// The certificate task's last report; None before its first look.
    certificate: Option<CertificateStatus>,
    /// The plain-HTTP listener's last report.
    plain_http: Option<PlainHttpStatus>,
    /// The capacity triggers after the last round.
    scaling: Vec<ScalingStatus>,
}

/// How long health shows a shortage of the supervisor's resources after
/// the last check or start it spoiled, and how often it is logged at most.
const SHORTAGE_WINDOW: Duration = Duration::from_secs(60);

/// Checks and starts that the supervisor could not make for want of its
/// own resources (file descriptors, memory, processes) in the current
/// episode: none of them is counted against a service.
struct Shortage {
    last: Instant,
    last_at: SystemTime,
    error: String,
    count: u64,
    logged: Option<Instant>,
    unlogged: u64,
}

impl Supervisor {
    pub fn new(
        config: Config,
        prepared: prepare::Prepared,
        ctx: Context,
        tx: mpsc::UnboundedSender<Event>,
    ) -> (Self, watch::Receiver<Snapshot>) {
        let services = config
            .services
            .iter()
            .map(|spec| {
                let log = ServiceLog::open(
                    &config.supervisor.log_dir,
                    &spec.name,
                    config.supervisor.log_max_bytes,
                    config.supervisor.log_keep,
                );
                Runtime::new(spec.clone(), prepared.run_as(&spec.name), log)
            })
            .collect();
        let prober = Arc::new(Prober::new(ctx.reaper.clone()));
        let (snapshot, rx) = watch::channel(empty_snapshot(&config));
        let sup = Supervisor {
            config,
            services,
            tx,
            ctx,
            prober,
            snapshot,
            shutting_down: false,
            done: None,
            announced_ready: false,
            rng: StdRng::from_entropy(),
            started_at: SystemTime::now(),
            shortage: None,
            record: leftovers::Record::new(),
            certificate: None,
            plain_http: None,
            scaling: Vec::new(),
        };
        sup.publish();
        (sup, rx)
    }

    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) -> Outcome {
        self.schedule();
        self.save_record();
        self.publish();
        while let Some(event) = events.recv().await {
            self.handle(event);
            self.save_record();
            self.publish();
            if let Some(outcome) = self.done {
                return outcome;
            }
        }
        Outcome::Clean
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(sig) => self.on_signal(sig),
            Event::Exited {
                name,
                generation,
                status,
            } => {
                if let Some(i) = self.current(&name, generation) {
                    self.on_exit(i, status);
                }
            }
            Event::Probe {
                name,
                generation,
                check,
                result,
            } => {
                if let Some(i) = self.current(&name, generation) {
                    self.on_probe(i, check, result);
                }
            }
            Event::LogMatched { name, generation } => {
                if let Some(i) = self.current(&name, generation)
                    && self.services[i].state == State::Starting
                {
                    self.became_ready(i);
                }
            }
            Event::Timer {
                name,
                generation,
                timer,
            } => {
                if let Some(i) = self.current(&name, generation) {
                    self.on_timer(i, timer);
                }
            }
            Event::Control(req, reply) => {
                let resp = self.on_control(req);
                let _ = reply.send(resp);
            }
            Event::ShutdownDeadline => self.kill_everything(),
            Event::Tick => {
                self.ctx.heartbeat.store(now_ms(), Ordering::Relaxed);
                self.ctx.reaper.reap();
                if self
                    .shortage
                    .as_ref()
                    .is_some_and(|s| s.last.elapsed() >= SHORTAGE_WINDOW)
                {
                    tracing::info!("the supervisor could run its checks again");
                    self.shortage = None;
                }
            }
            Event::Scaling(statuses) => self.scaling = statuses,
            Event::PlainHttp(status) => self.plain_http = Some(status),
            Event::Certificate { status, renewed } => {
                self.certificate = Some(*status);
                if renewed {
                    for note in self.signal_new_certificate() {
                        tracing::info!(%note, "new TLS certificate");
                    }
                }
            }
        }
        self.schedule();
    }

    fn current(&self, name: &str, generation: u64) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.spec.name == name && s.generation == generation)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.spec.name == name)
    }

    fn on_signal(&mut self, sig: i32) {
        match Signal::try_from(sig) {
            Ok(Signal::SIGCHLD) => self.ctx.reaper.reap(),
            Ok(Signal::SIGHUP) => match self.reload() {
                Ok(summary) => tracing::info!(%summary, "reloaded the config on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload rejected; the running config stays"),
            },
            Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => self.begin_shutdown(s.as_str()),
            _ => {}
        }
    }

    fn set_state(&mut self, i: usize, state: State) {
        let rt = &mut self.services[i];
        if rt.state != state {
            tracing::info!(service = %rt.spec.name, from = rt.state.as_str(), to = state.as_str(), "state");
            rt.state = state;
            rt.since = SystemTime::now();
        }
    }

    fn after(&self, name: &str, generation: u64, delay: Duration, timer: Timer) {
        let tx = self.tx.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::Timer {
                name,
                generation,
                timer,
            });
        });
    }

    /// Up, not wanted, failed, or waiting on a dependency that failed.
    fn settled(&self, i: usize) -> bool {
        let rt = &self.services[i];
        !rt.wanted || rt.satisfies_dependents() || self.blocked_by_failure(i)
    }

    /// Failed, or (transitively) waiting on a failed dependency.
    fn blocked_by_failure(&self, i: usize) -> bool {
        let rt = &self.services[i];
        rt.state == State::Failed
            || (rt.state == State::Stopped
                && rt
                    .spec
                    .depends_on
                    .iter()
                    .any(|d| self.index(d).is_some_and(|j| self.blocked_by_failure(j))))
    }

    fn deps_ready(&self, i: usize) -> bool {
        self.services[i].spec.depends_on.iter().all(|d| {
            self.services
                .iter()
                .any(|s| s.spec.name == *d && s.satisfies_dependents())
        })
    }

    /// Start every wanted, stopped service whose dependencies are up. One pass
    /// is enough: services come after their dependencies, so one that becomes
    /// ready at once (no readiness check) is seen by its dependents in the same pass.
    fn schedule(&mut self) {
        if self.shutting_down {
            return;
        }
        for i in 0..self.services.len() {
            let rt = &self.services[i];
            if rt.wanted
                && rt.state == State::Stopped
                && rt.after_stop != AfterStop::Remove
                && self.deps_ready(i)
            {
                self.start(i);
            }
        }
        // Start-up has settled when every service is up, or parked as failed
        // (or waiting behind one that is): /health tells which. Telling
        // systemd only on "all up" would leave a parked service's unit
        // "activating" until its start timeout restarts everything.
        if !self.announced_ready && (0..self.services.len()).all(|i| self.settled(i)) {
            self.announced_ready = true;
            if self
                .services
                .iter()
                .all(|s| !s.wanted || s.satisfies_dependents())
            {
                tracing::info!("all services are ready");
            } else {
                tracing::warn!("start-up settled with failed services; see phoenixctl health");
            }
            crate::notify::ready_with(
                if self
                    .services
                    .iter()
                    .all(|s| !s.wanted || s.satisfies_dependents())
                {
                    "all services ready"
                } else {
                    "started with failed services; see phoenixctl health"
                },
            );
        }
    }

    /// Prune the start-limit window; when it is full, park the service as
    /// failed, say so, and arm the cool-down after which it is started
    /// again. Returns true when parked.
    fn park_if_start_limit_reached(&mut self, i: usize) -> bool {
        let now = Instant::now();
        let rt = &mut self.services[i];
        let limit = rt.spec.restart.start_limit;
        while rt
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.interval)
        {
            rt.starts.pop_front();
        }
        if rt.starts.len() < limit.burst as usize {
            return false;
        }
        let cool_down = limit.cool_down.base_delay(rt.parks);
        rt.parks = rt.parks.saturating_add(1);
        let retry_at = SystemTime::now() + cool_down;
        rt.retry_at = Some(retry_at);
        let msg = format!(
            "started {} times within {}; parked as failed, next try in {} at {} \
             (or fix the cause, then `phoenixctl start {}`)",
            rt.starts.len(),
            humantime::format_duration(limit.interval),
            humantime::format_duration(cool_down),
            humantime::format_rfc3339_seconds(retry_at),
            rt.spec.name
        );
        tracing::error!(service = %rt.spec.name, cool_down = ?cool_down, "{msg}");
        rt.log.note(&msg);
        rt.last_error = Some(msg);
        let (name, generation) = (rt.spec.name.clone(), rt.generation);
        self.set_state(i, State::Failed);
        self.after(&name, generation, cool_down, Timer::CoolDown);
        true
    }

    /// A check or start of `service` failed because the supervisor itself
    /// is short of resources: remember it for health, and log it at most
    /// once a minute.
    fn short_of_resources(&mut self, service: &str, what: &str, error: &str) {
        let now = Instant::now();
        let shortage = self.shortage.get_or_insert_with(|| Shortage {
            last: now,
            last_at: SystemTime::now(),
            error: String::new(),
            count: 0,
            logged: None,
            unlogged: 0,
        });
        shortage.last = now;
        shortage.last_at = SystemTime::now();
        shortage.error = error.to_string();
        shortage.count += 1;
        if shortage
            .logged
            .is_none_or(|t| now.duration_since(t) >= SHORTAGE_WINDOW)
        {
            tracing::warn!(
                service,
                what,
                error,
                not_logged = shortage.unlogged,
                "the supervisor is short of its own resources (file descriptors, memory or \
                 processes) and could not run a {what}; no service is judged on it"
            );
            shortage.logged = Some(now);
            shortage.unlogged = 0;
        } else {
            shortage.unlogged += 1;
        }
    }

    fn start(&mut self, i: usize) {
        if self.park_if_start_limit_reached(i) {
            return;
        }
        let now = Instant::now();
        let rt = &mut self.services[i];
        rt.starts.push_back(now);
        // A new generation per attempt, failed or not: timers and events of
        // earlier attempts are recognised as stale.
        rt.generation += 1;
        match self.spawn(i) {
            Ok(()) => {}
            Err(failure) => {
                let name = self.services[i].spec.name.clone();
                if let probe::Failure::Supervisor(e) = &failure {
                    // Not the service's doing: the attempt does not count
                    // toward its start limit.
                    self.services[i].starts.pop_back();
                    self.short_of_resources(&name, "start", e);
                }
                let e = failure.to_string();
                let rt = &mut self.services[i];
                tracing::error!(service = %name, error = %e, "cannot start");
                rt.log.note(&format!("cannot start: {e}"));
                rt.last_error = Some(e);
                rt.spawned = Some(now);
                self.retry(i);
            }
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), probe::Failure> {
        let failure = probe::Failure::of;
        let cgroup_fd = match &self.ctx.cgroups {
            Ok(cg) => Some(
                cg.prepare(&self.services[i].spec.name, &self.services[i].spec.limits)
                    .map_err(|e| {
                        failure(
                            &e,
                            format!(
                                "cannot prepare the cgroup of {}: {e}",
                                self.services[i].spec.name
                            ),
                        )
                    })?,
            ),
            Err(_) => None,
        };
        let rt = &mut self.services[i];
        prepare::service_dirs(&rt.spec, rt.run_as.as_ref())
            .map_err(|e| failure(&e, e.to_string()))?;
        for f in &rt.spec.files {
            prepare::write_generated(f)
                .map_err(|e| failure(&e, format!("cannot write {}: {e}", f.path.display())))?;
        }
        let mut cmd = process::command(&rt.spec.command, &rt.spec, rt.run_as.as_ref(), cgroup_fd)
            .map_err(|e| failure(&e, e.to_string()))?;
        let (mut child, exit) = self
            .ctx
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| failure(&e, format!("cannot run {}: {e}", rt.spec.command[0])))?;
        drop(cmd);
        let generation = rt.generation;
        let pid = child.id() as i32;
        rt.pid = Some(pid);
        rt.process = leftovers::Proc::of(pid);
        rt.spawned = Some(Instant::now());
        rt.started_at = Some(SystemTime::now());
        rt.liveness_failures = 0;
        rt.readiness_unjudged = false;
        rt.after_stop = AfterStop::Stay;
        let name = rt.spec.name.clone();
        tracing::info!(service = %name, pid, "started");
        rt.log
            .note(&format!("started pid {pid}: {}", rt.spec.command.join(" ")));

        let log_ready = match &rt.spec.readiness {
            Some(r) => match &r.probe {
                Probe::Log(pattern) => Regex::new(pattern).ok().map(Arc::new),
                _ => None,
            },
            None => None,
        };
        for (stream, reader) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|s| tokio::process::ChildStdout::from_std(s).map(Pipe::Out)),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|s| tokio::process::ChildStderr::from_std(s).map(Pipe::Err)),
            ),
        ] {
            let Some(Ok(reader)) = reader else { continue };
            let tx = self.tx.clone();
            let (log, ready, name) = (rt.log.clone(), log_ready.clone(), name.clone());
            tokio::spawn(async move {
                logs::pump(log, stream, reader, ready, move || {
                    let _ = tx.send(Event::LogMatched { name, generation });
                })
                .await;
            });
        }
        let tx = self.tx.clone();
        let exit_name = name.clone();
        tokio::spawn(async move {
            if let Ok(status) = exit.await {
                let _ = tx.send(Event::Exited {
                    name: exit_name,
                    generation,
                    status,
                });
            }
        });

        let spec = rt.spec.clone();
        self.set_state(i, State::Starting);
        if spec.oneshot {
            return Ok(());
        }
        match &spec.readiness {
            None => self.became_ready(i),
            Some(r) => {
                if !matches!(r.probe, Probe::Log(_)) {
                    self.after(
                        &name,
                        generation,
                        r.interval.min(Duration::from_millis(50)),
                        Timer::Readiness,
                    );
                }
                self.after(&name, generation, r.start_timeout, Timer::StartDeadline);
            }
        }
        Ok(())
    }

    fn became_ready(&mut self, i: usize) {
        self.set_state(i, State::Ready);
        let rt = &mut self.services[i];
        rt.liveness_failures = 0;
        rt.last_error = None;
        if let Some(l) = &rt.spec.liveness {
            let (name, generation, interval) = (rt.spec.name.clone(), rt.generation, l.interval);
            self.after(&name, generation, interval, Timer::Liveness);
        }
    }

    fn run_probe(&self, i: usize, check: Check) {
        let rt = &self.services[i];
        let (probe, timeout) = match check {
            Check::Readiness => match &rt.spec.readiness {
                Some(r) => (r.probe.clone(), r.timeout),
                None => return,
            },
            Check::Liveness => match &rt.spec.liveness {
                Some(l) => (l.probe.clone(), l.timeout),
                None => return,
            },
        };
        let (tx, prober, spec, run_as) = (
            self.tx.clone(),
            self.prober.clone(),
            rt.spec.clone(),
            rt.run_as.clone(),
        );
        let (name, generation) = (rt.spec.name.clone(), rt.generation);
        tokio::spawn(async move {
            let result = prober.check(&probe, timeout, &spec, run_as.as_ref()).await;
            let _ = tx.send(Event::Probe {
                name,
                generation,
                check,
                result,
            });
        });
    }

    fn on_timer(&mut self, i: usize, timer: Timer) {
        let state = self.services[i].state;
        let name = self.services[i].spec.name.clone();
        match (timer, state) {
            (Timer::CoolDown, State::Failed) if self.services[i].wanted => {
                tracing::info!(service = %name, "cool-down over: starting again");
                let rt = &mut self.services[i];
                rt.log.note("cool-down over: starting again");
                rt.restarts += 1;
                // A new window and backoff; `parks` stays, so the next
                // cool-down is longer unless this run proves stable.
                rt.fresh_start();
                self.set_state(i, State::Stopped);
                // The scheduling pass after this event starts it once its
                // dependencies are up.
            }
            (Timer::RestartDue, State::Backoff) => {
                if self.deps_ready(i) {
                    self.start(i);
                } else {
                    self.set_state(i, State::Stopped);
                }
            }
            (Timer::Readiness, State::Starting) => self.run_probe(i, Check::Readiness),
            (Timer::Liveness, State::Ready | State::Unhealthy) => {
                self.run_probe(i, Check::Liveness)
            }
            (Timer::StartDeadline, State::Starting) if self.services[i].readiness_unjudged => {
                // The supervisor could not check: not the service's delay.
                let interval = self.services[i]
                    .spec
                    .readiness
                    .as_ref()
                    .map_or(Duration::from_secs(1), |r| r.interval);
                let generation = self.services[i].generation;
                self.after(&name, generation, interval, Timer::StartDeadline);
            }
            (Timer::StartDeadline, State::Starting) => {
                let limit = self.services[i]
                    .spec
                    .readiness
                    .as_ref()
                    .map_or(Duration::ZERO, |r| r.start_timeout);
                let msg = format!("not ready within {}", humantime::format_duration(limit));
                tracing::warn!(service = %name, "{msg}; restarting");
                self.services[i].last_error = Some(msg);
                self.begin_stop(i, AfterStop::Retry);
            }
            (Timer::StopDeadline, State::Stopping) => {
                let rt = &self.services[i];
                tracing::warn!(service = %name, timeout = ?rt.spec.stop.timeout, "did not stop in time; sending SIGKILL");
                rt.log.note("stop timeout: SIGKILL");
                self.kill_service(i);
            }
            _ => {}
        }
    }

    fn on_probe(&mut self, i: usize, check: Check, result: Result<(), probe::Failure>) {
        let (name, generation) = (
            self.services[i].spec.name.clone(),
            self.services[i].generation,
        );
        if check == Check::Readiness {
            self.services[i].readiness_unjudged =
                matches!(result, Err(probe::Failure::Supervisor(_)));
        }
        let result = match result {
            Err(probe::Failure::Supervisor(e)) => {
                // Says nothing about the service: no failure counted, no
                // state changed, the same check again at its interval.
                self.short_of_resources(&name, "check", &e);
                let (interval, timer) = match check {
                    Check::Readiness => (
                        self.services[i].spec.readiness.as_ref().map(|r| r.interval),
                        Timer::Readiness,
                    ),
                    Check::Liveness => (
                        self.services[i].spec.liveness.as_ref().map(|l| l.interval),
                        Timer::Liveness,
                    ),
                };
                if let Some(interval) = interval {
                    self.after(&name, generation, interval, timer);
                }
                return;
            }
            Err(probe::Failure::Service(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        match (check, self.services[i].state, result) {
            (Check::Readiness, State::Starting, Ok(())) => self.became_ready(i),
            (Check::Readiness, State::Starting, Err(e)) => {
                tracing::debug!(service = %name, error = %e, "not ready yet");
                let interval = self.services[i]
                    .spec
                    .readiness
                    .as_ref()
                    .map_or(Duration::from_secs(1), |r| r.interval);
                self.after(&name, generation, interval, Timer::Readiness);
            }
            (Check::Liveness, State::Ready | State::Unhealthy, result) => {
                let Some(l) = self.services[i].spec.liveness.clone() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        self.services[i].liveness_failures = 0;
                        self.set_state(i, State::Ready);
                    }
                    Err(e) => {
                        let rt = &mut self.services[i];
                        rt.liveness_failures += 1;
                        tracing::warn!(service = %name, failures = rt.liveness_failures, threshold = l.failures, error = %e, "liveness check failed");
                        rt.last_error = Some(format!("liveness: {e}"));
                        if rt.liveness_failures >= l.failures {
                            rt.log.note(&format!(
                                "liveness failed {} times: restarting",
                                rt.liveness_failures
                            ));
                            self.begin_stop(i, AfterStop::Retry);
                            return;
                        }
                        self.set_state(i, State::Unhealthy);
                    }
                }
                self.after(&name, generation, l.interval, Timer::Liveness);
            }
            _ => {}
        }
    }

    fn on_exit(&mut self, i: usize, status: ExitStatus) {
        let Some(pid) = self.services[i].pid.take() else {
            return;
        };
        self.services[i].process = None;
        // Whatever the main process left behind goes with it.
        process::signal_group(pid, Signal::SIGKILL);
        if let Ok(cg) = &self.ctx.cgroups {
            cg.kill(&self.services[i].spec.name);
        }
        let rt = &mut self.services[i];
        let ran = rt.spawned.map_or(Duration::ZERO, |t| t.elapsed());
        // A long, stable run (however it ended) earns the initial delay
        // and the shortest cool-down again.
        if ran >= rt.spec.restart.reset_after {
            rt.attempt = 0;
            rt.parks = 0;
        }
        rt.last_exit = Some(status.to_string());
        rt.started_at = None;
        rt.log.note(&format!("exited: {status}"));
        let name = rt.spec.name.clone();
        match rt.state {
            State::Stopping => {
                tracing::info!(service = %name, %status, "stopped");
                let after = std::mem::take(&mut rt.after_stop);
                self.set_state(i, State::Stopped);
                match after {
                    AfterStop::Stay => {}
                    AfterStop::Restart => self.services[i].fresh_start(),
                    AfterStop::Retry => self.retry(i),
                    AfterStop::Remove => {
                        self.services.remove(i);
                    }
                }
            }
            _ if rt.spec.oneshot && status.success() => {
                tracing::info!(service = %name, "completed");
                rt.attempt = 0;
                self.set_state(i, State::Exited);
            }
            _ => {
                tracing::warn!(service = %name, %status, ran = ?ran, "exited unexpectedly");
                rt.last_error = Some(format!("exited unexpectedly: {status}"));
                match (rt.spec.restart.policy, status.success()) {
                    (RestartPolicy::Always, _) | (RestartPolicy::OnFailure, false) => self.retry(i),
                    (RestartPolicy::Never, false) => self.set_state(i, State::Failed),
                    (_, true) => {
                        rt.wanted = false;
                        self.set_state(i, State::Stopped);
                    }
                }
            }
        }
        if self.shutting_down {
            self.advance_shutdown();
        }
    }

    /// Restart after a failure: back off, unless the start limit is spent.
    fn retry(&mut self, i: usize) {
        if self.shutting_down || !self.services[i].wanted {
            self.set_state(i, State::Stopped);
            return;
        }
        // Parked now rather than after waiting out a delay that leads nowhere.
        if self.park_if_start_limit_reached(i) {
            return;
        }
        let rt = &mut self.services[i];
        let delay = rt
            .spec
            .restart
            .backoff
            .delay_with(rt.attempt, &mut self.rng);
        rt.attempt = rt.attempt.saturating_add(1);
        rt.restarts += 1;
        let (name, generation) = (rt.spec.name.clone(), rt.generation);
        tracing::info!(service = %name, delay = ?delay, "restarting after backoff");
        self.set_state(i, State::Backoff);
        self.after(&name, generation, delay, Timer::RestartDue);
    }

    fn begin_stop(&mut self, i: usize, after: AfterStop) {
        let rt = &mut self.services[i];
        match rt.pid {
            Some(pid) => {
                rt.after_stop = after;
                if rt.state != State::Stopping {
                    tracing::info!(service = %rt.spec.name, signal = rt.spec.stop.signal.as_str(), "stopping");
                    process::signal(pid, rt.spec.stop.signal);
                    let (name, generation, timeout) =
                        (rt.spec.name.clone(), rt.generation, rt.spec.stop.timeout);
                    self.set_state(i, State::Stopping);
                    self.after(&name, generation, timeout, Timer::StopDeadline);
                }
            }
            None => {
                self.set_state(i, State::Stopped);
                match after {
                    AfterStop::Remove => {
                        self.services.remove(i);
                    }
                    AfterStop::Restart => self.services[i].fresh_start(),
                    AfterStop::Retry => self.retry(i),
                    AfterStop::Stay => {}
                }
            }
        }
    }

    fn kill_service(&self, i: usize) {
        if let Some(pid) = self.services[i].pid {
            process::signal_group(pid, Signal::SIGKILL);
            process::signal(pid, Signal::SIGKILL);
        }
        if let Ok(cg) = &self.ctx.cgroups {
            cg.kill(&self.services[i].spec.name);
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutting_down {
            return;
        }
        tracing::info!(reason = why, "shutting down");
        crate::notify::stopping();
        self.shutting_down = true;
        for i in 0..self.services.len() {
            self.services[i].wanted = false;
            if self.services[i].state == State::Backoff {
                self.set_state(i, State::Stopped);
            }
        }
        let tx = self.tx.clone();
        let timeout = self.config.supervisor.shutdown_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tx.send(Event::ShutdownDeadline);
        });
        self.advance_shutdown();
    }

    /// Stop, in reverse dependency order, every running service that no
    /// running service depends on, directly or through others (a finished
    /// oneshot between two services still orders them).
    fn advance_shutdown(&mut self) {
        let mut needed = std::collections::HashSet::new();
        let mut stack: Vec<&str> = self
            .services
            .iter()
            .filter(|s| s.running())
            .flat_map(|s| s.spec.depends_on.iter().map(String::as_str))
            .collect();
        while let Some(name) = stack.pop() {
            if needed.insert(name.to_string())
                && let Some(s) = self.services.iter().find(|s| s.spec.name == name)
            {
                stack.extend(s.spec.depends_on.iter().map(String::as_str));
            }
        }
        for i in (0..self.services.len()).rev() {
            let rt = &self.services[i];
            if rt.running() && rt.state != State::Stopping && !needed.contains(&rt.spec.name) {
                self.begin_stop(i, AfterStop::Stay);
            }
        }
        if self.services.iter().all(|s| !s.running()) {
            tracing::info!("all services stopped");
            self.done = Some(Outcome::Clean);
        }
    }

    fn kill_everything(&mut self) {
        tracing::error!("shutdown timeout reached; killing what is left");
        for i in 0..self.services.len() {
            self.kill_service(i);
        }
        self.done = Some(Outcome::TimedOut);
    }

    fn on_control(&mut self, req: Request) -> Response {
        match req {
            Request::Status | Request::Health => {
                Response::Snapshot(Box::new(self.build_snapshot()))
            }
            Request::Reload => match self.reload() {
                Ok(summary) => Response::Ok(summary),
                Err(e) => Response::Error(e),
            },
            Request::RenewCertificate => {
                if self.config.tls.acme.is_none() {
                    return Response::Error(
                        "[tls] mode is not \"acme\": there is nothing to renew".into(),
                    );
                }
                self.ctx.renew_certificate.notify_one();
                Response::Ok(
                    "ordering a certificate over ACME; `phoenixctl certs` shows the outcome".into(),
                )
            }
            Request::Start { service } => self.control_start(&service),
            Request::Stop { service } => {
                let Some(i) = self.index(&service) else {
                    return self.unknown(&service);
                };
                self.services[i].wanted = false;
                if self.services[i].state == State::Failed {
                    // The operator has seen it: stopped, no longer failing health.
                    self.set_state(i, State::Stopped);
                    return Response::Ok(format!("{service} was failed; it stays stopped"));
                }
                if !self.services[i].running() && self.services[i].state != State::Backoff {
                    return Response::Ok(format!(
                        "{service} is not running ({})",
                        self.services[i].state.as_str()
                    ));
                }
                self.begin_stop(i, AfterStop::Stay);
                Response::Ok(format!("stopping {service}"))
            }
            Request::Restart { service } => {
                let Some(i) = self.index(&service) else {
                    return self.unknown(&service);
                };
                if self.shutting_down {
                    return Response::Error("shutting down".into());
                }
                if self.services[i].running() {
                    self.services[i].wanted = true;
                    self.begin_stop(i, AfterStop::Restart);
                    Response::Ok(format!("restarting {service}"))
                } else {
                    self.control_start(&service)
                }
            }
        }
    }

    fn unknown(&self, service: &str) -> Response {
        let names: Vec<_> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
        Response::Error(format!(
            "no service `{service}` (services: {})",
            names.join(", ")
        ))
    }

    fn control_start(&mut self, service: &str) -> Response {
        let Some(i) = self.index(service) else {
            return self.unknown(service);
        };
        if self.shutting_down {
            return Response::Error("shutting down".into());
        }
        let rt = &mut self.services[i];
        rt.wanted = true;
        match rt.state {
            State::Stopped | State::Failed | State::Exited | State::Backoff => {
                rt.fresh_start();
                rt.last_error = None;
                self.set_state(i, State::Stopped);
                if !self.deps_ready(i) {
                    let waiting: Vec<_> = self.waiting_for(i);
                    return Response::Ok(format!(
                        "{service} will start when {} are ready",
                        waiting.join(", ")
                    ));
                }
                self.start(i);
                Response::Ok(format!("starting {service}"))
            }
            s => Response::Ok(format!("{service} is already {}", s.as_str())),
        }
    }

    fn waiting_for(&self, i: usize) -> Vec<String> {
        self.services[i]
            .spec
            .depends_on
            .iter()
            .filter(|d| {
                !self
                    .services
                    .iter()
                    .any(|s| s.spec.name == **d && s.satisfies_dependents())
            })
            .cloned()
            .collect()
    }

    /// Re-read the config file and apply it: restart only services whose
    /// spec changed; signal those whose generated files changed. A bad file
    /// changes nothing.
    fn reload(&mut self) -> Result<String, String> {
        if self.shutting_down {
            return Err("shutting down".into());
        }
        crate::notify::reloading();
        let result = self.apply_reload();
        if self.announced_ready {
            crate::notify::ready();
        }
        result
    }

    fn apply_reload(&mut self) -> Result<String, String> {
        // Also refuses, at their keys, the directories, listeners and TLS
        // settings that only a restart of the supervisor applies.
        let mut new = config::reload(&self.config.source, &self.ctx.opts, &self.config)
            .map_err(|e| e.to_string())?;
        let certificate = |c: &Config| std::fs::read(&c.tls.cert).ok();
        let certificate_before = certificate(&self.config);
        let unreachable = prepare::unreachable(&new);
        if !unreachable.is_empty() {
            return Err(unreachable.join("\n"));
        }
        let prepared = prepare::prepare(&new).map_err(|e| format!("{e:#}"))?;
        let new_certificate = certificate(&new) != certificate_before;
        let mut notes = Vec::new();
        if new.supervisor != self.config.supervisor {
            notes.push(
                "[supervisor] shutdown_timeout and log settings take effect at the next start"
                    .to_string(),
            );
            new.supervisor = self.config.supervisor.clone();
        }
        let mut kept = Vec::new();
        for spec in &new.services {
            let run_as = prepared.run_as(&spec.name);
            match self.index(&spec.name) {
                Some(i) => {
                    let rt = &mut self.services[i];
                    rt.run_as = run_as;
                    rt.next_spec = None;
                    if rt.after_stop == AfterStop::Remove {
                        rt.after_stop = AfterStop::Restart;
                    }
                    if rt.spec == *spec {
                        if new_certificate {
                            notes.extend(signal_new_certificate(rt));
                        }
                    } else if rt.spec.differs_only_in_files(spec)
                        && let Some(sig) = rt.spec.reload_signal
                        && let Some(pid) = rt.pid
                    {
                        for f in &spec.files {
                            prepare::write_generated(f)
                                .map_err(|e| format!("cannot write {}: {e}", f.path.display()))?;
                        }
                        process::signal(pid, sig);
                        rt.spec = spec.clone();
                        notes.push(format!("{}: sent {}", spec.name, sig.as_str()));
                    } else if rt.running() && rt.wanted {
                        rt.next_spec = Some(spec.clone());
                        self.begin_stop(i, AfterStop::Restart);
                        notes.push(format!("{}: restarting", spec.name));
                    } else {
                        // Not running, or stopped by the operator: the new spec
                        // applies at its next start.
                        rt.next_spec = Some(spec.clone());
                        if !rt.running() {
                            rt.fresh_start();
                            if rt.state == State::Failed {
                                self.set_state(i, State::Stopped);
                            }
                        }
                        notes.push(format!("{}: updated", spec.name));
                    }
                }
                None => {
                    let c = &new.supervisor;
                    let log = ServiceLog::open(&c.log_dir, &spec.name, c.log_max_bytes, c.log_keep);
                    self.services.push(Runtime::new(spec.clone(), run_as, log));
                    notes.push(format!("{}: added", spec.name));
                }
            }
            kept.push(spec.name.clone());
        }
        let removed: Vec<String> = self
            .services
            .iter()
            .map(|s| s.spec.name.clone())
            .filter(|n| !kept.contains(n))
            .collect();
        for name in removed {
            if let Some(i) = self.index(&name) {
                self.services[i].wanted = false;
                notes.push(format!("{name}: removed"));
                self.begin_stop(i, AfterStop::Remove);
            }
        }
        // Keep dependency order: services of the new config first, in its order.
        self.services.sort_by_key(|s| {
            kept.iter()
                .position(|n| *n == s.spec.name)
                .unwrap_or(usize::MAX)
        });
        self.config = new;
        if notes.is_empty() {
            notes.push("no changes".into());
        }
        // The redirect follows the API's port.
        self.ctx
            .https_port
            .store(self.config.tls.https_port, Ordering::Relaxed);
        Ok(notes.join("; "))
    }

    /// Sends the reload signal to the running services that serve the
    /// certificate (the API), so they load the new one.
    fn signal_new_certificate(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(signal_new_certificate)
            .collect()
    }

    fn build_snapshot(&self) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: unix_ms(self.started_at),
            pid1: self.ctx.pid1,
            config_file: self.config.source.display().to_string(),
            limits_unavailable: self.ctx.cgroups.as_ref().err().cloned(),
            shutting_down: self.shutting_down,
            orphans_reaped: self.ctx.reaper.orphans_reaped(),
            resource_shortage: self
                .shortage
                .as_ref()
                .filter(|s| s.last.elapsed() < SHORTAGE_WINDOW)
                .map(|s| ResourceShortage {
                    last_ms: unix_ms(s.last_at),
                    count: s.count,
                    error: s.error.clone(),
                }),
            services: self
                .services
                .iter()
                .enumerate()
                .map(|(i, rt)| ServiceStatus {
                    name: rt.spec.name.clone(),
                    state: rt.state,
                    pid: rt.pid,
                    restarts: rt.restarts,
                    oneshot: rt.spec.oneshot,
                    wanted: rt.wanted,
                    started_at_ms: rt.started_at.map(unix_ms),
                    since_ms: unix_ms(rt.since),
                    last_exit: rt.last_exit.clone(),
                    last_error: rt.last_error.clone(),
                    retry_at_ms: rt
                        .retry_at
                        .filter(|_| rt.state == State::Failed)
                        .map(unix_ms),
                    depends_on: if rt.state == State::Stopped && rt.wanted {
                        self.waiting_for(i)
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            certificate: status::certificate_shown(
                self.certificate.as_ref(),
                self.plain_http.as_ref(),
            ),
            scaling: self.scaling.clone(),
        }
    }

    /// Writes what runs to the run directory when it changed, so that the
    /// next supervisor can stop it should this one be killed.
    fn save_record(&mut self) {
        if !leftovers::proc_matches() {
            return;
        }
        let record = leftovers::Record {
            services: self
                .services
                .iter()
                .enumerate()
                .filter_map(|(order, rt)| {
                    Some(leftovers::Entry {
                        service: rt.spec.name.clone(),
                        process: rt.process?,
                        pgid: rt.process?.pid,
                        stop_signal: rt.spec.stop.signal as i32,
                        stop_timeout_ms: rt.spec.stop.timeout.as_millis() as u64,
                        order,
                    })
                })
                .collect(),
            ..self.record.clone()
        };
        if record == self.record {
            return;
        }
        let path = leftovers::path(&self.config.supervisor.run_dir);
        match leftovers::write(&path, &record) {
            Ok(()) => self.record = record,
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "cannot record the running services; a supervisor started after this one is killed will not find them"
            ),
        }
    }

    fn publish(&self) {
        let snapshot = self.build_snapshot();
        self.snapshot.send_if_modified(|old| {
            if *old == snapshot {
                false
            } else {
                *old = snapshot;
                true
            }
        });
    }
}

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Pipe::Out(p) => std::pin::Pin::new(p).poll_read(cx, buf),
            Pipe::Err(p) => std::pin::Pin::new(p).poll_read(cx, buf),
        }
    }
}

fn signal_new_certificate(rt: &Runtime) -> Option<String> {
    match (rt.spec.tls_reload, rt.spec.reload_signal, rt.pid) {
        (true, Some(sig), Some(pid)) => {
            process::signal(pid, sig);
            Some(format!(
                "{}: sent {} (new TLS certificate)",
                rt.spec.name,
                sig.as_str()
            ))
        }
        _ => None,
    }
}

fn empty_snapshot(config: &Config) -> Snapshot {
    Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: now_ms(),
        pid1: false,
        config_file: config.source.display().to_string(),
        limits_unavailable: None,
        shutting_down: false,
        orphans_reaped: 0,
        resource_shortage: None,
        services: Vec::new(),
        certificate: None,
        scaling: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    //! The loop's timing, in paused (virtual) time: a service whose program
    //! has vanished fails every start, so only timers drive it.

    use super::*;
    use std::path::Path;

    async fn status(tx: &mpsc::UnboundedSender<Event>) -> Snapshot {
        let (reply, rx) = oneshot::channel();
        tx.send(Event::Control(Request::Status, reply)).unwrap();
        match rx.await.unwrap() {
            Response::Snapshot(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    async fn start_loop(toml: &str) -> (mpsc::UnboundedSender<Event>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[supervisor]\nstate_dir = \"{d}/s\"\nrun_dir = \"{d}/r\"\nlog_dir = \"{d}/l\"\n\
             [postgres]\nenable = false\nexternal_url = \"postgres://x@h/x\"\n\
             [prometheus]\nenable = false\n[pushgateway]\nenable = false\n[api]\nenable = false\n{toml}",
            d = dir.path().display()
        );
        let opts = LoadOptions {
            dev: false,
            root: false,
            cwd: dir.path().into(),
            exe_dir: "/nonexistent".into(),
            users: None,
        };
        let config = config::parse(&text, Path::new("test.toml"), &opts).unwrap();
        std::fs::create_dir_all(&config.supervisor.log_dir).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Context {
            opts,
            reaper: Arc::new(Reaper::default()),
            cgroups: Err("not in tests".into()),
            pid1: false,
            heartbeat: Arc::new(AtomicU64::new(0)),
            renew_certificate: Default::default(),
            https_port: Default::default(),
        };
        let (sup, _snapshot) =
            Supervisor::new(config, prepare::Prepared::default(), ctx, tx.clone());
        tokio::spawn(sup.run(rx));
        (tx, dir)
    }

    async fn wait_for_state(
        tx: &mpsc::UnboundedSender<Event>,
        name: &str,
        want: State,
    ) -> ServiceStatus {
        loop {
            let s = status(tx).await;
            let svc = s.services.into_iter().find(|s| s.name == name).unwrap();
            if svc.state == want {
                return svc;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_starts_back_off_exponentially_then_park_at_the_start_limit() {
        let t0 = Instant::now();
        let (tx, _dir) = start_loop(
            "[services.gone]\ncommand = [\"/nonexistent/program\"]\n\
             restart = { initial_delay = \"1s\", max_delay = \"8s\", jitter = 0.0, start_limit = { burst = 4, interval = \"1m\" } }\n",
        )
        .await;
        let svc = wait_for_state(&tx, "gone", State::Failed).await;
        // Starts at 0 s, 1 s, 3 s and 7 s (delays 1, 2, 4); the fourth failure parks it.
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_secs(7) && elapsed < Duration::from_millis(7100),
            "{elapsed:?}"
        );
        assert_eq!(svc.restarts, 3);
        assert!(svc.last_error.unwrap().contains("parked as failed"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_window_slides_so_rare_failures_never_park() {
        let t0 = Instant::now();
        // At most 2 starts per 5 s, but 10 s between attempts: never parked.
        let (tx, _dir) = start_loop(
            "[services.gone]\ncommand = [\"/nonexistent/program\"]\n\
             restart = { initial_delay = \"10s\", max_delay = \"10s\", jitter = 0.0, start_limit = { burst = 2, interval = \"5s\" } }\n",
        )
        .await;
        loop {
            let s = status(&tx).await;
            let svc = &s.services[0];
            assert_ne!(svc.state, State::Failed, "parked after {:?}", t0.elapsed());
            if svc.restarts >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Failures at 0, 10, ..., 50 s: the sixth restart is scheduled at 50 s.
        assert!(
            t0.elapsed() >= Duration::from_secs(50),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn operator_start_resets_a_parked_service() {
        let (tx, _dir) = start_loop(
            "[services.gone]\ncommand = [\"/nonexistent/program\"]\n\
             restart = { initial_delay = \"1s\", jitter = 0.0, start_limit = { burst = 1, interval = \"1h\", cool_down = \"2h\" } }\n",
        )
        .await;
        wait_for_state(&tx, "gone", State::Failed).await;
        // Parked: an hour of virtual time (inside the cool-down) brings no new attempt.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let svc = wait_for_state(&tx, "gone", State::Failed).await;
        assert_eq!(svc.restarts, 0);
        let (reply, rx) = oneshot::channel();
        tx.send(Event::Control(
            Request::Start {
                service: "gone".into(),
            },
            reply,
        ))
        .unwrap();
        assert!(matches!(rx.await.unwrap(), Response::Ok(_)));
        let svc = wait_for_state(&tx, "gone", State::Failed).await;
        assert!(svc.last_error.unwrap().contains("parked"));
    }

    #[tokio::test(start_paused = true)]
    async fn parked_service_is_started_again_after_a_doubling_cool_down() {
        let t0 = Instant::now();
        let (tx, _dir) = start_loop(
            "[services.gone]\ncommand = [\"/nonexistent/program\"]\n\
             restart = { initial_delay = \"1s\", jitter = 0.0, start_limit = { burst = 1, interval = \"1h\", cool_down = \"5m\", cool_down_max = \"12m\" } }\n",
        )
        .await;
        let svc = wait_for_state(&tx, "gone", State::Failed).await;
        let error = svc.last_error.unwrap();
        assert!(error.contains("next try in 5m"), "{error}");
        let retry_in = svc.retry_at_ms.unwrap().saturating_sub(now_ms());
        assert!((299_000..=300_000).contains(&retry_in), "{retry_in}");
        // Each cool-down over, one more start (failing again here), then
        // parked for twice as long, at most 12 min: 5, 10, 12, 12.
        let mut seen = Vec::new();
        while seen.len() < 4 {
            assert!(t0.elapsed() < Duration::from_secs(3600), "{seen:?}");
            let svc = status(&tx).await.services.remove(0);
            if svc.restarts > seen.len() as u64 {
                assert_eq!(svc.state, State::Failed, "parked again at once");
                seen.push(t0.elapsed().as_secs());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Seen at the next look, within a second of the timer.
        for (seen, due) in seen.iter().zip([300, 900, 1620, 2340]) {
            assert!((due..=due + 1).contains(seen), "{seen} s, due at {due} s");
        }
    }

    /// The supervisor out of file descriptors: its checks fail with EMFILE
    /// (sent here as the prober reports them), which must not be taken for
    /// the service's failure.
    #[tokio::test(start_paused = true)]
    async fn checks_the_supervisor_could_not_run_never_stop_a_service() {
        let (tx, _dir) = start_loop(
            "[services.up]\ncommand = [\"/bin/sleep\", \"3600\"]\n\
             liveness = { tcp = \"127.0.0.1:1\", interval = \"1h\", failures = 2 }\n\
             [services.slow]\ncommand = [\"/bin/sleep\", \"3600\"]\n\
             readiness = { tcp = \"127.0.0.1:1\", interval = \"10s\", start_timeout = \"1s\" }\n",
        )
        .await;
        wait_for_state(&tx, "up", State::Ready).await;
        let shortage = |name: &str, check| Event::Probe {
            name: name.into(),
            generation: 1,
            check,
            result: Err(probe::Failure::Supervisor(
                "tcp 127.0.0.1:1: Too many open files (os error 24)".into(),
            )),
        };
        for _ in 0..10 {
            tx.send(shortage("up", Check::Liveness)).unwrap();
            tx.send(shortage("slow", Check::Readiness)).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let s = status(&tx).await;
        let find = |name: &str| s.services.iter().find(|svc| svc.name == name).unwrap();
        let (up, slow) = (find("up"), find("slow"));
        assert_eq!((up.state, up.restarts), (State::Ready, 0), "{up:?}");
        // Its start deadline (1 s) waits for a check that could run.
        assert_eq!(
            (slow.state, slow.restarts),
            (State::Starting, 0),
            "{slow:?}"
        );
        let shortage = s.resource_shortage.expect("shown in the snapshot");
        assert_eq!(shortage.count, 20);
        assert!(shortage.error.contains("Too many open files"));
        let (overall, doc) = crate::health::health_document(&status(&tx).await);
        assert_eq!(overall, crate::health::Status::Warn);
        assert_eq!(doc["checks"]["supervisor:resources"][0]["status"], "warn");

        // The same check failing for the service does count.
        tx.send(Event::Probe {
            name: "up".into(),
            generation: 1,
            check: Check::Liveness,
            result: Err(probe::Failure::Service("refused".into())),
        })
        .unwrap();
        wait_for_state(&tx, "up", State::Unhealthy).await;
        // A minute without a shortage: the warning is gone.
        for _ in 0..61 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Event::Tick).unwrap();
        }
        assert!(status(&tx).await.resource_shortage.is_none());
        tx.send(Event::Signal(libc::SIGTERM)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_of_a_service_in_backoff_is_immediate() {
        let (tx, _dir) = start_loop(
            "[services.gone]\ncommand = [\"/nonexistent/program\"]\nrestart = { initial_delay = \"1h\", max_delay = \"1h\" }\n",
        )
        .await;
        wait_for_state(&tx, "gone", State::Backoff).await;
        let t0 = Instant::now();
        tx.send(Event::Signal(libc::SIGTERM)).unwrap();
        // The loop ends: the channel closes once the receiver is dropped.
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
