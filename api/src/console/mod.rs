//! The web console at `/` on the user listener: server-rendered HTML (maud,
//! escaped by construction), a small embedded script and style sheet, and
//! charts drawn as inline SVG ([`svg`]).
//!
//! Sign-in makes a console session ([`crate::auth::cookie`]): a cookie the
//! page's script cannot read, sent to this site only. Pages read through
//! the same handlers as the JSON API, with the caller's role; every change
//! is a `fetch` by the script to a JSON API route, with the session's CSRF
//! token, so it meets the same roles, checks and audit. A viewer is shown
//! no button its role would be refused.
//!
//! Every console response carries a strict Content-Security-Policy (scripts
//! and styles from this origin only, no inline code, no framing) and is not
//! cached; the hashed assets are cached for a year.

pub mod assets;
mod pages;
pub mod svg;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::auth::caller::ClientIp;
use crate::auth::{Caller, Role, cookie, routes as auth_routes};
use crate::error::ApiError;

/// The console's Content-Security-Policy: nothing but this origin's own
/// script, style and requests; no inline script or style; no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes; merged into the user listener's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/agents", get(pages::agents))
        .route("/experiments", get(pages::experiments))
        .route("/experiments/{id}", get(pages::experiment))
        .route("/experiments/{id}/live", get(pages::experiment_live))
        .route("/cost", get(pages::cost))
        .route("/audit", get(pages::audit))
        .route("/fragments/overview", get(pages::overview_live))
        .route("/fragments/agents", get(pages::agents_live))
        .layer(middleware::from_fn(security_headers))
        .route("/assets/{name}", get(assets::serve))
}

/// Security headers on every console page and fragment.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the
        // console's own form posts, which the same-origin check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    response
}

/// A signed-in console user: the session cookie's [`Caller`], and the CSRF
/// token the page hands its script. Pages without one redirect to the
/// sign-in page; a bearer token does not sign in to the console.
pub struct Signed {
    pub caller: Caller,
    pub csrf: String,
}

/// Where a page without a valid session sends the browser.
pub struct SignIn(&'static str);

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        Redirect::to(self.0).into_response()
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        parts.headers.remove(header::AUTHORIZATION);
        let Some(token) = cookie::session_token(&parts.headers) else {
            return Err(SignIn("/login").into_response());
        };
        match Caller::from_request_parts(parts, state).await {
            Ok(caller) => Ok(Signed {
                caller,
                csrf: cookie::csrf_token(&token),
            }),
            Err(ApiError::Unauthorized { .. }) => Err((
                [(header::SET_COOKIE, cookie::clear_session())],
                SignIn("/login?expired=1"),
            )
                .into_response()),
            Err(other) => Err(error_page(&other)),
        }
    }
}

/// The navigation's pages: path, label, and the least role that sees it.
const NAV: [(&str, &str, Role); 5] = [
    ("/", "Overview", Role::Viewer),
    ("/agents", "Agents", Role::Viewer),
    ("/experiments", "Experiments", Role::Viewer),
    ("/cost", "Cost", Role::Viewer),
    ("/audit", "Audit log", Role::Admin),
];

