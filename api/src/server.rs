//! Startup, serving and shutdown of the whole service.
//!
//! Shutdown is one future, [`Shutdown::requested`], observed by startup (so a
//! SIGTERM while waiting for the database exits cleanly) and by the server
//! (which then stops accepting, finishes in-flight requests, and returns).

use std::net::SocketAddr;

use anyhow::Context;
use axum_server::{Handle, tls_rustls::RustlsConfig};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{info, warn};

use crate::{AppState, config::Config, db, metrics::Metrics, router};

/// Runs the service until SIGTERM or SIGINT; `Ok` after a clean shutdown.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown =
        Shutdown::on_signals().context("could not install the SIGTERM/SIGINT handlers")?;

    let startup = async {
        let pool = db::connect(&config.database).await?;
        db::migrate(&pool).await?;
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
    let state = AppState {
        pool: pool.clone(),
        metrics,
    };
    let app = router(state, config.http).into_make_service_with_connect_info::<SocketAddr>();

    let listener = std::net::TcpListener::bind(config.listen).with_context(|| {
        format!(
            "could not listen on {}; is another process using that address? \
             choose another with --listen",
            config.listen
        )
    })?;
    let listen = listener.local_addr().unwrap_or(config.listen);

    let handle = Handle::new();
    let grace = config.http.request_timeout;
    tokio::spawn({
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.requested().await;
            info!(
                grace_ms = grace.as_millis() as u64,
                "finishing in-flight requests"
            );
            handle.graceful_shutdown(Some(grace));
        }
    });

    let served = match tls {
        Some(tls) => {
            info!(%listen, "serving HTTPS");
            axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .serve(app)
                .await
        }
        None => {
            warn!(
                %listen,
                "serving plain HTTP because --tls-cert and --tls-key are not set; \
                 use this only for development or behind a TLS-terminating proxy"
            );
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(app)
                .await
        }
    };
    served.with_context(|| format!("serving on {listen} failed"))?;

    pool.close().await;
    info!("stopped");
    Ok(())
}

/// Resolves once SIGTERM or SIGINT has arrived; clones observe the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

impl Shutdown {
    /// Starts listening for SIGTERM and SIGINT; must run inside the runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (request, requested) = watch::channel(false);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            info!(signal = name, "shutdown requested");
            request.send_replace(true);
        });
        Ok(Self { requested })
    }

    pub async fn requested(&self) {
        let mut requested = self.requested.clone();
        // An error means the sender is gone, which only happens after it sent.
        let _ = requested.wait_for(|requested| *requested).await;
    }
}
