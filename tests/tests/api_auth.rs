//! The API's authentication, authorization and audit, end to end on a real
//! stack: login, refresh rotation and reuse detection, logout, forged and
//! expired tokens, roles, users, rate limits, the audit log, OpenAPI, TLS reload.

use std::net::IpAddr;
use std::time::Duration;

use phoenix_tests::{Stack, https_from, wait_until};

use serde_json::{Value, json};

#[test]
fn login_refresh_rotation_reuse_and_logout() {
    let s = Stack::start("");
    use std::os::unix::fs::PermissionsExt;
    let pw_file = s.sup.path("state/secrets/initial-admin-password");
    assert_eq!(
        std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let wrong = s.login_attempt("admin", "admin123");
    assert_eq!(
        (wrong.status, wrong.code()),
        (401, "invalid_credentials"),
        "no default password: {wrong:?}"
    );
    assert_eq!(wrong.headers["content-type"], "application/problem+json");
    let unknown = s.login_attempt("nobody", "whatever-password");
    assert_eq!(unknown.status, 401);

    let login = s.login_attempt("admin", &s.admin_password());
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 900);
    assert_eq!(login.body["refresh_expires_in"], 7 * 24 * 3600);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let refresh1 = login.body["refresh_token"].as_str().unwrap().to_string();
    let me = s.get(Some(&access), "/api/v1/auth/me");
    assert_eq!(
        (
            me.status,
            me.body["username"].as_str(),
            me.body["role"].as_str()
        ),
        (200, Some("admin"), Some("admin"))
    );

    // Rotation: each refresh token works once and yields a new one.
    let r2 = s.post(
        None,
        "/api/v1/auth/refresh",
        &json!({ "refresh_token": refresh1 }),
    );
    assert_eq!(r2.status, 200, "{r2:?}");
    let refresh2 = r2.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);
    let access2 = r2.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(s.get(Some(&access2), "/api/v1/auth/me").status, 200);

    // Reuse of the first token revokes the whole family.
    let reuse = s.post(
        None,
        "/api/v1/auth/refresh",
        &json!({ "refresh_token": refresh1 }),
    );
    assert_eq!(
        (reuse.status, reuse.code()),
        (401, "refresh_reused"),
        "{reuse:?}"
    );
    let after = s.post(
        None,
        "/api/v1/auth/refresh",
        &json!({ "refresh_token": refresh2 }),
    );
    assert_eq!(
        (after.status, after.code()),
        (401, "session_revoked"),
        "{after:?}"
    );
    let revoked = s.get(Some(&access2), "/api/v1/auth/me");
    assert_eq!((revoked.status, revoked.code()), (401, "token_revoked"));
    assert_eq!(
        s.get(Some(&access), "/api/v1/auth/me").status,
        401,
        "same session"
    );

    // Logout revokes at once.
    let token = s.admin_token();
    assert_eq!(
        s.post(Some(&token), "/api/v1/auth/logout", &json!({}))
            .status,
        204
    );
    let out = s.get(Some(&token), "/api/v1/auth/me");
    assert_eq!((out.status, out.code()), (401, "token_revoked"));

    let admin = s.admin_token();
    let entries = s.audit(&admin, "action=auth.");
    let has = |action: &str, outcome: &str, reason: Option<&str>| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["outcome"] == outcome
                && reason.is_none_or(|r| e["details"]["reason"] == r)
                && e["source_ip"] == "127.0.0.1"
        })
    };
    assert!(
        has("auth.login", "denied", Some("invalid_credentials")),
        "{entries:#?}"
    );
    assert!(has("auth.login", "success", None));
    assert!(has("auth.refresh", "success", None));
    assert!(has("auth.refresh", "denied", Some("refresh_reused")));
    assert!(has("auth.logout", "success", None));
    assert!(has("auth.token", "denied", Some("token_revoked")));
}

