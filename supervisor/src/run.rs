//! `phoenix-supervisor run`: wire the event loop to signals, the health
//! server and the control socket, and drive it to the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

use crate::cgroup::Cgroups;
use crate::config::{self, LoadOptions};
use crate::config::{BackupKind, TlsSettings};
use crate::control::{Request, Response};
use crate::reaper::Reaper;
use crate::status::{PlainHttpStatus, now_ms};
use crate::supervisor::{Context, Event, Outcome, Supervisor};
use crate::tls::{acme, renewal};
use crate::{backup, control, health, leftovers, listen, pid1, prepare, scaling};

pub struct RunOptions {
    pub config: PathBuf,
    pub dev: bool,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Outcome> {
    let pid1 = pid1::is_pid1();
    pid1::close_inherited_descriptors();
    pid1::become_subreaper();
    pid1::raise_open_files_limit();
    if pid1 {
        pid1::mount_essentials();
        pid1::disable_ctrl_alt_del();
    }
    // Signals first: a SIGTERM during start-up must still stop things in order.
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .context("cannot install signal handlers")?;

    let load = LoadOptions::detect(opts.dev).checking_users(crate::process::can_run_as);
    let config = config::load(&opts.config, &load)?;
    // What a killed supervisor left running holds ports and data
    // directories: stopped before they are checked.
    leftovers::stop_leftovers(&config.supervisor.run_dir).await?;
    prepare::preflight(&config)?;
    let prepared = prepare::prepare(&config)?;

    let health_listener = tokio::net::TcpListener::bind(config.health.listen)
        .await
        .with_context(|| {
            format!(
                "[health] listen = {}: cannot listen (another process holds it?)",
                config.health.listen
            )
        })?;
    let control_listener =
        control::bind(&config.supervisor.control_socket()).with_context(|| {
            format!(
                "control socket {}",
                config.supervisor.control_socket().display()
            )
        })?;

    let cgroups = Cgroups::init().map(Arc::new).map_err(|why| {
        tracing::warn!(reason = %why, "cgroup v2 is not writable here: services run without resource limits");
        why
    });

    let (tx, rx) = mpsc::unbounded_channel();
    let heartbeat = Arc::new(AtomicU64::new(now_ms()));
    let renew_certificate = Arc::new(tokio::sync::Notify::new());
    let https_port = Arc::new(std::sync::atomic::AtomicU16::new(config.tls.https_port));
    spawn_certificate_tasks(&config.tls, &renew_certificate, &https_port, &tx);
    if config.scaling.enable {
        let (settings, events) = (config.scaling.clone(), tx.clone());
        keep_running("capacity checks", move || {
            let events = events.clone();
            scaling::run(
                settings.clone(),
                scaling::SystemSampler::new(&settings),
                move |statuses| {
                    let _ = events.send(Event::Scaling(statuses));
                },
            )
        });
    }
    let (external_database, watched) =
        tokio::sync::watch::channel(config.external_database.clone());
    let events = tx.clone();
    tokio::spawn(crate::external_db::run(watched, move |status| {
        let _ = events.send(Event::ExternalDatabase(status.map(Box::new)));
    }));
    let reaper = Arc::new(Reaper::default());
    let switch = backup::migrate::Switch {
        config_file: config.source.clone(),
        secrets_dir: config.supervisor.state_dir.join("secrets"),
        api_user: config.service("api").and_then(|s| s.user.clone()),
        dev: config.dev,
    };
    let backups = spawn_backup_task(config.backup.as_ref(), switch, &reaper, &tx);
    let ctx = Context {
        opts: load,
        reaper,
        cgroups,
        pid1,
        heartbeat: heartbeat.clone(),
        renew_certificate,
        https_port,
        reloaded: {
            let backups = reschedule_backups(config.backup.as_ref(), backups.clone());
            Box::new(move |new: &crate::config::Config| {
                backups(new);
                external_database.send_if_modified(|db| {
                    let changed = *db != new.external_database;
                    *db = new.external_database.clone();
                    changed
                });
            })
        },
    };
    let socket = config.supervisor.control_socket();
    let run_dir = config.supervisor.run_dir.clone();
    tracing::info!(
        config = %config.source.display(),
        services = config.services.len(),
        health = %config.health.listen,
        pid1,
        machine = %ctx.opts.machine,
        limits = %limits_summary(&config),
        "phoenix-supervisor starting"
    );
    let (supervisor, snapshot) = Supervisor::new(config, prepared, ctx, tx.clone());

    let signal_tx = tx.clone();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            if signal_tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    let tick_tx = tx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if tick_tx.send(Event::Tick).is_err() {
                return;
            }
        }
    });
    let app = health::router(snapshot, heartbeat);
    tokio::spawn(listen::serve_http("health", health_listener, app));
    tokio::spawn(control::serve(
        control_listener,
        move |request, reply, progress| match request {
            // The backup task answers these itself: a backup or a restore
            // takes minutes, and the loop never waits.
            Request::BackupNow { .. }
            | Request::BackupList
            | Request::BackupVerify { .. }
            | Request::Restore(_)
            | Request::MigrateDatabase(_) => {
                ask_backup_task(backups.as_ref(), request, reply, progress);
                true
            }
            _ => tx.send(Event::Control(request, reply)).is_ok(),
        },
    ));

    let outcome = supervisor.run(rx).await;
    let _ = std::fs::remove_file(&socket);
    if outcome == Outcome::Clean {
        // Everything stopped: nothing for the next supervisor to find.
        let _ = std::fs::remove_file(leftovers::path(&run_dir));
    }
    tracing::info!(?outcome, "phoenix-supervisor stopped");
    Ok(outcome)
}

