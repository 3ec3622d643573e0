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
    /// A 503 or 429 that said when to come back (`Retry-After` in seconds):
    /// keep what was sent and retry no sooner.
    #[error("{why}; asked to retry in {} s", after.as_secs())]
    Later { why: String, after: Duration },
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

/// The longest `Retry-After` honoured; a larger one is taken as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl Refusal {
    /// How long to wait before trying again, given the caller's own
    /// backoff delay: a `Retry-After` plus the backoff (so that agents
    /// told the same delay do not all come back at once), else the backoff.
    pub fn retry_in(&self, backoff: Duration) -> Duration {
        match self {
            Refusal::Later { after, .. } => *after + backoff,
            _ => backoff,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            Refusal::Retry(_) | Refusal::Later { .. } => "unreachable",
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
    // Seconds only: the HTTP-date form is not worth a clock comparison here.
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
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
        let why = format!("{status} {code}: {}", problem.detail);
        return Err(match retry_after {
            Some(after)
                if status == StatusCode::SERVICE_UNAVAILABLE
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Refusal::Later { why, after }
            }
            _ => Refusal::Retry(why),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(status: u16, retry_after: Option<&str>) -> Refusal {
        let mut response = axum::http::Response::builder().status(status);
        if let Some(v) = retry_after {
            response = response.header("retry-after", v);
        }
        let body = format!(r#"{{"status":{status},"code":"remote_write_busy","detail":"behind"}}"#);
        let response = reqwest::Response::from(response.body(body).unwrap());
        check(Ok(response)).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_retry_after_is_waited_for_on_top_of_the_backoff() {
        let backoff = Duration::from_secs(1);
        let busy = answer(503, Some("5")).await;
        assert!(matches!(busy, Refusal::Later { .. }), "{busy:?}");
        assert_eq!(busy.retry_in(backoff), Duration::from_secs(6));
        assert!(busy.to_string().contains("remote_write_busy"), "{busy}");
        let limited = answer(429, Some(" 2 ")).await;
        assert_eq!(limited.retry_in(backoff), Duration::from_secs(3));
        // Bounded, and only as seconds.
        let far = answer(503, Some("86400")).await;
        assert_eq!(far.retry_in(backoff), MAX_RETRY_AFTER + backoff);
        for plain in [
            answer(503, None).await,
            answer(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")).await,
            answer(502, Some("5")).await,
        ] {
            assert!(matches!(plain, Refusal::Retry(_)), "{plain:?}");
            assert_eq!(plain.retry_in(backoff), backoff);
        }
        // A refusal for good stays one, whatever it says about retrying.
        let refused = answer(400, Some("5")).await;
        assert!(matches!(refused, Refusal::Refused { .. }), "{refused:?}");
    }
}
