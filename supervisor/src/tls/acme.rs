//! ACME (RFC 8555) with HTTP-01 challenges, and the plain-HTTP listener
//! that answers them and redirects everything else to HTTPS.
//!
//! The account key and URL are kept in `state_dir/secrets/acme-account.json`
//! (0600), with the directory they belong to: a new directory (say, from a
//! test CA to the real one) gets a new account.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use super::Issued;
use super::renewal::Issuer;
use crate::config::AcmeSettings;
use crate::fsafe::write_atomic;

/// HTTP-01 tokens being validated, with their key authorizations.
pub type Challenges = Arc<RwLock<HashMap<String, String>>>;

/// The longest one order may take, validation included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate, then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

pub struct AcmeIssuer {
    pub settings: AcmeSettings,
    pub hostnames: Vec<String>,
    pub challenges: Challenges,
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl Issuer for AcmeIssuer {
    async fn issue(&self) -> anyhow::Result<Issued> {
        tokio::time::timeout(ORDER_TIMEOUT, self.order())
            .await
            .map_err(|_| {
                anyhow!(
                    "the order took longer than {}",
                    humantime::format_duration(ORDER_TIMEOUT)
                )
            })?
    }
}

impl AcmeIssuer {
    async fn account(&self) -> anyhow::Result<Account> {
        let s = &self.settings;
        let builder = || match &s.ca {
            Some(ca) => Account::builder_with_root(ca)
                .with_context(|| format!("[tls] acme_ca = {}", ca.display())),
            None => Account::builder().context("the system's root certificates"),
        };
        if let Ok(bytes) = std::fs::read(&s.account_file) {
            match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(stored) if stored.directory == s.directory => {
                    return builder()?
                        .from_credentials(stored.credentials)
                        .await
                        .with_context(|| format!("the ACME directory {}", s.directory));
                }
                Ok(_) => tracing::info!(
                    directory = %s.directory,
                    "the ACME directory changed: registering a new account"
                ),
                Err(e) => tracing::warn!(
                    file = %s.account_file.display(),
                    error = %e,
                    "unreadable ACME account file: registering a new account"
                ),
            }
        }
        let contact = s.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                s.directory.clone(),
                None,
            )
            .await
            .with_context(|| format!("registering an account at {}", s.directory))?;
        let stored = StoredAccount {
            directory: s.directory.clone(),
            credentials,
        };
        write_atomic(
            &s.account_file,
            &serde_json::to_vec(&stored).context("account credentials")?,
            0o600,
            None,
        )
        .with_context(|| format!("writing {}", s.account_file.display()))?;
        tracing::info!(directory = %s.directory, "registered an ACME account");
        Ok(account)
    }

    async fn order(&self) -> anyhow::Result<Issued> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .hostnames
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("placing the order")?;

        // Tokens are answered only while this order runs.
        let mut tokens = TokenGuard {
            challenges: self.challenges.clone(),
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("fetching an authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!(
                    "the authorization for {:?} is {other:?}",
                    authz.identifier()
                ),
            }
            let name = format!("{:?}", authz.identifier());
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow!("the CA offers no HTTP-01 challenge for {name}"))?;
            let token = challenge.token.clone();
            self.challenges
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    token.clone(),
                    challenge.key_authorization().as_str().to_owned(),
                );
            tokens.tokens.push(token);
            challenge
                .set_ready()
                .await
                .context("telling the CA the challenge is ready")?;
        }

        let status = order
            .poll_ready(&POLL)
            .await
            .context("waiting for validation")?;
        if status != OrderStatus::Ready {
            bail!(
                "validation failed ({status:?}): {}. The CA must reach http://<name>/.well-known/acme-challenge/ \
                 on port 80 of this machine for {}",
                problems(&mut order).await,
                self.hostnames.join(", ")
            );
        }
        drop(tokens);
        let key_pem = order.finalize().await.context("finalizing the order")?;
        let chain_pem = order
            .poll_certificate(&POLL)
            .await
            .context("downloading the certificate")?;
        Ok(Issued { chain_pem, key_pem })
    }
}

/// What the CA said about failed challenges.
async fn problems(order: &mut instant_acme::Order) -> String {
    let mut found = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                found.push(e.to_string());
            }
        }
    }
    if found.is_empty() {
        "the CA gave no reason".into()
    } else {
        found.join("; ")
    }
}

/// Forgets the order's tokens however the order ends.
struct TokenGuard {
    challenges: Challenges,
    tokens: Vec<String>,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.challenges.write() {
            for t in &self.tokens {
                map.remove(t);
            }
        }
    }
}

#[derive(Clone)]
struct HttpState {
    challenges: Challenges,
    https_port: Arc<AtomicU16>,
}

/// Port 80: `/.well-known/acme-challenge/<token>` for the CA, and a
/// permanent redirect to the same path over HTTPS for everything else.
pub fn http_router(challenges: Challenges, https_port: Arc<AtomicU16>) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .fallback(redirect)
        .with_state(HttpState {
            challenges,
            https_port,
        })
}

async fn challenge(State(st): State<HttpState>, Path(token): Path<String>) -> Response {
    match st
        .challenges
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&token)
    {
        Some(key_authorization) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such challenge\n").into_response(),
    }
}

async fn redirect(State(st): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_without_port);
    let Some(host) = host else {
        return (
            StatusCode::BAD_REQUEST,
            "this address serves HTTPS only; send a Host header to be redirected\n",
        )
            .into_response();
    };
    let port = match st.https_port.load(Ordering::Relaxed) {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

/// `name`, `name:port`, `[v6]` or `[v6]:port` → the host part, if it is
/// made of characters a host name or address can have.
fn host_without_port(host: &str) -> Option<&str> {
    let bare = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.split(':').next()?
    };
    let ok = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then_some(bare)
}

/// Serves the plain-HTTP listener for the life of the process. A busy or
/// forbidden port is retried with backoff rather than stopping anything:
/// `report` is called with why it cannot listen, for the certificate's
/// status, and with None once it listens.
pub async fn serve_http(addr: SocketAddr, app: Router, report: impl Fn(Option<String>)) {
    let mut attempt = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                report(None);
                tracing::info!(%addr, "plain HTTP: ACME challenges and redirect to HTTPS");
                return crate::listen::serve_http("plain HTTP", listener, app).await;
            }
            Err(e) => {
                let delay = super::renewal::RETRY
                    .delay(attempt)
                    .min(Duration::from_secs(300));
                attempt = attempt.saturating_add(1);
                let why = format!("cannot listen on {addr} ([tls] http_listen): {e}");
                if attempt == 1 {
                    tracing::warn!(error = %why, "no ACME challenges or HTTPS redirect until it can; retrying");
                }
                report(Some(why));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_odd_ones_are_refused() {
        assert_eq!(
            host_without_port("phoenix.example.com"),
            Some("phoenix.example.com")
        );
        assert_eq!(
            host_without_port("phoenix.example.com:80"),
            Some("phoenix.example.com")
        );
        assert_eq!(host_without_port("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        assert_eq!(host_without_port("[2001:db8::1]"), Some("[2001:db8::1]"));
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("evil.com/x"), None);
        assert_eq!(host_without_port("a b"), None);
        assert_eq!(host_without_port("[::1"), None);
    }
}