/// The certificate task (watching, and in ACME mode renewing) and the
/// plain-HTTP listener (challenges, redirect to HTTPS). `[tls]` changes
/// reach them at the next start of the supervisor.
fn spawn_certificate_tasks(
    tls: &TlsSettings,
    renew: &Arc<tokio::sync::Notify>,
    https_port: &Arc<std::sync::atomic::AtomicU16>,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let challenges = acme::Challenges::default();
    {
        let (tls, challenges, renew, events) =
            (tls.clone(), challenges.clone(), renew.clone(), tx.clone());
        keep_running("certificate", move || {
            let issuer = tls.acme.clone().map(|settings| acme::AcmeIssuer {
                settings,
                hostnames: tls.hostnames.clone(),
                challenges: challenges.clone(),
            });
            let events = events.clone();
            renewal::run(
                tls.clone(),
                issuer,
                renew.clone(),
                move |status, renewed| {
                    let _ = events.send(Event::Certificate {
                        status: Box::new(status),
                        renewed,
                    });
                },
            )
        });
    }
    if let Some(addr) = tls.http_listen {
        let (app, events) = (
            acme::http_router(challenges, https_port.clone()),
            tx.clone(),
        );
        keep_running("plain HTTP", move || {
            let events = events.clone();
            acme::serve_http(addr, app.clone(), move |error| {
                let _ = events.send(Event::PlainHttp(PlainHttpStatus {
                    listen: addr.to_string(),
                    error,
                }));
            })
        });
    }
}

/// Runs one of the supervisor's own tasks for the life of the process: a
/// panic is logged and the task started afresh 10 s later, so that a bug
/// in, say, renewal does not silently end renewals.
fn keep_running<F, Fut>(name: &'static str, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(task = name, error = %e, "a supervisor task panicked; starting it again in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    });
}

/// Starts the backup task when `[backup]` is on, and with `[backup.s3]`
/// the offsite task; the sender takes `phoenixctl backup` requests.
fn spawn_backup_task(
    settings: Option<&crate::config::BackupSettings>,
    switch: backup::migrate::Switch,
    reaper: &Arc<Reaper>,
    events: &mpsc::UnboundedSender<Event>,
) -> Option<mpsc::Sender<backup::Request>> {
    let settings = settings?;
    let runner = match backup::job::Runner::new(settings.clone(), reaper.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = e, "backups cannot run");
            return None;
        }
    };
    let reports = Arc::new(Reports {
        events: events.clone(),
        last: std::sync::Mutex::default(),
    });
    let offsite = settings
        .s3
        .as_ref()
        .map(|s3| spawn_offsite_task(s3, &runner, &reports));
    let (tx, rx) = mpsc::channel(16);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let schedules = settings.schedules.clone();
    let services = Arc::new(LoopServices {
        events: events.clone(),
    });
    keep_running("backups", move || {
        let (runner, rx, reports) = (runner.clone(), rx.clone(), reports.clone());
        let (schedules, offsite, services) = (schedules.clone(), offsite.clone(), services.clone());
        let switch = switch.clone();
        async move {
            let mut rx = rx.lock().await;
            backup::run(
                backup::PgBackRest {
                    runner,
                    offsite,
                    services,
                    switch,
                },
                backup::schedule::Timetable::new(&schedules),
                backup::WallClock,
                &mut rx,
                move |status| reports.backup(status),
            )
            .await
        }
    });
    Some(tx)
}

