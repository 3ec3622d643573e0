//! The API's TLS certificate: making the self-signed one that makes
//! everything TLS from the first boot, reading what a certificate says of
//! itself, and installing a new pair. Below it, `renewal` watches the files
//! over time and `acme` obtains certificates from a CA.

pub mod acme;
pub mod renewal;

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
    let info = std::fs::read(cert).ok().and_then(|pem| inspect(&pem).ok());
    match info {
        Some(info) => info
            .not_after
            .duration_since(SystemTime::now())
            // An error: it has expired already.
            .map_or(true, |left| left < within),
        None => true,
    }
}

/// The leaf certificate (DER) of a PEM chain.
fn leaf_der(pem: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem)
        .ok()
        .map(|(_, p)| p.contents)
}

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names and IP addresses of its subjectAltName.
    pub names: Vec<String>,
    pub issuer: String,
    pub self_signed: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The first certificate of a PEM file (the leaf of a chain).
pub fn inspect(pem: &[u8]) -> anyhow::Result<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).context("not a PEM certificate")?;
    let cert = pem.parse_x509().context("not an X.509 certificate")?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => names.push(n.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        self_signed: cert.issuer() == cert.subject(),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// Whether the PEM key belongs to the PEM certificate; None when the key
/// is of a kind that cannot be read here (the API will tell).
pub fn key_matches(cert_pem: &[u8], key_pem: &[u8]) -> Option<bool> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(key_pem).ok()?).ok()?;
    Some(cert.public_key().raw == key.public_key_der().as_slice())
}

/// A new certificate chain and its key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Writes a new key and certificate so that readers always find a whole
/// file; the key first, so a certificate is never newer than its key. The
/// key's owner (the API's user) must exist: a key it cannot read would only
/// fail later, in the API.
/// Returns what the installed certificate says of itself.
pub fn install(tls: &TlsSettings, issued: &Issued) -> anyhow::Result<CertInfo> {
    let info = inspect(issued.chain_pem.as_bytes()).context("the CA's certificate")?;
    let owner = tls
        .key_owner
        .as_deref()
        .map(|name| RunAs::lookup(name).with_context(|| format!("the key's owner {name:?}")))
        .transpose()?;
    if let Some(dir) = tls.cert.parent() {
        fsafe::ensure_private_dir(dir, 0o755)?;
    }
    let owner = owner.as_ref().map(RunAs::owner);
    fsafe::write_atomic(&tls.key, issued.key_pem.as_bytes(), 0o600, owner)
        .with_context(|| format!("writing {}", tls.key.display()))?;
    fsafe::write_atomic(&tls.cert, issued.chain_pem.as_bytes(), 0o644, None)
        .with_context(|| format!("writing {}", tls.cert.display()))?;
    Ok(info)
}
