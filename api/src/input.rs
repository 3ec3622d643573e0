//! Request input: the [`Json`], [`Query`] and [`Path`] extractors every
//! handler takes instead of axum's, and the validation of paging parameters.
//!
//! Invariant: no string from a request body, query string or path reaches a
//! handler when it holds U+0000. PostgreSQL cannot store NUL in `text` or
//! `jsonb`, and would refuse it with an error that becomes a 500; here it is
//! a 400 problem with code `invalid_text` naming the field, for every route
//! at once. Headers need no such check: HTTP does not allow NUL in them.
//!
//! Anything else these extractors leave to axum's own ones, whose refusals
//! (wrong content type, JSON that does not parse or fit, a malformed query
//! or id) keep their status and message.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// The stable code of a refused string.
pub const INVALID_TEXT: &str = "invalid_text";

/// Why an input extractor refused a request.
#[derive(Debug)]
pub enum Rejection {
    /// A string holding U+0000.
    Text(ApiError),
    /// axum's own refusal, kept as it was (a problem document on the way out).
    Framework { status: StatusCode, text: String },
}

impl Rejection {
    fn nul(field: &str) -> Self {
        Rejection::Text(ApiError::bad_request(
            INVALID_TEXT,
            format!(
                "{field} contains a NUL character (U+0000), which cannot be stored; \
                 remove it and send the request again"
            ),
        ))
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Text(error) => error.into_response(),
            Rejection::Framework { status, text } => (status, text).into_response(),
        }
    }
}

/// A request body that is not the JSON the endpoint expects is a 400 with
/// code `invalid_body`, like every other input error of the routes that
/// take their body as a `Result` (a NUL keeps its own code).
pub fn json_body<T>(body: Result<Json<T>, Rejection>) -> ApiResult<T> {
    match body {
        Ok(Json(value)) => Ok(value),
        Err(Rejection::Text(error)) => Err(error),
        Err(Rejection::Framework { text, .. }) => Err(ApiError::bad_request("invalid_body", text)),
    }
}

/// Where in a JSON value the first string (or object key) holding U+0000 is,
/// as `a.b[2].c`; `None` when there is none.
fn nul_in_json(value: &serde_json::Value) -> Option<String> {
    fn walk(value: &serde_json::Value, at: &mut String) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                let found = walk(item, at);
                if !found {
                    at.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(map) => map.iter().any(|(key, item)| {
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                if key.contains('\0') {
                    // The key itself cannot be shown; its position can.
                    at.push_str("<a key>");
                    return true;
                }
                at.push_str(key);
                let found = walk(item, at);
                if !found {
                    at.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut at = String::new();
    walk(value, &mut at).then(|| {
        if at.is_empty() {
            "the body".into()
        } else {
            format!("`{at}`")
        }
    })
}

/// A JSON body (axum's `Json`) whose strings hold no U+0000; also the JSON
/// response type, so handlers import one `Json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|r| Rejection::Framework {
                status: r.status(),
                text: r.body_text(),
            })?;
        let request = Request::from_parts(parts, Body::from(bytes.clone()));
        let axum::Json(value) = axum::Json::<T>::from_request(request, state)
            .await
            .map_err(|r| Rejection::Framework {
                status: r.status(),
                text: r.body_text(),
            })?;
        // JSON can carry NUL only as the escape `\u0000`; without it there is
        // nothing to look for, and most bodies are not parsed twice.
        if has_nul_escape(&bytes)
            && let Ok(raw) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(field) = nul_in_json(&raw)
        {
            return Err(Rejection::nul(&field));
        }
        Ok(Json(value))
    }
}

/// Whether the bytes hold the JSON escape of U+0000.
fn has_nul_escape(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| w == b"\\u0000")
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string (axum's `Query`) whose parameter names and values,
/// percent-decoded, hold no U+0000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if name.contains('\0') {
                return Err(Rejection::nul("a query parameter name"));
            }
            if value.contains('\0') {
                return Err(Rejection::nul(&format!("query parameter `{name}`")));
            }
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|r| Rejection::Framework {
                    status: r.status(),
                    text: r.body_text(),
                })?;
        Ok(Query(value))
    }
}