/// The offsite task; the sender takes the label of each new local full.
fn spawn_offsite_task(
    s3: &crate::config::S3Settings,
    runner: &backup::job::Runner,
    reports: &Arc<Reports>,
) -> mpsc::Sender<String> {
    let (tx, rx) = mpsc::channel(4);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let target = format!("s3://{}{}", s3.bucket, s3.prefix);
    let work = backup::offsite::RealOffsite {
        runner: runner.clone(),
        uploader: backup::appliance::Uploader { s3: s3.clone() },
    };
    let reports = reports.clone();
    keep_running("offsite copies", move || {
        let (work, rx, reports, target) =
            (work.clone(), rx.clone(), reports.clone(), target.clone());
        async move {
            let mut rx = rx.lock().await;
            let known = work.runner.info_all().await;
            let (pending, last_success) = known
                .map(|inventory| backup::offsite::starting_point(&inventory))
                .unwrap_or_default();
            let status = crate::status::OffsiteStatus {
                target,
                pending,
                last_success,
                ..Default::default()
            };
            backup::offsite::run(
                work,
                backup::offsite::retry_backoff(),
                backup::WallClock,
                status,
                &mut rx,
                move |status| reports.offsite(status),
            )
            .await
        }
    });
    tx
}

/// The backup and offsite tasks' last reports, published as one status.
struct Reports {
    events: mpsc::UnboundedSender<Event>,
    last: std::sync::Mutex<(
        Option<backup::BackupStatus>,
        Option<crate::status::OffsiteStatus>,
    )>,
}

impl Reports {
    fn backup(&self, status: &backup::BackupStatus) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.0 = Some(status.clone());
        self.publish(&last);
    }

    fn offsite(&self, status: &crate::status::OffsiteStatus) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.1 = Some(status.clone());
        self.publish(&last);
    }

    /// Once the backup task has reported: the offsite part waits for it.
    fn publish(
        &self,
        last: &(
            Option<backup::BackupStatus>,
            Option<crate::status::OffsiteStatus>,
        ),
    ) {
        if let Some(backup) = &last.0 {
            let mut status = backup.clone();
            status.offsite = last.1.clone();
            let _ = self.events.send(Event::Backup(Box::new(status)));
        }
    }
}

/// What a reload tells the backup task: changed schedules (every other
/// `[backup]` setting reaches pgBackRest through its generated file).
fn reschedule_backups(
    settings: Option<&crate::config::BackupSettings>,
    backups: Option<mpsc::Sender<backup::Request>>,
) -> Box<dyn Fn(&crate::config::Config) + Send> {
    let (Some(settings), Some(backups)) = (settings, backups) else {
        return Box::new(|new| {
            if new.backup.is_some() {
                tracing::warn!(
                    "[backup] was off when the supervisor started: restart it to take backups"
                );
            }
        });
    };
    let running = std::sync::Mutex::new(settings.schedules.clone());
    Box::new(move |new| {
        let Some(schedules) = new.backup.as_ref().map(|b| b.schedules.clone()) else {
            tracing::warn!("[backup] is off in the reloaded file: no more scheduled backups");
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            if backups
                .try_send(backup::Request::Reschedule(
                    backup::schedule::Timetable::new(&[]),
                ))
                .is_ok()
            {
                running.clear();
            }
            return;
        };
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        if *running == schedules {
            return;
        }
        let timetable = backup::schedule::Timetable::new(&schedules);
        match backups.try_send(backup::Request::Reschedule(timetable)) {
            Ok(()) => *running = schedules,
            Err(e) => tracing::error!(error = %e, "the backup task did not take the new schedules"),
        }
    })
}

