//! The event loop: one task owns every service's state and handles one
//! closed set of events (child exited, check result, timer, signal, control
//! request, a task's status). Everything else only sends events or reads the
//! published snapshot. Below it: `spawn` starts a service's process, and
//! `reload` plans what a reload changes (a pure function of the old and new
//! configuration and what each service is doing).
//!
//! | event | sent by | handling |
//! |---|---|---|
//! | `Signal(n)` | the signal task | SIGCHLD: reap; SIGHUP: reload; SIGTERM, SIGINT: shutdown |
//! | `Exited` | a task per child, awaiting the reaper's channel | `on_exit` |
//! | `Probe` | a task per check attempt | `on_probe` |
//! | `LogMatched` | the output pump | log readiness: `became_ready` |
//! | `Timer` | a sleeping task per timer | `on_timer`: restart due, start, stop and shutdown deadlines, next check, cool-down over |
//! | `Control` | the control socket, through the callback `run.rs` gives it | `on_control`, answered through its oneshot |
//! | `ShutdownDeadline` | the shutdown timer | `kill_everything` |
//! | `Tick` | a 1 s interval | heartbeat for `/livez`, a reap as a safety net |
//! | `Certificate` | the certificate task, with its status | kept for the snapshot; a renewed certificate: the reload signal to `tls_reload` services |
//! | `PlainHttp` | the plain-HTTP listener, with its status | kept for the snapshot |
//! | `Scaling` | the capacity checks, with their statuses | kept for the snapshot |
//!
//! The loop is the only writer of the published state: tasks send their
//! status in their events, and no state is shared behind a lock.
//!
//! After each event the loop runs `schedule` (start every wanted, stopped
//! service whose dependencies are up, and tell systemd once start-up has
//! `settled`), writes the record of running services when it changed, and
//! publishes a new [`Snapshot`] when it changed; it ends when `handle` sets
//! an [`Outcome`].
//!
//! **Generations.** `start` takes a new generation for every attempt, before
//! it spawns, so an attempt whose spawn fails has one too. Every event about
//! a service carries the generation it was made for, and `handle` drops the
//! others: timers are never cancelled, the timer, check result or exit of an
//! earlier process is simply ignored. Timers also act only in their state (a
//! stop deadline in `stopping`, a readiness timer in `starting`, ...).
//!
//! **Who moves a service.** `start` (the start limit, then `spawn`: stopped
//! to starting, or straight to ready without a readiness check);
//! `became_ready`; `on_exit` (by what the stop was for, see `AfterStop`, or
//! the restart policy) and `retry` (backoff, or parked by
//! `park_if_start_limit_reached`, which arms the cool-down); `begin_stop`;
//! `begin_shutdown` and `advance_shutdown` (reverse dependency order);
//! `control_start` and `apply_reload` (fresh starts, `Runtime::fresh_start`).
//! Each transition and its trigger: docs/supervisor.md.

mod reload;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

// tokio's clock, so restart and deadline logic can be tested in paused time.
use tokio::time::Instant;