fn jwt_key(s: &Stack) -> Vec<u8> {
    std::fs::read_to_string(s.sup.path("state/secrets/jwt-key"))
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

#[test]
fn forged_expired_and_malformed_tokens_are_refused_and_audited() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let me = s.get(Some(&admin), "/api/v1/auth/me");
    let user_id = me.body["id"].as_str().unwrap().to_string();
    // The session id of a live token, to forge on top of.
    let payload: Value =
        serde_json::from_slice(&b64::decode(admin.split('.').nth(1).unwrap())).unwrap();
    let sid = payload["sid"].as_str().unwrap().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |exp: i64| json!({ "sub": user_id, "sid": sid, "iss": "phoenix", "typ": "access", "iat": now - 10, "exp": exp, "jti": uuid::Uuid::new_v4() });
    let sign = |key: &[u8], c: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            c,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };

    let cases: Vec<(String, &str)> = vec![
        (String::new(), "missing_token"),
        ("garbage".into(), "token_invalid"),
        (
            format!(
                "{}.{}.",
                b64::encode(br#"{"alg":"none","typ":"JWT"}"#),
                b64::encode(claims(now + 600).to_string().as_bytes())
            ),
            "token_invalid",
        ),
        (
            sign(b"an attacker's key that is 32 bytes!", &claims(now + 600)),
            "token_signature",
        ),
        (sign(&jwt_key(&s), &claims(now - 60)), "token_expired"),
        (
            sign(
                &jwt_key(&s),
                &json!({ "sub": user_id, "sid": uuid::Uuid::new_v4(), "iss": "phoenix", "typ": "access", "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4() }),
            ),
            "token_revoked",
        ),
        (
            sign(
                &jwt_key(&s),
                &json!({ "sub": user_id, "sid": sid, "iss": "phoenix", "typ": "refresh", "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4() }),
            ),
            "token_invalid",
        ),
    ];
    for (token, expected) in &cases {
        let r = if token.is_empty() {
            s.get(None, "/api/v1/users")
        } else {
            s.get(Some(token), "/api/v1/users")
        };
        assert_eq!(
            (r.status, r.code()),
            (401, *expected),
            "token {token:?}: {r:?}"
        );
    }
    // A correctly signed, unexpired token for the live session works: the key is the real one.
    assert_eq!(
        s.get(
            Some(&sign(&jwt_key(&s), &claims(now + 600))),
            "/api/v1/users"
        )
        .status,
        200
    );

    let denied = s.audit(&admin, "action=auth.token&outcome=denied");
    for reason in [
        "token_invalid",
        "token_signature",
        "token_expired",
        "token_revoked",
    ] {
        assert!(
            denied.iter().any(|e| e["details"]["reason"] == reason),
            "{reason} not audited: {denied:#?}"
        );
    }
}

#[test]
fn roles_users_injection_and_audit() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let operator = s.user_token(&admin, "olivia", "operator");
    let viewer = s.user_token(&admin, "victor", "viewer");

    for token in [&operator, &viewer] {
        let r = s.get(Some(token), "/api/v1/users");
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
        assert_eq!(s.get(Some(token), "/api/v1/audit").status, 403);
        let r = s.post(
            Some(token),
            "/api/v1/users",
            &json!({ "username": "mallory", "password": "mallory-password-1", "role": "admin" }),
        );
        assert_eq!(r.status, 403);
    }
    assert_eq!(
        s.get(Some(&viewer), "/api/v1/auth/me").body["role"],
        "viewer"
    );

    let dup = s.post(
        Some(&admin),
        "/api/v1/users",
        &json!({ "username": "OLIVIA", "password": "another-password-1", "role": "viewer" }),
    );
    assert_eq!(
        (dup.status, dup.code()),
        (409, "user_exists"),
        "user names are case-insensitive: {dup:?}"
    );
    let weak = s.post(
        Some(&admin),
        "/api/v1/users",
        &json!({ "username": "weak", "password": "short", "role": "viewer" }),
    );
    assert_eq!((weak.status, weak.code()), (400, "weak_password"));
    let bad_role = s.post(
        Some(&admin),
        "/api/v1/users",
        &json!({ "username": "x", "password": "long-enough-pass", "role": "root" }),
    );
    assert!(
        bad_role.status == 400 || bad_role.status == 422,
        "{bad_role:?}"
    );

    // SQL-injection-shaped input is data, never SQL.
    let evil = "x' OR '1'='1'; DROP TABLE users; --";
    let r = s.post(
        Some(&admin),
        "/api/v1/users",
        &json!({ "username": evil, "password": "long-enough-pass", "role": "viewer" }),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_username"));
    let r = s.login_attempt(evil, "x' OR '1'='1");
    assert_eq!((r.status, r.code()), (401, "invalid_credentials"));
    let r = s.get(Some(&admin), "/api/v1/audit?actor=x'%20OR%20'1'='1");
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get(Some(&admin), "/api/v1/users")
            .body
            .as_array()
            .unwrap()
            .len(),
        3,
        "users intact"
    );

    let users = s.get(Some(&admin), "/api/v1/users").body;
    let id_of = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (victor, admin_id) = (id_of("victor"), id_of("admin"));

    // Role changes apply to existing tokens at once.
    let r = s.patch(
        Some(&admin),
        &format!("/api/v1/users/{victor}"),
        &json!({ "role": "admin" }),
    );
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("admin")));
    assert_eq!(s.get(Some(&viewer), "/api/v1/users").status, 200);
    // Disabling revokes at once and blocks login.
    assert_eq!(
        s.patch(
            Some(&admin),
            &format!("/api/v1/users/{victor}"),
            &json!({ "disabled": true })
        )
        .status,
        200
    );
    let r = s.get(Some(&viewer), "/api/v1/auth/me");
    assert_eq!(r.status, 401);
    let r = s.login_attempt("victor", "victor-password-123");
    assert_eq!(r.status, 401);

    let r = s.delete(Some(&admin), &format!("/api/v1/users/{admin_id}"));
    assert_eq!((r.status, r.code()), (409, "delete_self"));
    let r = s.patch(
        Some(&admin),
        &format!("/api/v1/users/{admin_id}"),
        &json!({ "role": "viewer" }),
    );
    assert_eq!((r.status, r.code()), (409, "last_admin"), "{r:?}");
    assert_eq!(
        s.delete(Some(&admin), &format!("/api/v1/users/{victor}"))
            .status,
        204
    );
    assert_eq!(
        s.delete(Some(&admin), &format!("/api/v1/users/{victor}"))
            .status,
        404
    );

    let users_log = s.audit(&admin, "action=users.&actor=user:admin");
    for action in ["users.create", "users.update", "users.delete"] {
        assert!(
            users_log.iter().any(|e| e["action"] == action
                && e["outcome"] == "success"
                && e["source_ip"] == "127.0.0.1"),
            "{action}"
        );
    }
    let denied = s.audit(&admin, "action=users.create&outcome=denied");
    assert!(
        denied.iter().any(|e| e["actor"] == "user:olivia"),
        "{denied:#?}"
    );
    let page = s.get(Some(&admin), "/api/v1/audit?limit=2");
    assert_eq!(page.body["entries"].as_array().unwrap().len(), 2);
    let before = page.body["next_before_id"].as_i64().unwrap();
    let older = s.get(
        Some(&admin),
        &format!("/api/v1/audit?limit=2&before_id={before}"),
    );
    assert!(older.body["entries"][0]["id"].as_i64().unwrap() < before);
}

/// Ten wrong passwords a minute for `admin`, from anywhere, used to make
/// the right one get 429 from every address.
#[test]
fn a_flood_of_wrong_passwords_does_not_lock_the_admin_out() {
    // Small allowances, so that the flood goes past every one of them.
    let s = Stack::start(
        "[services.api]\nenv = { PHOENIX_LOGIN_FAILURES_PER_USER_SOURCE = \"3\", \
         PHOENIX_LOGIN_FAILURES_PER_USER = \"3\" }\n",
    );
    let source = |last: u8| IpAddr::from([127, 0, 0, last]);
    let flooder = source(2);
    let mut statuses = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..12 {
        let r = s.login_attempt_from(flooder, "admin", "wrong-password-1");
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited", "{r:?}");
            waits.push(retry_after(&r));
        }
        statuses.push(r.status);
    }
    // Three free failures, a fourth that starts the delay, then refusals:
    // each retry that does not wait doubles the wait.
    assert_eq!(statuses[..4], [401; 4], "{statuses:?}");
    let first_refusal = statuses.iter().position(|&s| s == 429).unwrap();
    assert!(
        statuses[first_refusal..].iter().all(|&s| s == 429),
        "{statuses:?}"
    );
    assert!(waits.len() >= 6, "{statuses:?}");
    assert!(waits.windows(2).all(|w| w[0] < w[1]), "growing: {waits:?}");
    assert!(*waits.last().unwrap() >= 32, "{waits:?}");
    // More addresses fail once each: the account is past its own allowance.
    for last in 10..16 {
        let r = s.login_attempt_from(source(last), "admin", "wrong-password-2");
        assert_eq!(r.status, 401, "{r:?}");
    }
    // An address within its own allowance is not held by the account's
    // delay: the admin who mistyped twice logs in during the spray.
    let password = s.admin_password();
    let r = s.login_attempt_from(source(10), "admin", "wrong-password-3");
    assert_eq!(r.status, 401, "{r:?}");
    let r = s.login_attempt_from(source(10), "admin", &password);
    assert_eq!(r.status, 200, "{r:?}");
    // An address past its own allowance waits for the account's delay
    // (60 s by now), not only for its own (1 s, then 2 s).
    for _ in 0..3 {
        let r = s.login_attempt_from(source(11), "admin", "wrong-password-4");
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = s.login_attempt_from(source(11), "admin", &password);
    assert_eq!(r.code(), "rate_limited", "{r:?}");
    assert!(retry_after(&r) > 30, "{r:?}");

    // The right password from an address without failures works at once.
    let r = s.login_attempt_from(source(3), "admin", &password);
    assert_eq!(r.status, 200, "{r:?}");
    // From the flooding address it waits like any other attempt.
    let r = s.login_attempt_from(flooder, "admin", &password);
    assert_eq!(r.status, 429, "{r:?}");
    // Another user name from a clean address is not affected either.
    let r = s.login_attempt_from(source(4), "someone", "wrong-password-1");
    assert_eq!(r.status, 401, "{r:?}");

    let admin = admin_token_from(&s, source(3), &password);
    let refused = s.audit(&admin, "action=auth.login&outcome=denied");
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["reason"] == "rate_limited" && e["source_ip"] == "127.0.0.2"),
        "{refused:#?}"
    );
}

