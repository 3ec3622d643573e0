//! Input the database cannot take, end to end on a real stack: a NUL
//! character in any text field of either listener (JSON values and keys,
//! query parameters, path segments) is a 400 problem, never a 500; paging
//! limits out of range are refused with the range, never clamped.

use phoenix_tests::{Reply, Stack};
use reqwest::Method;
use serde_json::{Value, json};

/// A request: method, path, JSON body and bearer.
type Request<'a> = (Method, String, Option<Value>, Option<&'a str>);

const NUL: &str = "a\u{0}b";

/// Requests to the user listener, each with a NUL in one text field.
fn user_requests_with_nul(admin: &str) -> Vec<Request<'_>> {
    let some_id = uuid::Uuid::new_v4();
    let nul = NUL;
    let spec = json!({ "stages": [] });
    vec![
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({ "username": nul, "password": "whatever-password" })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({ "username": "admin", "password": nul })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/auth/refresh".into(),
            Some(json!({ "refresh_token": nul })),
            None,
        ),
        (
            Method::GET,
            "/api/v1/audit?actor=%00".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/audit?target=%00".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/audit?action=%00".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/audit?actor=user:a%00b&limit=5".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/audit?x%00=1".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/agents?status=%00".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/tasks?state=%00".into(),
            None,
            Some(admin),
        ),
        (
            Method::GET,
            "/api/v1/experiments?state=%00".into(),
            None,
            Some(admin),
        ),
        (Method::GET, "/api/v1/agents/%00".into(), None, Some(admin)),
        (
            Method::DELETE,
            "/api/v1/users/a%00b".into(),
            None,
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({ "username": nul, "password": "long-enough-pass", "role": "viewer" })),
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(
                json!({ "username": "eve", "password": "long-enough\u{0}pass", "role": "viewer" }),
            ),
            Some(admin),
        ),
        (
            Method::PATCH,
            format!("/api/v1/users/{some_id}"),
            Some(json!({ "password": "long-enough\u{0}pass" })),
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/enrollment-tokens".into(),
            Some(json!({ "description": nul })),
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/pipelines".into(),
            Some(json!({ "name": nul, "spec": spec })),
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/pipelines".into(),
            Some(json!({ "name": "p", "description": nul, "spec": spec })),
            Some(admin),
        ),
        (
            Method::PUT,
            format!("/api/v1/pipelines/{some_id}"),
            Some(json!({ "name": "p", "spec": { "stages": [{ "type": nul }] } })),
            Some(admin),
        ),
        (
            Method::POST,
            "/api/v1/experiments".into(),
            Some(json!({
                "name": nul, "baseline": { "spec": spec }, "candidate": { "spec": spec },
                "agents": [some_id], "duration": 3,
            })),
            Some(admin),
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{some_id}/tasks"),
            Some(json!({ "kind": nul })),
            Some(admin),
        ),
        (
            Method::POST,
            format!("/api/v1/agents/{some_id}/tasks"),
            Some(json!({ "kind": "noop", "payload": { nul: 1 } })),
            Some(admin),
        ),
        (
            Method::PUT,
            "/api/v1/audit/retention".into(),
            Some(json!({ "months": 13, "note": nul })),
            Some(admin),
        ),
    ]
}

/// The same on the agent listener.
fn agent_requests_with_nul(agent: &str) -> Vec<Request<'_>> {
    let some_id = uuid::Uuid::new_v4();
    let nul = NUL;
    vec![
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": nul, "name": "web-2", "hostname": "h" })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": "t", "name": nul, "hostname": "h" })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": "t", "name": "web-2", "hostname": nul })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": "t", "name": "web-2", "hostname": "h", "version": nul })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": "t", "name": "web-2", "hostname": "h", "labels": { "k": nul } })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({ "token": "t", "name": "web-2", "hostname": "h", "labels": { nul: "v" } })),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat".into(),
            Some(json!({ "status": { "queue": nul } })),
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat".into(),
            Some(json!({ "status": { nul: 1 } })),
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat".into(),
            Some(json!({ "status": { "pipelines": [{ "name": nul }] } })),
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat".into(),
            Some(json!({ "version": nul })),
            Some(agent),
        ),
        (
            Method::POST,
            format!("/api/v1/agent/tasks/{some_id}/result"),
            Some(json!({ "result_id": some_id, "outcome": "failed", "error": nul })),
            Some(agent),
        ),
        (
            Method::POST,
            format!("/api/v1/agent/tasks/{some_id}/result"),
            Some(json!({ "result_id": some_id, "outcome": "succeeded", "result": { "out": nul } })),
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/tasks/a%00b/result".into(),
            Some(json!({ "result_id": some_id, "outcome": "failed" })),
            Some(agent),
        ),
        (
            Method::GET,
            "/api/v1/agent/tasks?wait=%00".into(),
            None,
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/write?experiment=%00".into(),
            None,
            Some(agent),
        ),
        (
            Method::POST,
            "/api/v1/agent/write?variant=a%00b".into(),
            None,
            Some(agent),
        ),
    ]
}