fn ask_backup_task(
    backups: Option<&mpsc::Sender<backup::Request>>,
    request: Request,
    reply: tokio::sync::oneshot::Sender<Response>,
    progress: mpsc::UnboundedSender<String>,
) {
    let Some(backups) = backups else {
        let _ = reply.send(Response::Error(
            "backups are off here: [backup] enable = false, or PostgreSQL is not managed by this supervisor".into(),
        ));
        return;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = match request {
        Request::BackupVerify { label } => {
            backups.try_send(backup::Request::Verify { label, reply: tx })
        }
        Request::Restore(request) => backups.try_send(backup::Request::Restore {
            request,
            progress,
            reply: tx,
        }),
        Request::MigrateDatabase(request) => backups.try_send(backup::Request::Migrate {
            request,
            progress,
            reply: tx,
        }),
        Request::BackupNow { kind } => match BackupKind::parse(&kind) {
            Some(kind) => backups.try_send(backup::Request::Now { kind, reply: tx }),
            None => {
                let _ = reply.send(Response::Error(format!(
                    "`{kind}` is not a backup type: full, diff or incr"
                )));
                return;
            }
        },
        _ => {
            let (list_tx, list_rx) = tokio::sync::oneshot::channel();
            let sent = backups.try_send(backup::Request::List { reply: list_tx });
            if sent.is_ok() {
                tokio::spawn(async move {
                    let _ = reply.send(match list_rx.await {
                        Ok(Ok(inventory)) => Response::Backups(Box::new(inventory)),
                        Ok(Err(e)) => Response::Error(e),
                        Err(_) => Response::Error("the backup task stopped".into()),
                    });
                });
            } else {
                let _ = reply.send(Response::Error("the backup task is busy; try again".into()));
            }
            return;
        }
    };
    if sent.is_err() {
        let _ = reply.send(Response::Error("the backup task is busy; try again".into()));
        return;
    }
    tokio::spawn(async move {
        let _ = reply.send(match rx.await {
            Ok(Ok(done)) => Response::Ok(done),
            Ok(Err(e)) => Response::Error(e),
            Err(_) => Response::Error("the backup task stopped".into()),
        });
    });
}

/// Stops and starts services for a restore through the event loop, as
/// `phoenixctl stop` and `start` do, and waits for their state.
struct LoopServices {
    events: mpsc::UnboundedSender<Event>,
}

impl LoopServices {
    async fn ask(&self, request: Request) -> Result<Response, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::Control(request, tx))
            .map_err(|_| "the supervisor is stopping".to_string())?;
        rx.await
            .map_err(|_| "the supervisor is stopping".to_string())
    }

    async fn state(&self, service: &str) -> Option<String> {
        match self.ask(Request::Status).await {
            Ok(Response::Snapshot(s)) => s
                .services
                .iter()
                .find(|svc| svc.name == service)
                .map(|svc| svc.state.as_str().to_string()),
            _ => None,
        }
    }
}

impl backup::restore::Services for LoopServices {
    async fn set(&self, service: &str, running: bool, within: Duration) -> Result<(), String> {
        if self.state(service).await.is_none() {
            // Not managed here (say, [api] enable = false).
            return Ok(());
        }
        let request = if running {
            Request::Start {
                service: service.into(),
            }
        } else {
            Request::Stop {
                service: service.into(),
            }
        };
        if let Response::Error(e) = self.ask(request).await? {
            return Err(format!("{service}: {e}"));
        }
        let want: &[&str] = if running {
            &["ready"]
        } else {
            &["stopped", "failed", "exited"]
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let state = self.state(service).await;
            match state.as_deref() {
                Some(s) if want.contains(&s) => return Ok(()),
                None => return Ok(()),
                Some("failed") if running => {
                    return Err(format!(
                        "{service} failed to start; see `phoenixctl status` and its log"
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{service} did not become {} within {} s (it is {})",
                    want[0],
                    within.as_secs(),
                    state.unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&self, service: &str) -> bool {
        self.state(service).await.as_deref() == Some("ready")
    }

    async fn reload(&self) -> Result<(), String> {
        match self.ask(Request::Reload).await? {
            Response::Error(e) => Err(format!("reloading the config: {e}")),
            _ => Ok(()),
        }
    }
}

/// `postgres 1024MiB 1cpu, api ...`: the limits in force, shares resolved
/// against this machine, so a resize shows in the first line of the log.
fn limits_summary(config: &crate::config::Config) -> String {
    config
        .services
        .iter()
        .filter(|s| !s.limits.is_empty())
        .map(|s| {
            let mut text = s.name.clone();
            if let Some(m) = s.limits.memory {
                text += &format!(" {}MiB", m >> 20);
            }
            if let Some(c) = s.limits.cpus {
                text += &format!(" {c}cpu");
            }
            if let Some(p) = s.limits.pids {
                text += &format!(" {p}pids");
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}