/// The login limiter counts the TCP peer, whatever a request says about
/// where it comes from: failures that each claim another address in
/// `X-Forwarded-For`, `Forwarded` and `X-Real-IP` all count against the one
/// address they came from, and naming that address in the headers does not
/// make another address wait.
#[test]
fn no_header_chooses_the_source_of_a_login() {
    let s =
        Stack::start("[services.api]\nenv = { PHOENIX_LOGIN_FAILURES_PER_USER_SOURCE = \"3\" }\n");
    let attempt = |from: IpAddr, claimed: &str, password: &str| {
        let request = https_from(from)
            .post(s.ports.api_url("/api/v1/auth/login"))
            .header("x-forwarded-for", claimed)
            .header("forwarded", format!("for={claimed}"))
            .header("x-real-ip", claimed)
            .json(&json!({ "username": "admin", "password": password }));
        s.reply(request)
    };
    let guesser = IpAddr::from([127, 0, 0, 30]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = attempt(guesser, &format!("203.0.113.{i}"), "wrong-password");
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited", "{r:?}");
            break;
        }
    }
    // Three free failures and a fourth that starts the delay, as from one
    // address without headers; then refused, whatever address it claims.
    assert_eq!(statuses[..4], [401; 4], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    let password = s.admin_password();
    let r = attempt(IpAddr::from([127, 0, 0, 31]), "127.0.0.30", &password);
    assert_eq!(r.status, 200, "the waiting address named in headers: {r:?}");
    let admin = r.body["access_token"].as_str().unwrap().to_string();
    let denied = s.audit(&admin, "action=auth.login&outcome=denied");
    assert!(
        denied
            .iter()
            .any(|e| e["details"]["reason"] == "rate_limited" && e["source_ip"] == "127.0.0.30"),
        "{denied:#?}"
    );
    assert!(
        denied.iter().all(|e| e["source_ip"] == "127.0.0.30"),
        "every refusal at its TCP peer: {denied:#?}"
    );
}