use nix::sys::signal::Signal;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cgroup::Cgroups;
use crate::config::{self, Config, LoadOptions, Probe, RestartPolicy, ServiceSpec};
use crate::control::{Request, Response};
use crate::leftovers;
use crate::logs::ServiceLog;
use crate::prepare;
use crate::probe::{self, Prober};
use crate::process::{self, RunAs};
use crate::reaper::{ExitStatus, Reaper};
use crate::status::{
    self, BackupStatus, CertificateStatus, PlainHttpStatus, ResourceShortage, ScalingStatus,
    ServiceStatus, Snapshot, State, now_ms, unix_ms,
};
use reload::Action;

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
    /// The backup task's state changed.
    Backup(Box<BackupStatus>),
    /// The external database was looked at (None: there is none).
    ExternalDatabase(Option<Box<crate::external_db::ExternalDatabaseStatus>>),
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

    /// What a reload's plan needs to know of it.
    fn reload_view(&self) -> reload::Current<'_> {
        reload::Current {
            spec: &self.spec,
            state: self.state,
            running: self.running(),
            wanted: self.wanted,
            removing: self.after_stop == AfterStop::Remove,
        }
    }

    /// As published; `waiting_for` names the dependencies it waits for.
    fn status(&self, waiting_for: impl FnOnce() -> Vec<String>) -> ServiceStatus {
        ServiceStatus {
            name: self.spec.name.clone(),
            state: self.state,
            pid: self.pid,
            restarts: self.restarts,
            oneshot: self.spec.oneshot,
            wanted: self.wanted,
            started_at_ms: self.started_at.map(unix_ms),
            since_ms: unix_ms(self.since),
            last_exit: self.last_exit.clone(),
            last_error: self.last_error.clone(),
            retry_at_ms: self
                .retry_at
                .filter(|_| self.state == State::Failed)
                .map(unix_ms),
            depends_on: if self.state == State::Stopped && self.wanted {
                waiting_for()
            } else {
                Vec::new()
            },
        }
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
    /// Told of each config a reload applied, for the supervisor's own
    /// tasks (the backup schedules).
    pub reloaded: Box<dyn Fn(&Config) + Send>,
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
    /// The backup task's last report; None when `[backup]` is off.
    backup: Option<BackupStatus>,
    /// `[postgres] url`: the last look at the external database.
    external_database: Option<crate::external_db::ExternalDatabaseStatus>,
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
        let (snapshot, rx) = watch::channel(Snapshot::empty(&config.source));
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
            backup: None,
            external_database: None,
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
            Event::ExternalDatabase(status) => self.external_database = status.map(|s| *s),
            // A reload that turned [backup] off (the database moved out)
            // ends its checks; the task's later reports are not shown.
            Event::Backup(status) if self.config.backup.is_some() => self.backup = Some(*status),
            Event::Backup(_) => self.backup = None,
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
        let pid = spawn::process(&self.services[i], &self.ctx, &self.tx)?;
        let rt = &mut self.services[i];
        rt.pid = Some(pid);
        rt.process = leftovers::Proc::of(pid);
        rt.spawned = Some(Instant::now());
        rt.started_at = Some(SystemTime::now());
        rt.liveness_failures = 0;
        rt.readiness_unjudged = false;
        rt.after_stop = AfterStop::Stay;
        let (name, generation) = (rt.spec.name.clone(), rt.generation);
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
            Request::Status | Request::Health => Response::Snapshot(Box::new(self.snapshot())),
            // run.rs hands these to the backup task; they reach the loop
            // only if that changes.
            Request::BackupNow { .. }
            | Request::BackupList
            | Request::BackupVerify { .. }
            | Request::Restore(_)
            | Request::MigrateDatabase(_) => {
                Response::Error("backup requests are answered by the backup task".into())
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
        let certificate_changed = certificate(&new) != certificate_before;
        let current: Vec<_> = self.services.iter().map(Runtime::reload_view).collect();
        let plan = reload::plan(&self.config, &new, &current, certificate_changed);
        if plan.keep_supervisor_settings {
            new.supervisor = self.config.supervisor.clone();
        }
        for step in &plan.steps {
            self.apply_step(step, &new, &prepared)?;
        }
        for name in &plan.remove {
            if let Some(i) = self.index(name) {
                self.services[i].wanted = false;
                self.begin_stop(i, AfterStop::Remove);
            }
        }
        // Keep dependency order: services of the new config first, in its order.
        self.services.sort_by_key(|s| {
            plan.steps
                .iter()
                .position(|step| step.name == s.spec.name)
                .unwrap_or(usize::MAX)
        });
        self.config = new;
        // The redirect follows the API's port.
        self.ctx
            .https_port
            .store(self.config.tls.https_port, Ordering::Relaxed);
        (self.ctx.reloaded)(&self.config);
        if self.config.backup.is_none() {
            self.backup = None;
        }
        Ok(plan.summary())
    }

    /// Carries out the plan's step for one service of the new config.
    fn apply_step(
        &mut self,
        step: &reload::Step,
        new: &Config,
        prepared: &prepare::Prepared,
    ) -> Result<(), String> {
        let run_as = prepared.run_as(&step.name);
        if let Action::Add(spec) = &step.action {
            let c = &new.supervisor;
            let log = ServiceLog::open(&c.log_dir, &spec.name, c.log_max_bytes, c.log_keep);
            self.services.push(Runtime::new(spec.clone(), run_as, log));
            return Ok(());
        }
        let Some(i) = self.index(&step.name) else {
            return Ok(());
        };
        let rt = &mut self.services[i];
        rt.run_as = run_as;
        rt.next_spec = None;
        if step.cancel_removal {
            rt.after_stop = AfterStop::Restart;
        }
        match &step.action {
            Action::Add(_) | Action::Keep => {}
            Action::SignalCertificate(signal) => {
                if let Some(pid) = rt.pid {
                    process::signal(pid, *signal);
                }
            }
            Action::RewriteFiles { spec, signal } => {
                for f in &spec.files {
                    prepare::write_generated(f)
                        .map_err(|e| format!("cannot write {}: {e}", f.path.display()))?;
                }
                if let Some(pid) = rt.pid {
                    process::signal(pid, *signal);
                }
                rt.spec = spec.clone();
            }
            Action::Restart(spec) => {
                rt.next_spec = Some(spec.clone());
                self.begin_stop(i, AfterStop::Restart);
            }
            Action::Update { spec, unpark } => {
                rt.next_spec = Some(spec.clone());
                rt.fresh_start();
                if *unpark {
                    self.set_state(i, State::Stopped);
                }
            }
            Action::Defer(spec) => rt.next_spec = Some(spec.clone()),
        }
        Ok(())
    }

    /// Sends the reload signal to the running services that serve the
    /// certificate (the API), so they load the new one.
    fn signal_new_certificate(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(|rt| {
                let pid = rt.pid?;
                let signal = reload::certificate_signal(&rt.spec, rt.running())?;
                process::signal(pid, signal);
                Some(reload::certificate_note(&rt.spec.name, signal))
            })
            .collect()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::of(status::Parts {
            started_at: self.started_at,
            pid1: self.ctx.pid1,
            config_file: &self.config.source,
            limits_unavailable: self.ctx.cgroups.as_ref().err().map(String::as_str),
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
            services: (0..self.services.len())
                .map(|i| self.services[i].status(|| self.waiting_for(i)))
                .collect(),
            certificate: self.certificate.as_ref(),
            plain_http: self.plain_http.as_ref(),
            scaling: &self.scaling,
            backup: self.backup.as_ref(),
            external_database: self.external_database.as_ref(),
        })
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
        status::publish(&self.snapshot, self.snapshot());
    }
}
