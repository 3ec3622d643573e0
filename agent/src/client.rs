//! HTTP to the control plane and to an external remote-write endpoint, with
//! every answer sorted into what the caller must do with it ([`Refusal`]).

use std::path::Path;
use std::time::Duration;

use phoenix_wire::agent::Problem;
use phoenix_wire::remote_write;
use reqwest::StatusCode;

/// How long one request may take; a long poll adds its wait.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not reached, timed out, or a 5xx/429: keep what was sent and retry.
    #[error("{0}")]
    Retry(String),
    /// The credential is revoked or unknown: stop, the agent must be
    /// enrolled again.
    #[error("the control plane refused the agent's credential ({code}): {detail}")]
    Credential { code: String, detail: String },
    /// Refused for good (4xx): retrying would be refused again.
    #[error("refused with {status} {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
}

impl Refusal {
    pub fn code(&self) -> &str {
        match self {
            Refusal::Retry(_) => "unreachable",
            Refusal::Credential { code, .. } | Refusal::Refused { code, .. } => code,
        }
    }
}

/// A client trusting `ca_file` only, or the system's roots without one.
pub fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT + Duration::from_secs(30))
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("phoenix-agent/", env!("CARGO_PKG_VERSION")))
        .https_only(false);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!("the CA file {} holds no PEM certificate: {e}", ca.display())
        })?;
        if certs.is_empty() {
            anyhow::bail!("the CA file {} holds no PEM certificate", ca.display());
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// Describes a transport error with its causes (a TLS error says which
/// certificate it did not trust).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sorts an answer: `Ok` for 2xx, otherwise the [`Refusal`], read from the
/// problem document when there is one.
pub async fn check(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, Refusal> {
    let response = response.map_err(|e| Refusal::Retry(describe(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let problem: Problem = serde_json::from_str(&text).unwrap_or_else(|_| Problem {
        status: status.as_u16(),
        code: String::new(),
        detail: text.chars().take(500).collect(),
    });
    let code = if problem.code.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace(' ', "_")
    } else {
        problem.code
    };
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return Err(Refusal::Retry(format!(
            "{status} {code}: {}",
            problem.detail
        )));
    }
    if status == StatusCode::UNAUTHORIZED
        && matches!(
            code.as_str(),
            "agent_revoked" | "invalid_credential" | "missing_credential" | "user_token_refused"
        )
    {
        return Err(Refusal::Credential {
            code,
            detail: problem.detail,
        });
    }
    Err(Refusal::Refused {
        status: status.as_u16(),
        code,
        detail: problem.detail,
    })
}

/// Sends a remote-write body with the headers of the 1.0 protocol.
pub fn remote_write_request(
    client: &reqwest::Client,
    url: reqwest::Url,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, remote_write::CONTENT_TYPE)
        .header(
            reqwest::header::CONTENT_ENCODING,
            remote_write::CONTENT_ENCODING,
        )
        .header(remote_write::VERSION_HEADER, remote_write::VERSION)
        .timeout(REQUEST_TIMEOUT)
        .body(body)
}
