//! The error every handler returns: each variant maps to one HTTP status and
//! a stable `code`, rendered as a problem document.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{detail}")]
    Unauthorized { code: &'static str, detail: String },
    #[error("{detail}")]
    Forbidden { detail: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{detail}")]
    Conflict {
        code: &'static str,
        detail: String,
        allowed: Option<Vec<String>>,
    },
    #[error("too many attempts; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{detail}")]
    Unavailable { detail: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code,
            detail: detail.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound { what: what.into() }
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            detail: detail.into(),
            allowed: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients can match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Conflict { code, .. } => code,
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable {
                    detail: "the database is not reachable; try again shortly".into(),
                }
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::conflict(
                "already_exists",
                "a resource with the same unique name already exists",
            ),
            _ => ApiError::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut problem = Problem::new(status).with_code(self.code());
        match &self {
            ApiError::Internal(e) => {
                // The cause goes to the log, never to the client.
                let id = uuid::Uuid::new_v4();
                tracing::error!(error = ?e, %id, "internal error");
                problem =
                    problem.with_detail(format!("an internal error occurred (reference {id})"));
            }
            ApiError::Conflict {
                allowed: Some(allowed),
                ..
            } => {
                problem = problem
                    .with_detail(self.to_string())
                    .with_extension("allowed", serde_json::json!(allowed));
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                return problem
                    .with_detail(self.to_string())
                    .retry_after(*retry_after_secs);
            }
            _ => problem = problem.with_detail(self.to_string()),
        }
        problem.into_response()
    }
}
