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