fn send(
    s: &Stack,
    url: String,
    method: &Method,
    body: &Option<Value>,
    bearer: Option<&str>,
) -> Reply {
    let mut req = phoenix_tests::https().request(method.clone(), url);
    if let Some(body) = body {
        req = req.json(body);
    }
    if let Some(bearer) = bearer {
        req = req.bearer_auth(bearer);
    }
    s.reply(req)
}

/// A 400 `invalid_text` problem document.
fn assert_invalid_text(r: &Reply, request: &str) {
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_text"),
        "{request}: {r:?}"
    );
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{request}"
    );
}

#[test]
fn nul_characters_sent_to_the_user_listener_are_400_problems_saying_so() {
    let s = Stack::start("");
    let admin = s.admin_token();
    for (method, path, body, bearer) in &user_requests_with_nul(&admin) {
        let r = send(&s, s.ports.api_url(path), method, body, *bearer);
        assert_invalid_text(&r, &format!("{method} {path} {body:?}"));
        assert!(r.body["detail"].as_str().unwrap().contains("NUL"), "{r:?}");
    }
}

#[test]
fn nul_characters_sent_to_the_agent_listener_are_400_problems_naming_the_field() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agent = s.enroll_one(&admin, "web-1").credential;
    for (method, path, body, bearer) in &agent_requests_with_nul(&agent) {
        let r = send(&s, s.ports.agent_url(path), method, body, *bearer);
        assert_invalid_text(&r, &format!("{method} {path} {body:?}"));
    }
    // The field is named.
    let r = send(
        &s,
        s.ports.agent_url("/api/v1/agent/heartbeat"),
        &Method::POST,
        &Some(json!({ "status": { "queue": ["ok", NUL] } })),
        Some(&agent),
    );
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("`status.queue[1]`"),
        "{r:?}"
    );
    // An escaped backslash before "u0000" is ordinary text, stored as sent.
    let r = send(
        &s,
        s.ports.agent_url("/api/v1/agent/heartbeat"),
        &Method::POST,
        &Some(json!({ "status": { "note": "\\u0000" } })),
        Some(&agent),
    );
    assert_eq!(r.status, 200, "{r:?}");
}
#[test]
fn paging_limits_out_of_range_are_refused_with_the_range_on_every_list() {
    let s = Stack::start("");
    let admin = s.admin_token();
    for list in [
        "/api/v1/audit",
        "/api/v1/agents",
        "/api/v1/tasks",
        "/api/v1/experiments",
    ] {
        for limit in ["0", "-1", "1001"] {
            let r = s.get(Some(&admin), &format!("{list}?limit={limit}"));
            assert_eq!(
                (r.status, r.code()),
                (400, "invalid_limit"),
                "{list} limit={limit}: {r:?}"
            );
            assert_eq!(r.headers["content-type"], "application/problem+json");
            assert!(
                r.body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("between 1 and 1000"),
                "{r:?}"
            );
        }
        for limit in ["1", "1000"] {
            let r = s.get(Some(&admin), &format!("{list}?limit={limit}"));
            assert_eq!(r.status, 200, "{list} limit={limit}: {r:?}");
        }
    }
    // The documented range is the enforced one.
    let doc = s.get(None, "/api/v1/openapi.json").body;
    for list in [
        "/api/v1/audit",
        "/api/v1/agents",
        "/api/v1/tasks",
        "/api/v1/experiments",
    ] {
        let limit = doc["paths"][list]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap_or_else(|| panic!("{list} documents limit"))
            .clone();
        assert_eq!(
            (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
            (&json!(1), &json!(1000)),
            "{list}: {limit}"
        );
    }
    assert!(doc["paths"]["/api/v1/audit/retention"]["put"].is_object());
}
