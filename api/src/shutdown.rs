//! The one shutdown signal of the service: a leaf, so that the server that
//! starts the background tasks and the tasks that watch for the end need not
//! know each other.

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::info;

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