fn retry_after(r: &phoenix_tests::Reply) -> u64 {
    r.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

/// An access token for `admin`, logging in from `source`.
fn admin_token_from(s: &Stack, source: IpAddr, password: &str) -> String {
    let r = s.login_attempt_from(source, "admin", password);
    assert_eq!(r.status, 200, "{r:?}");
    r.body["access_token"].as_str().unwrap().to_string()
}

/// `/metrics` on the public listener used to give agent counts, the database
/// size and per-route latencies to anyone.
#[test]
fn metrics_are_for_the_local_prometheus_and_admins_only() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let viewer = s.user_token(&admin, "watcher", "viewer");
    let scrape = |token: Option<&str>| {
        let request = phoenix_tests::https().get(s.ports.api_url("/metrics"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        s.reply(request)
    };
    let refused = scrape(Some(&viewer));
    assert_eq!(
        (refused.status, refused.code()),
        (403, "forbidden"),
        "{refused:?}"
    );
    let forged = scrape(Some("not-a-token"));
    assert_eq!(forged.status, 401, "{forged:?}");
    // An admin's token, and over loopback no token (the appliance's Prometheus).
    for token in [Some(admin.as_str()), None] {
        let mut request = phoenix_tests::https().get(s.ports.api_url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status().as_u16(), 200, "token {token:?}");
        assert!(
            response
                .text()
                .unwrap()
                .contains("phoenix_api_agents_connected")
        );
    }
    let r = s.reply(s.agent(reqwest::Method::GET, "/metrics"));
    assert_eq!(r.status, 404, "not on the agent listener: {r:?}");
    // And Prometheus still scrapes the API.
    wait_until(
        "Prometheus scrapes the API",
        Duration::from_secs(30),
        || {
            let r = phoenix_tests::plain_http()
                .get(s.ports.prometheus_url("/api/v1/query"))
                .query(&[("query", "up{job=\"phoenix-api\"}")])
                .send()
                .ok()?
                .json::<Value>()
                .ok()?;
            (r["data"]["result"][0]["value"][1] == "1").then_some(())
        },
    );
    let denied = s.audit(&admin, "action=metrics.read&outcome=denied");
    assert!(
        denied.iter().any(|e| e["actor"] == "user:watcher"),
        "{denied:#?}"
    );
}

#[test]
fn bodies_routes_openapi_and_tls_reload() {
    let s = Stack::start("");
    let admin = s.admin_token();
    // The API answers 413 as soon as Content-Length says too much; a client
    // still writing the body may see the connection close first. Either
    // way the refusal is counted in /metrics.
    let big = "x".repeat(2 << 20);
    let sent = phoenix_tests::https()
        .post(s.ports.api_url("/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({ "username": "big", "password": big, "role": "viewer" }))
        .send();
    match sent {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(
            format!("{e:?}").contains("Broken pipe") || e.is_request(),
            "{e:?}"
        ),
    }
    let metrics = phoenix_tests::https()
        .get(s.ports.api_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(r#"route="/api/v1/users",status="413""#),
        "{metrics}"
    );
    let r = s.get(Some(&admin), "/api/v1/no-such-thing");
    assert_eq!((r.status, r.code()), (404, ""), "{r:?}");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = s.post(None, "/api/v1/auth/login", &json!({ "user": "admin" }));
    assert!(
        r.status == 400 || r.status == 422,
        "malformed JSON body is a client error: {r:?}"
    );

    let doc = s.get(None, "/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/users/{id}",
        "/api/v1/audit",
    ] {
        assert!(
            doc.body["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // /metrics counts requests per route.
    let metrics = phoenix_tests::https()
        .get(s.ports.api_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(r#"route="/api/v1/auth/login""#),
        "{metrics}"
    );

    // A new certificate is picked up on reload without restarting the API.
    let fingerprint = || {
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .build()
            .unwrap();
        let resp = client.get(s.ports.api_url("/health")).send().unwrap();
        resp.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
            .unwrap()
    };
    let before = fingerprint();
    let pid = s.sup.pid_of("api");
    std::fs::remove_file(s.sup.path("state/tls/cert.pem")).unwrap();
    let out = s.sup.ctl(&["reload"]);
    let msg = phoenix_tests::Supervisor::ok(&out);
    assert!(
        msg.contains("api: sent SIGHUP (new TLS certificate)"),
        "{msg}"
    );
    wait_until("new certificate served", Duration::from_secs(10), || {
        (fingerprint() != before).then_some(())
    });
    assert_eq!(s.sup.pid_of("api"), pid, "reloaded in place");
    assert_eq!(
        s.get(Some(&admin), "/api/v1/auth/me").status,
        200,
        "sessions survive"
    );
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub fn encode(data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    pub fn decode(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).expect("base64url")
    }
}
