//! The loop in paused (virtual) time: its timing, with a service whose
//! program has vanished, so that every start fails and only timers drive
//! it; and what it publishes of the statuses other tasks send.

use super::*;
use std::path::Path;

async fn control(tx: &mpsc::UnboundedSender<Event>, request: Request) -> Response {
    let (reply, rx) = oneshot::channel();
    tx.send(Event::Control(request, reply)).unwrap();
    rx.await.unwrap()
}

async fn status(tx: &mpsc::UnboundedSender<Event>) -> Snapshot {
    match control(tx, Request::Status).await {
        Response::Snapshot(s) => *s,
        other => panic!("{other:?}"),
    }
}

async fn start_loop(toml: &str) -> (mpsc::UnboundedSender<Event>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = [
        &format!("[supervisor]\nstate_dir = \"{d}/s\"\nrun_dir = \"{d}/r\"\nlog_dir = \"{d}/l\"\n"),
        "[postgres]\nenable = false\nexternal_url = \"postgres://x@h/x\"\n",
        "[prometheus]\nenable = false\n[pushgateway]\nenable = false\n[api]\nenable = false\n",
        toml,
    ]
    .concat();
    let opts = LoadOptions {
        dev: false,
        root: false,
        cwd: dir.path().into(),
        exe_dir: "/nonexistent".into(),
        users: None,
        key_files: None,
        machine: config::Machine {
            memory: 4 << 30,
            cpus: 2,
        },
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
        reloaded: Box::new(|_| {}),
    };
    let (sup, _snapshot) = Supervisor::new(config, prepare::Prepared::default(), ctx, tx.clone());
    tokio::spawn(sup.run(rx));
    (tx, dir)
}

/// The service `gone`, whose program does not exist, with these restart
/// settings (the inside of the `restart` table).
fn gone(restart: &str) -> String {
    format!("[services.gone]\ncommand = [\"/nonexistent/program\"]\nrestart = {{ {restart} }}\n")
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
    let restart = "initial_delay = \"1s\", max_delay = \"8s\", jitter = 0.0, start_limit = { burst = 4, interval = \"1m\" }";
    let (tx, _dir) = start_loop(&gone(restart)).await;
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
    let restart = "initial_delay = \"10s\", max_delay = \"10s\", jitter = 0.0, start_limit = { burst = 2, interval = \"5s\" }";
    let (tx, _dir) = start_loop(&gone(restart)).await;
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
    let restart = "initial_delay = \"1s\", jitter = 0.0, start_limit = { burst = 1, interval = \"1h\", cool_down = \"2h\" }";
    let (tx, _dir) = start_loop(&gone(restart)).await;
    wait_for_state(&tx, "gone", State::Failed).await;
    // Parked: an hour of virtual time (inside the cool-down) brings no new attempt.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let svc = wait_for_state(&tx, "gone", State::Failed).await;
    assert_eq!(svc.restarts, 0);
    let start = Request::Start {
        service: "gone".into(),
    };
    assert!(matches!(control(&tx, start).await, Response::Ok(_)));
    let svc = wait_for_state(&tx, "gone", State::Failed).await;
    assert!(svc.last_error.unwrap().contains("parked"));
}

#[tokio::test(start_paused = true)]
async fn parked_service_is_started_again_after_a_doubling_cool_down() {
    let t0 = Instant::now();
    let restart = "initial_delay = \"1s\", jitter = 0.0, start_limit = { burst = 1, interval = \"1h\", cool_down = \"5m\", cool_down_max = \"12m\" }";
    let (tx, _dir) = start_loop(&gone(restart)).await;
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
        &[
            "[services.up]\ncommand = [\"/bin/sleep\", \"3600\"]\n",
            "liveness = { tcp = \"127.0.0.1:1\", interval = \"1h\", failures = 2 }\n",
            "[services.slow]\ncommand = [\"/bin/sleep\", \"3600\"]\n",
            "readiness = { tcp = \"127.0.0.1:1\", interval = \"10s\", start_timeout = \"1s\" }\n",
        ]
        .concat(),
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
    let (tx, _dir) = start_loop(&gone("initial_delay = \"1h\", max_delay = \"1h\"")).await;
    wait_for_state(&tx, "gone", State::Backoff).await;
    let t0 = Instant::now();
    tx.send(Event::Signal(libc::SIGTERM)).unwrap();
    // The loop ends: the channel closes once the receiver is dropped.
    while !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// The statuses of the certificate task, the plain-HTTP listener and the
/// capacity checks reach the snapshot only through their events.
#[tokio::test(start_paused = true)]
async fn task_statuses_arrive_in_events_and_are_published_merged() {
    let (tx, _dir) = start_loop("").await;
    let busy = PlainHttpStatus {
        listen: "0.0.0.0:80".into(),
        error: Some("cannot listen on 0.0.0.0:80 ([tls] http_listen): in use".into()),
    };
    tx.send(Event::PlainHttp(busy.clone())).unwrap();
    assert_eq!(status(&tx).await.certificate, None, "before the first look");

    let looked = CertificateStatus {
        mode: "self-signed".into(),
        names: vec!["localhost".into()],
        ..CertificateStatus::default()
    };
    let certificate = |renewed| Event::Certificate {
        status: Box::new(looked.clone()),
        renewed,
    };
    tx.send(certificate(false)).unwrap();
    let shown = status(&tx).await.certificate.expect("shown after a look");
    assert_eq!(shown.names, looked.names);
    assert_eq!(shown.http_listen.as_deref(), Some("0.0.0.0:80"));
    assert_eq!(shown.http_error, busy.error);

    tx.send(Event::PlainHttp(PlainHttpStatus {
        error: None,
        ..busy
    }))
    .unwrap();
    tx.send(certificate(true)).unwrap();
    let shown = status(&tx).await.certificate.unwrap();
    assert_eq!(
        (shown.mode.as_str(), shown.http_error),
        ("self-signed", None)
    );

    let cpu = ScalingStatus {
        trigger: "cpu".into(),
        level: crate::status::Level::Warning,
        value: Some(75.0),
        unit: "%".into(),
        warning: 70.0,
        critical: 85.0,
        since_ms: 0,
        error: None,
        recommendation: None,
        alerts: 1,
        last_alert_ms: None,
    };
    tx.send(Event::Scaling(vec![cpu.clone()])).unwrap();
    assert_eq!(status(&tx).await.scaling, [cpu]);
}
