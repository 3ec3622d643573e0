//! Startup, serving and shutdown of the whole service.
//!
//! Shutdown is one future, [`Shutdown::requested`], observed by startup (so a
//! SIGTERM while waiting for the database exits cleanly), by the listeners
//! in [`crate::edge`] (which then stop accepting, finish in-flight requests,
//! and return) and by every background task.

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use std::sync::Arc;

use crate::{
    AppState, AuthState, agent_router, audit,
    auth::{limiter::LoginLimiter, tokens::JwtKeys, users::ensure_initial_admin},
    config::{Config, TlsFiles},
    db, edge, experiments,
    metrics::Metrics,
    router,
    shutdown::Shutdown,
};

/// On SIGHUP, load the certificate and key again: new connections get the
/// new certificate, open ones continue undisturbed. A bad pair is refused
/// and the old one keeps serving.
fn reload_tls_on_sighup(tls: RustlsConfig, files: TlsFiles) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.reload_from_pem_file(&files.cert, &files.key).await {
                Ok(()) => info!(cert = %files.cert.display(), "reloaded the TLS certificate"),
                Err(error) => {
                    warn!(%error, cert = %files.cert.display(), "TLS reload refused; the previous certificate stays")
                }
            }
        }
    });
    Ok(())
}

/// Runs the service until SIGTERM or SIGINT; `Ok` after a clean shutdown.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown =
        Shutdown::on_signals().context("could not install the SIGTERM/SIGINT handlers")?;
    let driver_config = experiments::driver::DriverConfig::from_env()?;

    let startup = async {
        let pool = db::connect(&config.database).await?;
        db::migrate(&pool).await?;
        ensure_initial_admin(&pool, config.initial_admin_password_file.as_deref()).await?;
        // Before serving: after a long stop, this month may have no partition yet.
        audit::retention::housekeep_logged(&pool).await;
        anyhow::Ok(pool)
    };
    let pool = tokio::select! {
        pool = startup => pool?,
        () = shutdown.requested() => {
            info!("stopped before the service was started");
            return Ok(());
        }
    };

    let tls = match &config.tls {
        Some(files) => Some(
            RustlsConfig::from_pem_file(&files.cert, &files.key)
                .await
                .with_context(|| {
                    format!(
                        "could not load the TLS certificate {} and key {}; both must be \
                         readable PEM files and the key must match the certificate",
                        files.cert.display(),
                        files.key.display()
                    )
                })?,
        ),
        None => None,
    };

    let metrics = std::sync::Arc::new(Metrics::new());
    metrics.set_database_up(true);
    let keys = match &config.jwt_key {
        Some(secret) => JwtKeys::from_secret(&secret.0)?,
        None => {
            warn!(
                "no --jwt-key-file: signing tokens with a random key; they stop working at restart"
            );
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            JwtKeys::from_secret(&key)?
        }
    };
    let forwarder = config
        .settings
        .remote_write_url
        .clone()
        .map(|url| crate::agents::forward::Forwarder::start(url, metrics.clone()));
    let state = AppState {
        pool: pool.clone(),
        metrics,
        auth: Arc::new(AuthState {
            keys,
            limiter: LoginLimiter::new(config.login)?,
        }),
        settings: Arc::new(config.settings.clone()),
        audit: Arc::default(),
        forwarder,
        leader: crate::singleton::spawn(config.database.connect_options.clone(), shutdown.clone()),
        recorded_groups: Arc::default(),
    };
    let app = router(state.clone(), config.http);

    let listener = std::net::TcpListener::bind(config.listen).with_context(|| {
        format!(
            "could not listen on {}; is another process using that address? \
             choose another with --listen",
            config.listen
        )
    })?;
    let listen = listener.local_addr().unwrap_or(config.listen);

    let agent_listener = match config.agent_listen {
        Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| {
            format!("could not listen on {addr} for agents; is another process using that address? choose another with --agent-listen")
        })?),
        None => None,
    };

    // In-flight requests get one request timeout to finish at shutdown.
    let grace = config.http.request_timeout;
    if let (Some(tls), Some(files)) = (&tls, &config.tls) {
        reload_tls_on_sighup(tls.clone(), files.clone())?;
    }

    let user = edge::serve(
        listener,
        tls.clone(),
        app,
        config.edge,
        shutdown.clone(),
        grace,
        "people and tools",
    );
    let agents = async {
        match agent_listener {
            Some(listener) => {
                let app = agent_router(state.clone(), config.http);
                edge::serve(
                    listener,
                    tls.clone(),
                    app,
                    config.agent_edge,
                    shutdown.clone(),
                    grace,
                    "agents",
                )
                .await
            }
            None => Ok(()),
        }
    };
    crate::agents::spawn_background(&state, &shutdown);
    audit::spawn_background(&state, &shutdown);
    tokio::spawn({
        let auth = state.auth.clone();
        async move {
            let mut ticker = tokio::time::interval(crate::auth::limiter::PRUNE_INTERVAL);
            loop {
                ticker.tick().await;
                auth.limiter.prune();
            }
        }
    });
    let driver = tokio::spawn(experiments::driver::run(
        state.clone(),
        driver_config,
        shutdown.clone(),
    ));
    let (user, agents) = tokio::join!(user, agents);
    user.with_context(|| format!("serving on {listen} failed"))?;
    agents.context("serving the agent listener failed")?;
    if let Err(error) = driver.await {
        warn!(%error, "the experiment driver ended abnormally");
    }
    // No request is left that could add a refusal.
    audit::flush_refusals(&state).await;

    pool.close().await;
    info!("stopped");
    Ok(())
}
