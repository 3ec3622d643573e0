//! Console sessions in the browser: a random token in an `HttpOnly`,
//! `Secure`, `SameSite=Strict` cookie with the `__Host-` prefix (no
//! `Domain`, `Path=/`), stored server-side only as its SHA-256 hash.
//!
//! A request authenticated by the cookie that changes anything must also
//! carry the session's CSRF token in the `X-CSRF-Token` header (or the
//! `csrf` form field), and must not come from another site (`Origin` and
//! `Sec-Fetch-Site`). The CSRF token is derived from the cookie, so
//! knowing it does not reveal the cookie, and it is never put in a URL.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header, request::Parts};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie's name; the `__Host-` prefix makes browsers refuse it unless
/// it is `Secure`, has `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-phoenix-session";
/// The header a script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a console sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session token in the request's cookies, if any.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE && !c.value().is_empty())
        .map(|c| c.value().to_owned())
}

/// The CSRF token of the session whose cookie holds `token`.
pub fn csrf_token(token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"phoenix console csrf\0");
    hash.update(token.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// Whether `presented` is the CSRF token of the session `token`, compared
/// in constant time.
pub fn csrf_matches(token: &str, presented: &str) -> bool {
    csrf_token(token)
        .as_bytes()
        .ct_eq(presented.trim().as_bytes())
        .into()
}

/// `Set-Cookie` for a new session.
pub fn set_session(token: &str) -> HeaderValue {
    cookie_header(token, SESSION_TTL)
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session() -> HeaderValue {
    cookie_header("", Duration::ZERO)
}

fn cookie_header(value: &str, max_age: Duration) -> HeaderValue {
    let cookie = Cookie::build((COOKIE, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of URL-safe characters")
}

/// Methods that change nothing, and so need no CSRF token.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a request another site made: `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` that is not this host over HTTPS. Browsers
/// send at least one of them on every cross-site POST; a request with
/// neither is not from a browser and must still carry the CSRF token.
pub fn same_origin(parts: &Parts) -> Result<(), &'static str> {
    let headers = &parts.headers;
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err("cross_site");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let expected = host.map(|h| format!("https://{h}"));
        if expected.as_deref().map(str::as_bytes) != Some(origin.as_bytes()) {
            return Err("cross_origin");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::post("/api/v1/experiments");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_cookie_is_host_only_secure_http_only_and_strict() {
        let set = set_session("abc").to_str().unwrap().to_owned();
        for attribute in [
            "__Host-phoenix-session=abc",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=43200",
        ] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        assert!(!set.contains("Domain"), "{set}");
        assert!(clear_session().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_session_token_is_read_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-phoenix-session=tok; b=2"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("tok"));
        let mut other = HeaderMap::new();
        other.append(
            header::COOKIE,
            HeaderValue::from_static("phoenix-session=tok; __Host-phoenix-session="),
        );
        assert_eq!(session_token(&other), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let token = csrf_token("one");
        assert!(csrf_matches("one", &token));
        assert!(!csrf_matches("two", &token));
        assert!(!csrf_matches("one", ""));
        assert!(!token.contains("one"));
    }

    #[test]
    fn cross_site_requests_are_refused_and_same_origin_ones_pass() {
        assert_eq!(
            same_origin(&parts(&[
                ("host", "ph.example:8443"),
                ("origin", "https://ph.example:8443"),
                ("sec-fetch-site", "same-origin")
            ])),
            Ok(())
        );
        assert_eq!(
            same_origin(&parts(&[
                ("host", "ph.example"),
                ("sec-fetch-site", "cross-site")
            ])),
            Err("cross_site")
        );
        assert_eq!(
            same_origin(&parts(&[
                ("host", "ph.example"),
                ("sec-fetch-site", "same-site")
            ])),
            Err("cross_site")
        );
        assert_eq!(
            same_origin(&parts(&[
                ("host", "ph.example"),
                ("origin", "https://evil.example")
            ])),
            Err("cross_origin")
        );
        assert_eq!(
            same_origin(&parts(&[
                ("host", "ph.example"),
                ("origin", "http://ph.example")
            ])),
            Err("cross_origin")
        );
        assert_eq!(
            same_origin(&parts(&[("host", "ph.example"), ("origin", "null")])),
            Err("cross_origin")
        );
        assert_eq!(same_origin(&parts(&[("host", "ph.example")])), Ok(()));
    }
}
