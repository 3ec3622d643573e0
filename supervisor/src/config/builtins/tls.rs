//! `[tls]`: where the API's certificate comes from (self-signed, files or
//! ACME) and the plain-HTTP listener for redirects and HTTP-01 challenges.

use std::net::SocketAddr;

use super::context::{Context, local};
use crate::config::ConfigError;
use crate::config::file::{TlsMode, TlsSection};
use crate::config::spec::*;

pub(super) fn expand(section: &TlsSection, ctx: &Context<'_>) -> Result<TlsSettings, ConfigError> {
    let (loc, state) = (ctx.loc, ctx.state);
    let acme_keys = [
        ("acme_directory", section.acme_directory.is_some()),
        ("acme_email", section.acme_email.is_some()),
        ("acme_ca", section.acme_ca.is_some()),
    ];
    if section.mode != TlsMode::Acme
        && let Some((key, _)) = acme_keys.iter().find(|(_, set)| *set)
    {
        return Err(loc.error(&["tls", key], "this key is for mode = \"acme\""));
    }
    let key_owner = ctx.api_user.clone().filter(|_| ctx.api.enabled);
    // DNS names are case-insensitive; certificates carry them in lower case.
    let hostnames: Vec<String> = section.hostnames.iter().map(|h| h.to_lowercase()).collect();
    let generated = |self_signed, acme| TlsSettings {
        cert: state.join("tls/cert.pem"),
        key: state.join("tls/key.pem"),
        self_signed,
        hostnames: hostnames.clone(),
        key_owner: key_owner.clone(),
        acme,
        http_listen: None,
        https_port: ctx.api.listen.port(),
        api_local: ctx.api.enabled.then(|| local(ctx.api.listen)),
    };
    let mut tls = match section.mode {
        TlsMode::SelfSigned | TlsMode::Acme if section.cert.is_some() || section.key.is_some() => {
            return Err(loc.error(
                &["tls", "cert"],
                "cert and key are for mode = \"files\"; the other modes keep their own in state_dir/tls",
            ));
        }
        TlsMode::SelfSigned => generated(true, None),
        TlsMode::Acme => generated(
            // A self-signed stand-in until the first certificate comes.
            true,
            Some(acme(section, ctx)?),
        ),
        TlsMode::Files => match (&section.cert, &section.key) {
            (Some(cert), Some(key)) => TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                ..generated(false, None)
            },
            _ => {
                return Err(loc.error(
                    &["tls", "mode"],
                    "mode = \"files\" needs both cert and key paths",
                ));
            }
        },
    };
    let http_listen = http_listen(section, tls.acme.is_some(), ctx)?;
    if ctx.api.enabled || tls.acme.is_some() {
        tls.http_listen = http_listen;
    }
    Ok(tls)
}

fn acme(section: &TlsSection, ctx: &Context<'_>) -> Result<AcmeSettings, ConfigError> {
    let loc = ctx.loc;
    if section.hostnames.is_empty() {
        return Err(loc.error(
            &["tls", "hostnames"],
            "mode = \"acme\" needs the names to get a certificate for, e.g. hostnames = [\"phoenix.example.com\"]",
        ));
    }
    if let Some(bad) = section.hostnames.iter().find(|h| !is_dns_name(h)) {
        return Err(loc.error(
            &["tls", "hostnames"],
            format!("{bad:?} is not a DNS name an ACME CA can validate over HTTP-01 (no IP addresses or wildcards)"),
        ));
    }
    let directory = section
        .acme_directory
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT.to_string());
    if !directory.starts_with("https://") {
        return Err(loc.error(
            &["tls", "acme_directory"],
            "the ACME directory must be an https:// URL",
        ));
    }
    if let Some(email) = &section.acme_email
        && (email.contains(char::is_whitespace) || !email.contains('@'))
    {
        return Err(loc.error(&["tls", "acme_email"], "not an email address"));
    }
    Ok(AcmeSettings {
        directory,
        email: section.acme_email.clone(),
        ca: section.acme_ca.clone(),
        account_file: ctx.secrets_dir.join("acme-account.json"),
    })
}

/// `[tls] http_listen`: `None` for "off".
fn http_listen(
    section: &TlsSection,
    acme: bool,
    ctx: &Context<'_>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let loc = ctx.loc;
    Ok(match section.http_listen.as_deref() {
        Some("off") if acme => {
            return Err(loc.error(
                &["tls", "http_listen"],
                "mode = \"acme\" answers the CA's HTTP-01 challenges on it: it cannot be \"off\"",
            ));
        }
        Some("off") => None,
        Some(text) => Some(
            text.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
                .ok_or_else(|| {
                    loc.error(
                        &["tls", "http_listen"],
                        format!("{text:?} is not an address like \"0.0.0.0:80\" (port 0 cannot be found by the CA or redirected to), nor \"off\""),
                    )
                })?,
        ),
        None => Some(
            if ctx.opts.dev {
                "127.0.0.1:8080"
            } else {
                "0.0.0.0:80"
            }
            .parse()
            .expect("valid address"),
        ),
    })
}

/// A name an ACME CA can validate with HTTP-01: dot-separated labels of
/// letters, digits and inner hyphens; not an IP address, no wildcard.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