/// The page around `content`; `current` is the navigation entry to mark.
pub fn layout(signed: Option<&Signed>, title: &str, current: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = signed {
                    meta name="csrf-token" content=(s.csrf);
                }
                title { (title) " · Phoenix" }
                link rel="stylesheet" href=(assets::CSS.path);
                script src=(assets::JS.path) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                @if let Some(s) = signed {
                    header class="top" {
                        a class="brand" href="/" { "Phoenix" }
                        nav aria-label="Main" {
                            ul {
                                @for (path, label, role) in NAV {
                                    @if s.caller.role >= role {
                                        li {
                                            @if path == current {
                                                a href=(path) aria-current="page" { (label) }
                                            } @else {
                                                a href=(path) { (label) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        form class="who" method="post" action="/logout" {
                            span { (s.caller.username) " (" (s.caller.role.as_str()) ")" }
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" class="secondary" { "Sign out" }
                        }
                    }
                }
                main id="main" { (content) }
                dialog id="confirm" aria-labelledby="confirm-title" {
                    form method="dialog" {
                        h2 id="confirm-title" { "Please confirm" }
                        p {}
                        div class="actions" {
                            button value="yes" { "Confirm" }
                            button value="no" class="secondary" { "Cancel" }
                        }
                    }
                }
            }
        }
    }
}

/// A page for an error a handler returned.
pub fn error_page(error: &ApiError) -> Response {
    let status = error.status();
    let detail = match error {
        // Internal details go to the log, not to the page.
        ApiError::Internal(e) => {
            tracing::error!(error = %e, "console page failed");
            "something went wrong on the server; the log has the details".to_owned()
        }
        other => other.to_string(),
    };
    let body = layout(
        None,
        "Error",
        "",
        html! {
            h1 { "Sorry" }
            p class="error" { (detail) }
            p { a href="/" { "Back to the overview" } }
        },
    );
    (status, Html(body)).into_response()
}

/// An HTML response.
pub struct Html(pub Markup);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            self.0.into_string(),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

fn login_form(message: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        "",
        html! {
            div class="login" {
                h1 { "Sign in to Phoenix" }
                @if let Some(m) = message {
                    p class="error" role="alert" { (m) }
                }
                form class="stack" method="post" action="/login" {
                    label for="username" { "User name" }
                    input id="username" name="username" autocomplete="username" required maxlength="64";
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// `GET /login`: the sign-in form, or the overview when already signed in.
async fn login_page(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
    mut parts: Parts,
) -> Response {
    if cookie::session_token(&parts.headers).is_some()
        && Signed::from_request_parts(&mut parts, &state).await.is_ok()
    {
        return Redirect::to("/").into_response();
    }
    let message = q
        .expired
        .map(|_| "Your session has ended. Please sign in again.");
    Html(login_form(message)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// `POST /login`: checks the password like `POST /api/v1/auth/login` (the
/// same rate limits and audit) and starts a console session.
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(reason) = cookie::same_origin(&parts) {
        tracing::info!(reason, "refused a sign-in posted from another site");
        return (
            StatusCode::FORBIDDEN,
            Html(login_form(Some("Sign in from the console's own page."))),
        )
            .into_response();
    }
    let form = match axum::Form::<LoginForm>::from_request(Request::from_parts(parts, body), &state)
        .await
    {
        Ok(axum::Form(form)) => form,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Html(login_form(Some("Enter a user name and a password."))),
            )
                .into_response();
        }
    };
    let user = match auth_routes::authenticate(&state, ip, &form.username, form.password).await {
        Ok(user) => user,
        Err(error) => {
            let (status, message) = match &error {
                ApiError::TooManyRequests { retry_after_secs } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Too many attempts. Try again in {retry_after_secs} s."),
                ),
                ApiError::Unauthorized { .. } | ApiError::BadRequest { .. } => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong user name or password, or the user is disabled.".to_owned(),
                ),
                other => return error_page(other),
            };
            return (status, Html(login_form(Some(&message)))).into_response();
        }
    };
    match auth_routes::open_console_session(&state, &user, ip).await {
        Ok(token) => (
            [(header::SET_COOKIE, cookie::set_session(&token))],
            Redirect::to("/"),
        )
            .into_response(),
        Err(error) => error_page(&error),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends the console session (a form post: its CSRF token
/// comes in the body) and clears the cookie.
async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let form =
        axum::Form::<LogoutForm>::from_request(Request::from_parts(parts.clone(), body), &state)
            .await
            .map(|axum::Form(f)| f.csrf)
            .unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&form) {
        parts.headers.insert(cookie::CSRF_HEADER, value);
    }
    parts.headers.remove(header::AUTHORIZATION);
    let clear = [(header::SET_COOKIE, cookie::clear_session())];
    match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => match auth_routes::end_session(&state, &caller).await {
            Ok(()) => (clear, Redirect::to("/login")).into_response(),
            Err(error) => error_page(&error),
        },
        Err(ApiError::Unauthorized { .. }) => (clear, Redirect::to("/login")).into_response(),
        Err(error) => error_page(&error),
    }
}
