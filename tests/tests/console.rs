//! The web console against a real stack: its security over plain HTTP
//! requests (sessions, CSRF, headers, roles), and the whole operator's path
//! in headless Chromium through ChromeDriver — sign in, enroll an agent,
//! run, watch and promote an experiment, see the cost fall, sign out — with
//! axe-core checking every page and a screenshot of each saved under
//! `target/console-screenshots`.

use std::time::Duration;

use phoenix_tests::agents::AgentProc;
use phoenix_tests::browser::Browser;
use phoenix_tests::{Stack, wait_until};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

/// A fast experiment driver.
const CONFIG: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\" }\n";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A client that keeps no cookies and follows no redirects: each test
/// request says exactly what it sends.
fn client() -> Client {
    Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn origin(s: &Stack) -> String {
    s.ports.api_url("")
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Signs in through the form; the session cookie's value.
fn sign_in(s: &Stack, user: &str, password: &str) -> String {
    let r = client()
        .post(s.ports.api_url("/login"))
        .header("origin", origin(s))
        .form(&[("username", user), ("password", password)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text());
    let set = header(r.headers(), "set-cookie");
    set.split(';')
        .next()
        .and_then(|c| c.strip_prefix("__Host-phoenix-session="))
        .unwrap_or_else(|| panic!("no session cookie in {set}"))
        .to_owned()
}

fn page(s: &Stack, cookie: Option<&str>, path: &str) -> Response {
    let mut request = client().get(s.ports.api_url(path));
    if let Some(c) = cookie {
        request = request.header("cookie", format!("__Host-phoenix-session={c}"));
    }
    request.send().unwrap()
}

fn csrf_of(html: &str) -> String {
    let start = html
        .find(r#"<meta name="csrf-token" content=""#)
        .expect("a CSRF meta tag")
        + r#"<meta name="csrf-token" content=""#.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// Every URL in `html`'s href, src and action attributes.
fn urls(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in [
        "href=\"",
        "src=\"",
        "action=\"",
        "data-api=\"",
        "data-refresh=\"",
    ] {
        let mut rest = html;
        while let Some(i) = rest.find(attribute) {
            rest = &rest[i + attribute.len()..];
            found.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    found
}

fn assert_security_headers(r: &Response, what: &str) {
    let h = r.headers();
    assert_eq!(header(h, "content-security-policy"), CSP, "{what}");
    assert_eq!(header(h, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(h, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(h, "referrer-policy"), "same-origin", "{what}");
    assert_eq!(header(h, "cache-control"), "no-store", "{what}");
    assert!(
        header(h, "strict-transport-security").starts_with("max-age="),
        "{what}"
    );
}

#[test]
fn the_console_refuses_missing_expired_and_cross_site_sessions_and_sends_its_headers() {
    let s = Stack::start_without_pushgateway("");
    let admin_password = s.admin_password();
    let admin = s.admin_token();
    s.user_token(&admin, "victor", "viewer");

    // No session: every page sends the browser to the sign-in form.
    for path in [
        "/",
        "/agents",
        "/experiments",
        "/cost",
        "/audit",
        "/fragments/agents",
    ] {
        let r = page(&s, None, path);
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(header(r.headers(), "location"), "/login", "{path}");
        assert_security_headers(&r, path);
    }
    // A forged cookie is no session either, and is cleared.
    let r = page(&s, Some("forged-value"), "/");
    assert_eq!(r.status(), 303);
    assert_eq!(header(r.headers(), "location"), "/login?expired=1");
    assert!(header(r.headers(), "set-cookie").contains("Max-Age=0"));

    // The sign-in page: the headers, no inline script or style.
    let r = page(&s, None, "/login");
    assert_eq!(r.status(), 200);
    assert_security_headers(&r, "/login");
    let html = r.text().unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "{html}"
    );
    assert!(html.contains(r#"<html lang="en">"#));

    // Sign-in from another site is refused before the password is looked at.
    let r = client()
        .post(s.ports.api_url("/login"))
        .header("origin", "https://evil.example")
        .form(&[("username", "admin"), ("password", admin_password.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(header(r.headers(), "content-type").starts_with("text/html"));
    // A wrong password: no cookie, and the refusal is audited like the API's.
    let r = client()
        .post(s.ports.api_url("/login"))
        .header("origin", origin(&s))
        .form(&[("username", "admin"), ("password", "wrong")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().unwrap().contains("Wrong user name or password"));

    // A good one: a host-only, Secure, HttpOnly, SameSite=Strict cookie,
    // and a redirect with nothing secret in it.
    let r = client()
        .post(s.ports.api_url("/login"))
        .header("origin", origin(&s))
        .form(&[("username", "admin"), ("password", admin_password.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(header(r.headers(), "location"), "/");
    let set = header(r.headers(), "set-cookie");
    for attribute in [
        "__Host-phoenix-session=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap()["__Host-phoenix-session=".len()..].to_owned();
    let logins = s.audit(&admin, "action=auth.login&actor=user:admin");
    assert!(
        logins
            .iter()
            .any(|e| e["details"]["via"] == "console" && e["outcome"] == "success"),
        "{logins:#?}"
    );

    // Signed in: every page renders with the headers; neither the cookie
    // nor the CSRF token is ever in a URL.
    let html = page(&s, Some(&cookie), "/").text().unwrap();
    let csrf = csrf_of(&html);
    for path in ["/", "/agents", "/experiments", "/cost", "/audit"] {
        let r = page(&s, Some(&cookie), path);
        assert_eq!(r.status(), 200, "{path}");
        assert_security_headers(&r, path);
        let html = r.text().unwrap();
        assert!(!html.contains(&cookie), "{path} shows the session cookie");
        for url in urls(&html) {
            assert!(
                !url.contains(&csrf) && !url.contains(&cookie),
                "{path}: {url}"
            );
        }
    }

    // Text from users is escaped: a token's description shows as text.
    let (_, _) = s.enrollment_token(
        &admin,
        &json!({ "description": "<script>alert(1)</script>" }),
    );
    let html = page(&s, Some(&cookie), "/agents").text().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert(1)"), "{html}");

    // The cookie reads the JSON API; a change needs the CSRF token and the
    // console's own origin.
    let api = |method: reqwest::Method, path: &str| {
        client()
            .request(method, s.ports.api_url(path))
            .header("cookie", format!("__Host-phoenix-session={cookie}"))
    };
    assert_eq!(
        api(reqwest::Method::GET, "/api/v1/auth/me")
            .send()
            .unwrap()
            .status(),
        200
    );
    let new_token = json!({ "description": "from the console test" });
    let refused = [
        api(reqwest::Method::POST, "/api/v1/enrollment-tokens").json(&new_token),
        api(reqwest::Method::POST, "/api/v1/enrollment-tokens")
            .header("x-csrf-token", "not-the-token")
            .json(&new_token),
        api(reqwest::Method::POST, "/api/v1/enrollment-tokens")
            .header("x-csrf-token", &csrf)
            .header("origin", "https://evil.example")
            .json(&new_token),
        api(reqwest::Method::POST, "/api/v1/enrollment-tokens")
            .header("x-csrf-token", &csrf)
            .header("sec-fetch-site", "cross-site")
            .json(&new_token),
    ];
    for request in refused {
        let r = request.send().unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().unwrap();
        assert!(body["detail"].as_str().unwrap().contains("CSRF"), "{body}");
    }
    let tokens = s.get(Some(&admin), "/api/v1/enrollment-tokens");
    assert_eq!(
        tokens.body.as_array().unwrap().len(),
        1,
        "a refused request made a token"
    );
    let r = api(reqwest::Method::POST, "/api/v1/enrollment-tokens")
        .header("x-csrf-token", &csrf)
        .header("origin", origin(&s))
        .header("sec-fetch-site", "same-origin")
        .json(&new_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let csrf_refusals = s.audit(&admin, "action=auth.csrf");
    assert!(!csrf_refusals.is_empty(), "CSRF refusals are audited");
    let created = s.audit(&admin, "action=enrollment_tokens.create");
    assert_eq!(created[0]["actor"], "user:admin", "{created:#?}");

    // A viewer sees no button its role would be refused, nor the audit log.
    let viewer = sign_in(&s, "victor", "victor-password-123");
    for path in ["/", "/agents", "/experiments", "/cost"] {
        let html = page(&s, Some(&viewer), path).text().unwrap();
        assert!(
            !html.contains("data-api="),
            "{path} offers a viewer an action"
        );
        assert!(
            !html.contains(r#"href="/audit""#),
            "{path} links a viewer to the audit log"
        );
    }
    assert_eq!(page(&s, Some(&viewer), "/audit").status(), 403);
    let admin_experiments = page(&s, Some(&cookie), "/agents").text().unwrap();
    assert!(admin_experiments.contains(r#"data-api="/api/v1/enrollment-tokens""#));

    // Assets: hashed names, cached for a year; anything else is a 404.
    let css = urls(&html)
        .into_iter()
        .find(|u| u.ends_with(".css"))
        .unwrap();
    let r = page(&s, None, &css);
    assert_eq!(r.status(), 200);
    assert!(header(r.headers(), "cache-control").contains("immutable"));
    assert!(header(r.headers(), "content-type").starts_with("text/css"));
    let etag = header(r.headers(), "etag");
    let r = client()
        .get(s.ports.api_url(&css))
        .header("if-none-match", etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(
        page(&s, None, "/assets/console-000000000000.css").status(),
        404
    );

    // curl's defaults (HTTP/2): the sign-in page and a redirect.
    let (code, out, err) = phoenix_tests::curl(&["-sI", &s.ports.api_url("/login")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let (_, out, _) = phoenix_tests::curl(&["-sI", &s.ports.api_url("/cost")]);
    assert!(
        out.starts_with("HTTP/2 303") && out.contains("location: /login"),
        "{out}"
    );

    // Sign-out needs the CSRF token too, then ends the session for good.
    let r = client()
        .post(s.ports.api_url("/logout"))
        .header("cookie", format!("__Host-phoenix-session={viewer}"))
        .header("origin", origin(&s))
        .form(&[("csrf", "wrong")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        page(&s, Some(&viewer), "/").status(),
        200,
        "a refused sign-out ended the session"
    );
    let viewer_html = page(&s, Some(&viewer), "/").text().unwrap();
    let r = client()
        .post(s.ports.api_url("/logout"))
        .header("cookie", format!("__Host-phoenix-session={viewer}"))
        .header("origin", origin(&s))
        .form(&[("csrf", csrf_of(&viewer_html))])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(header(r.headers(), LOCATION.as_str()), "/login");
    assert!(header(r.headers(), "set-cookie").contains("Max-Age=0"));
    assert_eq!(
        header(page(&s, Some(&viewer), "/").headers(), "location"),
        "/login?expired=1"
    );

    // An expired session: pages send the browser to sign in again, and the
    // API refuses the cookie.
    s.sql("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE cookie_hash IS NOT NULL")
        .unwrap();
    let r = page(&s, Some(&cookie), "/experiments");
    assert_eq!(r.status(), 303);
    assert_eq!(header(r.headers(), "location"), "/login?expired=1");
    let r = api(reqwest::Method::GET, "/api/v1/auth/me").send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["code"], "session_expired");
    let html = page(&s, None, "/login?expired=1").text().unwrap();
    assert!(html.contains("Your session has ended"), "{html}");
}

#[test]
fn an_operator_signs_in_enrolls_an_agent_runs_and_promotes_an_experiment_in_a_browser() {
    let s = Stack::start_without_pushgateway(CONFIG);
    let admin_password = s.admin_password();
    let b = Browser::start();
    let url = |path: &str| s.ports.api_url(path);

    // Sign in.
    b.goto(&url("/experiments"));
    wait_until("the sign-in page", Duration::from_secs(10), || {
        b.url().ends_with("/login").then_some(())
    });
    b.check("01-sign-in");
    b.fill("#username", "admin");
    b.fill("#password", &admin_password);
    b.click_button("Sign in");
    assert_eq!(b.text("h1"), "Overview");
    b.wait_text("main", Duration::from_secs(10), |t| t.contains("Services"));
    assert!(!b.url().contains('?'), "{}", b.url());
    // The session cookie is out of the page's reach.
    assert_eq!(b.script("return document.cookie;"), json!(""));
    b.check("02-overview");

    // Create an enrollment token, and enroll an agent with it.
    b.goto(&url("/agents"));
    b.fill("#token-description", "the browser test's agent");
    b.click_button("Create enrollment token");
    let token = b.wait_text("output.secret", Duration::from_secs(10), |t| t.len() > 20);
    assert!(!b.url().contains(&token));
    b.check("03-enrollment-token");
    let mut agent = AgentProc::new(&s, "browser-host", &token, "");
    agent.start();
    b.wait_text("[data-refresh]", Duration::from_secs(60), |t| {
        t.contains("browser-host") && t.contains("online")
    });
    b.check("04-agent-online");

    // Create an experiment of the full-fidelity baseline against top-k.
    b.goto(&url("/experiments"));
    b.fill("#exp-name", "top-k in the browser");
    b.script(
        "const s = document.getElementById('exp-candidate');
         s.selectedIndex = [...s.options].findIndex((o) => o.text.includes('top_k_memory_10'));
         return s.selectedIndex;",
    );
    b.fill("#exp-duration", "25s");
    b.fill("#exp-reduction", "50");
    b.fill("#exp-accuracy", "95");
    b.check("05-new-experiment");
    b.click_button("Create experiment");
    wait_until("the experiment's page", Duration::from_secs(10), || {
        b.url().contains("/experiments/").then_some(())
    });
    assert_eq!(b.text("h1"), "top-k in the browser");
    b.click_button("Start");
    // Its charts fill while it runs.
    b.wait_text("#chart-series-now", Duration::from_secs(90), |t| {
        !t.contains("no data") && t.contains("baseline") && t.contains("candidate")
    });
    b.check("06-experiment-running");

    // Completed: KPIs and a recommendation; promote after confirming.
    b.wait_text("[data-refresh]", Duration::from_secs(120), |t| {
        t.contains("Recommendation: promote")
    });
    b.check("07-experiment-completed");
    b.click_button("Promote the candidate");
    let dialog = b.text("dialog#confirm p");
    assert!(dialog.contains("Promote?"), "{dialog}");
    b.screenshot("08-confirm-promote");
    b.click("dialog#confirm button[value=yes]");
    b.wait_text("[data-refresh]", Duration::from_secs(60), |t| {
        t.contains("promoted")
    });
    b.check("09-experiment-promoted");

    // The cost page shows the saving once the agent sends the promoted
    // pipeline.
    let saved = wait_until(
        "a saving on the cost page",
        Duration::from_secs(120),
        || {
            b.goto(&url("/cost"));
            let cards = b.text(".cards");
            let percent = cards
                .lines()
                .skip_while(|l| !l.contains("Saved per month"))
                .nth(2)?
                .trim_end_matches(" %")
                .parse::<f64>()
                .ok()?;
            (percent > 50.0).then_some(percent)
        },
    );
    println!("the cost page shows {saved:.1} % fewer series after the promotion");
    assert!(b.text("figure.chart").contains("after"));
    b.check("10-cost");

    // The audit log, for admins.
    b.goto(&url("/audit"));
    let log = b.text("table");
    for action in [
        "experiments.promote",
        "experiments.start",
        "enrollment_tokens.create",
        "auth.login",
    ] {
        assert!(log.contains(action), "{action} not in the audit page");
    }
    b.check("11-audit");

    // At phone width the pages fit without scrolling sideways.
    b.resize(390, 844);
    for (path, name) in [
        ("/", "12-phone-overview"),
        ("/experiments", "13-phone-experiments"),
        ("/cost", "14-phone-cost"),
    ] {
        b.goto(&url(path));
        let overflow = b.script("return document.documentElement.scrollWidth - window.innerWidth;");
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{path} is {overflow} px too wide"
        );
        b.check(name);
    }
    b.resize(1280, 1000);

    // Sign out: back to the sign-in page, and the pages are closed again.
    b.goto(&url("/"));
    b.click_button("Sign out");
    wait_until("the sign-in page", Duration::from_secs(10), || {
        b.url().ends_with("/login").then_some(())
    });
    b.goto(&url("/experiments"));
    assert!(b.url().contains("/login"), "{}", b.url());
    agent.stop();
}
