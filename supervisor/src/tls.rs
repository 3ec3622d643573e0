//! The self-signed certificate that makes everything TLS from the first boot.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::config::TlsSettings;
use crate::fsafe;
use crate::process::RunAs;

/// Regenerate when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const VALIDITY_DAYS: i64 = 397;

pub fn ensure_self_signed(tls: &TlsSettings, key_owner: Option<&RunAs>) -> anyhow::Result<()> {
    if let Some(dir) = tls.cert.parent() {
        fsafe::ensure_private_dir(dir, 0o755)?;
    }
    let key_owner = key_owner.map(RunAs::owner);
    if !expires_within(&tls.cert, RENEW_BEFORE) {
        match fsafe::fix_file(&tls.key, 0o600, key_owner) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            done => return done.with_context(|| format!("TLS key {}", tls.key.display())),
        }
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(h) = host.to_str().filter(|h| !h.is_empty())
    {
        names.push(h.to_string());
    }
    names.extend(tls.hostnames.iter().cloned());
    names.sort();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Phoenix appliance (self-signed)");
    let now = time_now();
    params.not_before = now;
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let key = rcgen::KeyPair::generate().context("key generation")?;
    let cert = params.self_signed(&key).context("self-signing")?;
    fsafe::write_atomic(&tls.key, key.serialize_pem().as_bytes(), 0o600, key_owner)
        .with_context(|| format!("writing {}", tls.key.display()))?;
    fsafe::write_atomic(&tls.cert, cert.pem().as_bytes(), 0o644, None)
        .with_context(|| format!("writing {}", tls.cert.display()))?;
    tracing::info!(cert = %tls.cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// True when the certificate is missing, unreadable, or expires within
/// `within` (`Duration::ZERO`: it cannot be served now).
pub fn expires_within(cert: &Path, within: Duration) -> bool {
    let info = std::fs::read(cert)
        .ok()
        .and_then(|pem| crate::certs::inspect(&pem).ok());
    match info {
        Some(info) => info
            .not_after
            .duration_since(SystemTime::now())
            // An error: it has expired already.
            .map_or(true, |left| left < within),
        None => true,
    }
}
