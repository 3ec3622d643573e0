//! systemd readiness notification (`Type=notify`); a no-op elsewhere.

fn send(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(false, state)
    {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Start-up settled; `status` says whether everything is up.
pub fn ready_with(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

pub fn ready() {
    ready_with("all services ready");
}

pub fn reloading() {
    send(&[sd_notify::NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping]);
}