/// Path parameters (axum's `Path`) that, percent-decoded, hold no U+0000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        // Parameters that are not even UTF-8 are left to axum's refusal below.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await
            && let Some((name, _)) = raw.iter().find(|(_, value)| value.contains('\0'))
        {
            return Err(Rejection::nul(&format!("path parameter `{name}`")));
        }
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|r| Rejection::Framework {
                status: r.status(),
                text: r.body_text(),
            })?;
        Ok(Path(value))
    }
}

/// A page size: `limit` when given, else `default`. Outside 1 to `max` it
/// is refused (400 `invalid_limit`) rather than silently changed, so a
/// client never mistakes a short page for the end of the list.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {max} (default {default}); {n} is not"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn nul_is_found_in_values_and_keys_at_any_depth() {
        assert_eq!(nul_in_json(&json!({ "a": "fine", "b": [1, "x"] })), None);
        assert_eq!(nul_in_json(&json!("a\u{0}b")), Some("the body".into()));
        assert_eq!(
            nul_in_json(&json!({ "username": "a\u{0}b" })),
            Some("`username`".into())
        );
        assert_eq!(
            nul_in_json(&json!({ "status": { "queue": ["ok", "x\u{0}"] } })),
            Some("`status.queue[1]`".into())
        );
        assert_eq!(
            nul_in_json(&json!({ "status": { "k\u{0}": 1 } })),
            Some("`status.<a key>`".into())
        );
    }

    #[derive(Debug, Deserialize)]
    struct Login {
        username: String,
    }

    fn json_request(body: &'static str) -> Request {
        Request::post("/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn json_bodies_with_nul_are_refused_and_others_pass() {
        let refused = Json::<Login>::from_request(json_request(r#"{"username":"a\u0000b"}"#), &())
            .await
            .unwrap_err();
        let Rejection::Text(error) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::BAD_REQUEST, INVALID_TEXT)
        );
        assert!(error.to_string().contains("`username`"), "{error}");
        // An escaped backslash followed by "u0000" is six ordinary characters.
        let Json(login) =
            Json::<Login>::from_request(json_request(r#"{"username":"a\\u0000b"}"#), &())
                .await
                .unwrap();
        assert_eq!(login.username, "a\\u0000b");
        // axum's own refusals are kept.
        let missing = Json::<Login>::from_request(json_request("{}"), &())
            .await
            .unwrap_err();
        assert!(
            matches!(missing, Rejection::Framework { status, .. } if status == StatusCode::UNPROCESSABLE_ENTITY),
            "{missing:?}"
        );
    }

    #[derive(Debug, Deserialize)]
    struct Filter {
        actor: Option<String>,
    }

    #[tokio::test]
    async fn query_strings_with_nul_are_refused() {
        for uri in ["/?actor=%00", "/?actor=a%00b", "/?x%00=1"] {
            let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
            let refused = Query::<Filter>::from_request_parts(&mut parts, &()).await;
            assert!(
                matches!(&refused, Err(Rejection::Text(e)) if e.code() == INVALID_TEXT),
                "{uri}: {refused:?}"
            );
        }
        let (mut parts, ()) = Request::get("/?actor=user:alice")
            .body(())
            .unwrap()
            .into_parts();
        let Query(filter) = Query::<Filter>::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(filter.actor.as_deref(), Some("user:alice"));
    }

    #[tokio::test]
    async fn path_parameters_with_nul_are_refused() {
        use tower::ServiceExt;
        let app: axum::Router = axum::Router::new().route(
            "/things/{name}",
            axum::routing::get(|Path(name): Path<String>| async move { name }),
        );
        let call = |uri: &'static str| {
            let app = app.clone();
            async move {
                app.oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(call("/things/a%00b").await, StatusCode::BAD_REQUEST);
        assert_eq!(call("/things/ab").await, StatusCode::OK);
    }

    #[test]
    fn page_limits_out_of_range_are_refused_not_clamped() {
        assert_eq!(page_limit(None, 100, 1000).unwrap(), 100);
        assert_eq!(page_limit(Some(1), 100, 1000).unwrap(), 1);
        assert_eq!(page_limit(Some(1000), 100, 1000).unwrap(), 1000);
        for n in [0, -1, 1001, i64::MIN, i64::MAX] {
            let error = page_limit(Some(n), 100, 1000).unwrap_err();
            assert_eq!(error.code(), "invalid_limit");
            assert!(error.to_string().contains("between 1 and 1000"), "{error}");
        }
    }
}
