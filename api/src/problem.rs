//! Error responses as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error the API returns goes through [`Problem`], so clients parse one
//! shape: `type`, `title`, `status` and, when there is something to add, `detail`.

use axum::{
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Media type of a problem details body (RFC 9457 section 3).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// URI reference naming the problem type; `about:blank` when the status
    /// code says it all.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type; for `about:blank`, the status phrase.
    pub title: String,
    /// The HTTP status code, repeated for clients that lose the status line.
    pub status: u16,
    /// What went wrong with this request, for a person to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable, machine-readable error code (e.g. `invalid_credentials`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Extension members (RFC 9457 section 3.2), e.g. `allowed` transitions.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem of type `about:blank` whose title is the status phrase.
    pub fn new(status: StatusCode) -> Self {
        Self {
            problem_type: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: None,
            code: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// Names a specific problem type, with its own title.
    pub fn with_type(mut self, problem_type: impl Into<String>, title: impl Into<String>) -> Self {
        self.problem_type = problem_type.into();
        self.title = title.into();
        self
    }

    /// Adds the occurrence-specific explanation.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds the stable error code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Adds an extension member.
    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl Problem {
    /// The response, with `Retry-After: secs` (at least 1): come back then.
    pub fn retry_after(self, secs: u64) -> Response {
        let mut response = self.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.max(1).into());
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match serde_json::to_vec(&self) {
            Ok(body) => {
                (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], body).into_response()
            }
            Err(error) => {
                tracing::error!(%error, "could not serialize a problem details body");
                status.into_response()
            }
        }
    }
}

/// Turns every error response that is not yet a problem document (the
/// framework's own refusals: a body that does not parse, a wrong method, a
/// body over the limit, a request that timed out) into one, keeping the
/// status and the framework's message as the detail.
pub async fn ensure_problem(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // Problem documents and other JSON answers (a failing /health is
    // application/health+json), and the console's HTML pages, are already
    // meant for clients; the framework's own refusals are plain text.
    let meant_for_clients = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|v| v.ends_with("json") || v == "text/html");
    if !(status.is_client_error() || status.is_server_error()) || meant_for_clients {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "timeout",
        s if s.is_client_error() => "client_error",
        _ => "server_error",
    };
    let mut problem = Problem::new(status).with_code(code);
    if !detail.is_empty() {
        problem = problem.with_detail(detail);
    }
    let mut out = problem.into_response();
    // Keep headers such as Allow and Retry-After.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Fallback handler for requests that match no route.
pub async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND)
        .with_detail(format!("there is no resource at {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    #[test]
    fn serializes_the_rfc_9457_members() {
        let problem = Problem::new(StatusCode::NOT_FOUND).with_detail("no such agent");
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            json!({
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "no such agent",
            })
        );
    }

    #[test]
    fn omits_detail_when_there_is_none() {
        let problem = Problem::new(StatusCode::CONFLICT).with_type(
            "urn:phoenix:problem:invalid-transition",
            "Invalid state transition",
        );
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            json!({
                "type": "urn:phoenix:problem:invalid-transition",
                "title": "Invalid state transition",
                "status": 409,
            })
        );
    }

    #[tokio::test]
    async fn response_carries_status_and_media_type() {
        let response = not_found(Method::GET, Uri::from_static("/nope?x=1"))
            .await
            .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["detail"], "there is no resource at GET /nope");
        assert_eq!(value["status"], 404);
    }
}
