//! Agents and tasks end to end on a real stack (PostgreSQL, Prometheus,
//! phoenix-api under the supervisor): enrollment tokens, enrollment, agent
//! authentication on its own listener, heartbeats and status, the task
//! queue (long-poll claims, leases, retries, idempotent results, concurrent
//! claims), the refusals of metric writes, and revocation. (Metric writes
//! through to Prometheus: `api_write.rs`.)

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use phoenix_tests::{Agent, Reply, Stack, get_text, https, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// A name and a label value that look like SQL; both are stored verbatim.
const SQL_NAME: &str = "web-1'; DROP TABLE agents; --";
const SQL_LABEL: &str = "x' OR '1'='1";

fn enrolled(r: &Reply) -> Agent {
    assert_eq!(r.status, 201, "{r:?}");
    Agent {
        id: r.body["agent_id"].as_str().unwrap().to_string(),
        credential: r.body["credential"].as_str().unwrap().to_string(),
    }
}

/// `SQL_NAME` (labelled `role` = `SQL_LABEL`, `zone` = `eu-1`) and `web-2`,
/// enrolled with one token.
fn two_agents(s: &Stack, admin: &str) -> (Agent, Agent) {
    let (_, token) = s.enrollment_token(admin, &json!({ "uses": 2 }));
    let labels = json!({ "role": SQL_LABEL, "zone": "eu-1" });
    let a = enrolled(&s.try_enroll(&token, SQL_NAME, labels));
    let b = enrolled(&s.try_enroll(&token, "web-2", json!({})));
    (a, b)
}

fn task_ids(r: &Reply) -> Vec<String> {
    r.body["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {r:?}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

fn new_task(s: &Stack, token: &str, agent: &str, body: Value) -> String {
    let r = s.post(Some(token), &format!("/api/v1/agents/{agent}/tasks"), &body);
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_string()
}

fn outcome(outcome: &str) -> Value {
    json!({ "result_id": uuid::Uuid::new_v4(), "outcome": outcome })
}

fn task_detail(s: &Stack, token: &str, task: &str) -> Value {
    s.get(Some(token), &format!("/api/v1/tasks/{task}")).body
}

#[test]
fn enrollment_tokens_are_managed_by_admins_only_and_shown_once() {
    let s = Stack::start("");
    let u = s.users();
    for token in [&u.operator, &u.viewer] {
        let r = s.post(Some(token), "/api/v1/enrollment-tokens", &json!({}));
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
        assert_eq!(s.get(Some(token), "/api/v1/enrollment-tokens").status, 403);
    }
    let r = s.post(
        Some(&u.admin),
        "/api/v1/enrollment-tokens",
        &json!({ "uses": 0 }),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_uses"));
    let r = s.post(
        Some(&u.admin),
        "/api/v1/enrollment-tokens",
        &json!({ "description": "web fleet", "uses": 2, "expires_in_secs": 600 }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["uses_left"], 2);
    let (token_id, token) = (
        r.body["id"].as_str().unwrap().to_string(),
        r.body["token"].as_str().unwrap().to_string(),
    );
    let listed = s.get(Some(&u.admin), "/api/v1/enrollment-tokens");
    assert_eq!(listed.status, 200);
    let entry = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (entry["state"].as_str(), entry["uses_left"].as_i64()),
        (Some("active"), Some(2))
    );
    assert!(
        !listed.body.to_string().contains(&token),
        "the token is shown only once"
    );
    assert_eq!(
        s.audit(&u.admin, "action=enrollment_tokens.create&outcome=denied")
            .len(),
        2
    );
}

#[test]
fn enrollment_checks_the_token_counts_its_uses_and_audits_every_refusal() {
    let s = Stack::start("");
    let u = s.users();
    let (token_id, token) = s.enrollment_token(
        &u.admin,
        &json!({ "description": "web fleet", "uses": 2, "expires_in_secs": 600 }),
    );
    let r = s.try_enroll("not-a-token", "host-x", json!({}));
    assert_eq!(
        (r.status, r.code()),
        (401, "enrollment_token_invalid"),
        "{r:?}"
    );
    // Names and labels that look like SQL are stored verbatim.
    let first = s.try_enroll(
        &token,
        SQL_NAME,
        json!({ "role": SQL_LABEL, "zone": "eu-1" }),
    );
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["heartbeat_interval_secs"], 15);
    let a = enrolled(&first);
    assert_eq!(
        a.credential,
        format!("{}.{}", a.id, first.body["secret"].as_str().unwrap())
    );
    let dup = s.try_enroll(&token, &SQL_NAME.to_uppercase(), json!({}));
    assert_eq!(
        (dup.status, dup.code()),
        (409, "agent_name_taken"),
        "{dup:?}"
    );
    let second = s.try_enroll(&token, "web-2", json!({}));
    assert_eq!(
        second.status, 201,
        "the name clash did not use up a use: {second:?}"
    );
    let used_up = s.try_enroll(&token, "web-3", json!({}));
    assert_eq!(
        (used_up.status, used_up.code()),
        (401, "enrollment_token_invalid")
    );
    let (_, short_lived) = s.enrollment_token(&u.admin, &json!({ "expires_in_secs": 1 }));
    let (revoked_id, revoked) = s.enrollment_token(&u.admin, &json!({}));
    let revoke = format!("/api/v1/enrollment-tokens/{revoked_id}");
    assert_eq!(s.delete(Some(&u.operator), &revoke).status, 403);
    assert_eq!(s.delete(Some(&u.admin), &revoke).status, 204);
    std::thread::sleep(Duration::from_millis(1500));
    for t in [&short_lived, &revoked] {
        let r = s.try_enroll(t, "web-4", json!({}));
        assert_eq!(
            (r.status, r.code()),
            (401, "enrollment_token_invalid"),
            "{r:?}"
        );
    }
    let states: Vec<String> = s
        .get(Some(&u.admin), "/api/v1/enrollment-tokens")
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect();
    for state in ["used_up", "expired", "revoked"] {
        assert!(states.iter().any(|s| s == state), "{state} in {states:?}");
    }
    let denied: Vec<String> = s
        .audit(&u.admin, "action=agents.enroll&outcome=denied")
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    for reason in [
        "token_unknown",
        "token_used_up",
        "token_expired",
        "token_revoked",
    ] {
        assert!(
            denied.iter().any(|r| r == reason),
            "{reason} audited: {denied:?}"
        );
    }
    let enrolled = s.audit(
        &u.admin,
        &format!("action=agents.enroll&outcome=success&target=agent:{}", a.id),
    );
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(enrolled[0]["details"]["name"], SQL_NAME);
    assert_eq!(enrolled[0]["actor"], format!("enrollment_token:{token_id}"));
    for (query, n) in [
        ("action=enrollment_tokens.create&outcome=success", 3),
        ("action=enrollment_tokens.revoke&outcome=success", 1),
    ] {
        assert_eq!(s.audit(&u.admin, query).len(), n, "{query}");
    }
}

/// JSON bodies on the agent listener keep the listener's size limit: the
/// server answers 413 without reading the body, so a client still writing
/// it may see the connection closed instead. Either way the body was not
/// read (read, it would have been a 400 for the long name).
#[test]
fn oversized_enrollment_bodies_are_refused_unread() {
    let s = Stack::start("");
    let (_, token) = s.enrollment_token(&s.admin_token(), &json!({}));
    let sent = https()
        .post(s.ports.agent_url("/api/v1/agents/enroll"))
        .json(&json!({ "token": token, "name": "x".repeat(2 << 20), "hostname": "h" }))
        .send();
    match sent {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
}

#[test]
fn each_listener_refuses_the_other_listeners_credentials_and_routes() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let a = s.enroll_one(&admin, "web-1");
    let r = s.reply(
        s.agent(Method::POST, "/api/v1/agent/heartbeat")
            .json(&json!({})),
    );
    assert_eq!((r.status, r.code()), (401, "missing_credential"), "{r:?}");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let wrong_secret = format!("{}.{}", a.id, "A".repeat(43));
    let r = s.heartbeat(&wrong_secret);
    assert_eq!((r.status, r.code()), (401, "invalid_credential"));
    let r = s.heartbeat("garbage");
    assert_eq!((r.status, r.code()), (401, "invalid_credential"));
    let r = s.heartbeat(&admin);
    assert_eq!(
        (r.status, r.code()),
        (401, "user_token_refused"),
        "a user token on the agent port: {r:?}"
    );
    assert_eq!(s.poll(&admin, "wait=0").status, 401);
    // ... and an agent credential on the user port.
    for path in ["/api/v1/auth/me", "/api/v1/agents", "/api/v1/tasks"] {
        let r = s.get(Some(&a.credential), path);
        assert_eq!(
            r.status, 401,
            "agent credential on the user port, {path}: {r:?}"
        );
    }
    // User routes do not exist on the agent listener, nor agent routes on the user one.
    assert_eq!(
        s.agent_call(&a.credential, Method::GET, "/api/v1/agents", None)
            .status,
        404
    );
    assert_eq!(
        s.post(Some(&admin), "/api/v1/agent/heartbeat", &json!({}))
            .status,
        404
    );
    let refusals = s.audit(&admin, &format!("action=agent.auth&actor=agent:{}", a.id));
    assert!(!refusals.is_empty(), "a wrong secret is audited");
}

#[test]
fn heartbeats_mark_an_agent_online_with_its_version_and_status() {
    let s = Stack::start("");
    let u = s.users();
    let (a, _) = two_agents(&s, &u.admin);
    let agent_a = s.get(Some(&u.viewer), &format!("/api/v1/agents/{}", a.id));
    assert_eq!(agent_a.body["status"], "offline", "{agent_a:?}");
    let r = s.agent_call(
        &a.credential,
        Method::POST,
        "/api/v1/agent/heartbeat",
        Some(&json!({ "version": "0.2.0", "status": { "queue_depth": 3 } })),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["heartbeat_interval_secs"], 15);
    assert!(r.body["server_time"].is_string());
    let agent_a = s.get(Some(&u.viewer), &format!("/api/v1/agents/{}", a.id));
    assert_eq!(agent_a.status, 200);
    assert_eq!(agent_a.body["status"], "online", "{agent_a:?}");
    assert!(agent_a.body["last_seen_at"].is_string());
    assert_eq!(agent_a.body["version"], "0.2.0");
    assert_eq!(agent_a.body["reported_status"]["queue_depth"], 3);
    assert_eq!(agent_a.body["name"], SQL_NAME, "stored verbatim");
    assert_eq!(
        agent_a.body["labels"],
        json!({ "role": SQL_LABEL, "zone": "eu-1" })
    );
    let online = s.get(Some(&u.viewer), "/api/v1/agents?status=online");
    assert_eq!(
        online.body["agents"].as_array().unwrap().len(),
        1,
        "{online:?}"
    );
    let all = s.get(Some(&u.viewer), "/api/v1/agents");
    assert_eq!(all.body["agents"].as_array().unwrap().len(), 2, "{all:?}");
    assert_eq!(all.body["next_after"], Value::Null, "one page");
}

#[test]
fn agents_are_listed_in_pages_by_name() {
    let s = Stack::start("");
    let u = s.users();
    two_agents(&s, &u.admin);
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(id) => format!("/api/v1/agents?limit=1&after={id}"),
            None => "/api/v1/agents?limit=1".to_string(),
        };
        let page = s.get(Some(&u.viewer), &query);
        assert_eq!(page.status, 200, "{page:?}");
        let agents = page.body["agents"].as_array().unwrap();
        names.extend(
            agents
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_string()),
        );
        match page.body["next_after"].as_str() {
            Some(next) => {
                assert_eq!(agents.len(), 1);
                assert_eq!(next, agents[0]["id"].as_str().unwrap());
                after = Some(next.to_string());
            }
            None => break,
        }
        assert!(names.len() <= 2, "paging does not end: {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort_by_key(|n| n.to_lowercase());
    assert_eq!((names.len(), &names), (2, &sorted));
    let r = s.get(
        Some(&u.viewer),
        &format!("/api/v1/agents?after={}", uuid::Uuid::new_v4()),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_cursor"), "{r:?}");
    for bad in ["limit=x", "after=not-a-uuid"] {
        let r = s.get(Some(&u.viewer), &format!("/api/v1/agents?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    assert_eq!(
        s.get(
            Some(&u.viewer),
            &format!("/api/v1/agents/{}", uuid::Uuid::new_v4())
        )
        .status,
        404
    );
}

#[test]
fn revoking_an_agent_ends_its_long_poll_and_refuses_its_credential_at_once() {
    let s = Stack::start("");
    let u = s.users();
    let (_, b) = two_agents(&s, &u.admin);
    let revoke = format!("/api/v1/agents/{}", b.id);
    assert_eq!(s.delete(Some(&u.viewer), &revoke).status, 403);
    assert_eq!(s.heartbeat(&b.credential).status, 200);
    // A long poll under way when the agent is revoked ends at once with the
    // refusal, not at the end of its wait.
    let (r, waited) = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let started = Instant::now();
            (s.poll(&b.credential, "wait=8"), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(s.delete(Some(&u.operator), &revoke).status, 204);
        waiting.join().unwrap()
    });
    assert_eq!((r.status, r.code()), (401, "agent_revoked"), "{r:?}");
    // Unwoken, it would have looked again only after 5 s (RECHECK).
    assert!(
        waited < Duration::from_secs(4),
        "the poll ended after {waited:?}, as if never woken"
    );
    let r = s.heartbeat(&b.credential);
    assert_eq!((r.status, r.code()), (401, "agent_revoked"), "{r:?}");
    let agent_b = s.get(Some(&u.viewer), &revoke);
    assert_eq!(agent_b.body["status"], "revoked");
    assert!(agent_b.body["revoked_at"].is_string());
    assert_eq!(
        s.audit(
            &u.admin,
            &format!("action=agents.revoke&target=agent:{}", b.id)
        )
        .len(),
        1
    );
    // The name is free again.
    let (_, token) = s.enrollment_token(&u.admin, &json!({}));
    assert_eq!(s.try_enroll(&token, "web-2", json!({})).status, 201);
}

#[test]
fn the_openapi_document_describes_both_listeners() {
    let s = Stack::start("");
    let doc = s.get(None, "/api/v1/openapi.json");
    for path in [
        "/api/v1/enrollment-tokens",
        "/api/v1/agents/{id}",
        "/api/v1/agents/enroll",
        "/api/v1/agent/heartbeat",
        "/api/v1/agent/tasks",
        "/api/v1/agent/tasks/{id}/result",
        "/api/v1/agent/write",
        "/api/v1/tasks",
    ] {
        assert!(
            doc.body["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["agent"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc.body["paths"]["/api/v1/agent/heartbeat"]["post"]["security"][0],
        json!({ "agent": [] })
    );
}

#[test]
fn tasks_are_queued_by_operators_only_and_polls_check_their_query() {
    let s = Stack::start("");
    let u = s.users();
    let a = s.enroll_one(&u.admin, "host-a");
    let r = s.post(
        Some(&u.viewer),
        &format!("/api/v1/agents/{}/tasks", a.id),
        &json!({ "kind": "noop" }),
    );
    assert_eq!(r.status, 403);
    let r = s.post(
        Some(&u.operator),
        &format!("/api/v1/agents/{}/tasks", a.id),
        &json!({ "kind": "two words" }),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_kind"));
    let r = s.post(
        Some(&u.operator),
        &format!("/api/v1/agents/{}/tasks", uuid::Uuid::new_v4()),
        &json!({ "kind": "noop" }),
    );
    assert_eq!(r.status, 404);
    for query in ["wait=31", "max=0", "lease=0"] {
        let r = s.poll(&a.credential, query);
        assert_eq!(r.status, 400, "{query}: {r:?}");
    }
}

#[test]
fn a_waiting_long_poll_is_woken_by_a_new_task() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let operator = s.user_token(&admin, "olivia", "operator");
    let a = s.enroll_one(&admin, "host-a");
    let elapsed = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let started = Instant::now();
            (s.poll(&a.credential, "wait=20"), started.elapsed())
        });
        std::thread::sleep(Duration::from_secs(1));
        let task = new_task(
            &s,
            &operator,
            &a.id,
            json!({ "kind": "collect", "payload": { "interval": "15s" } }),
        );
        let (r, elapsed) = waiting.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(task_ids(&r), vec![task]);
        assert_eq!(r.body["tasks"][0]["attempt"], 1);
        assert_eq!(r.body["tasks"][0]["kind"], "collect");
        assert_eq!(r.body["tasks"][0]["payload"]["interval"], "15s");
        elapsed
    });
    assert!(
        elapsed < Duration::from_secs(6),
        "woken, not timed out: {elapsed:?}"
    );
    // With nothing queued, a poll waits for its whole wait.
    let started = Instant::now();
    let r = s.poll(&a.credential, "wait=1");
    assert_eq!((r.status, task_ids(&r).len()), (200, 0));
    assert!(started.elapsed() >= Duration::from_millis(900), "waited");
}

#[test]
fn results_are_idempotent_and_taken_only_for_a_task_leased_to_the_agent() {
    let s = Stack::start("");
    let u = s.users();
    let [a, b]: [Agent; 2] = s
        .enroll(&u.admin, &["host-a", "host-b"])
        .try_into()
        .unwrap();
    let task = new_task(&s, &u.operator, &a.id, json!({ "kind": "collect" }));
    assert_eq!(
        task_ids(&s.poll(&a.credential, "wait=0")),
        vec![task.clone()]
    );

    // Another agent cannot report it; the same result twice is one change.
    let result_id = uuid::Uuid::new_v4().to_string();
    let ok = json!({ "result_id": result_id, "outcome": "succeeded", "result": { "series": 42 } });
    assert_eq!(s.report(&b.credential, &task, &ok).status, 404);
    let first = s.report(&a.credential, &task, &ok);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        (first.body["state"].as_str(), first.body["attempt"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    let again = s.report(&a.credential, &task, &ok);
    assert_eq!(
        (again.status, &again.body),
        (200, &first.body),
        "the same answer"
    );
    let detail = task_detail(&s, &u.viewer, &task);
    assert_eq!(detail["state"], "succeeded");
    assert_eq!(detail["result"]["series"], 42);
    assert_eq!(detail["results"].as_array().unwrap().len(), 1, "{detail:?}");
    assert_eq!(
        s.audit(&u.admin, &format!("action=tasks.result&target=task:{task}"))
            .len(),
        1
    );
    let other = s.report(&a.credential, &task, &outcome("failed"));
    assert_eq!((other.status, other.code()), (409, "task_finished"));
    let changed = s.report(
        &a.credential,
        &task,
        &json!({ "result_id": result_id, "outcome": "failed" }),
    );
    assert_eq!((changed.status, changed.code()), (409, "result_id_reused"));

    // A task not claimed takes no result; it can be cancelled, once.
    let unclaimed = new_task(&s, &u.operator, &a.id, json!({ "kind": "noop" }));
    let r = s.report(&a.credential, &unclaimed, &outcome("succeeded"));
    assert_eq!((r.status, r.code()), (409, "task_not_leased"));
    let r = s.delete(Some(&u.operator), &format!("/api/v1/tasks/{unclaimed}"));
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(
        s.delete(Some(&u.operator), &format!("/api/v1/tasks/{unclaimed}"))
            .status,
        409
    );
}

#[test]
fn a_failed_attempt_is_queued_again_while_attempts_are_left() {
    let s = Stack::start("");
    let u = s.users();
    let a = s.enroll_one(&u.admin, "host-a");
    let flaky = new_task(
        &s,
        &u.operator,
        &a.id,
        json!({ "kind": "deploy", "max_attempts": 2 }),
    );
    assert_eq!(
        task_ids(&s.poll(&a.credential, "wait=0")),
        vec![flaky.clone()]
    );
    let failed = s.report(
        &a.credential,
        &flaky,
        &json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "failed", "error": "disk full" }),
    );
    assert_eq!(failed.body["state"], "queued", "{failed:?}");
    let r = s.poll(&a.credential, "wait=5");
    assert_eq!(
        (task_ids(&r), r.body["tasks"][0]["attempt"].as_i64()),
        (vec![flaky.clone()], Some(2))
    );
    let failed = s.report(
        &a.credential,
        &flaky,
        &json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "failed", "error": "disk still full" }),
    );
    assert_eq!(failed.body["state"], "failed", "attempts spent: {failed:?}");
    let detail = task_detail(&s, &u.viewer, &flaky);
    assert_eq!(
        (detail["attempts"].as_i64(), detail["error"].as_str()),
        (Some(2), Some("disk still full"))
    );
}

#[test]
fn an_expired_lease_queues_the_task_again_until_its_attempts_are_spent() {
    let s = Stack::start("");
    let u = s.users();
    let [a, b]: [Agent; 2] = s
        .enroll(&u.admin, &["host-a", "host-b"])
        .try_into()
        .unwrap();
    let stuck = new_task(
        &s,
        &u.operator,
        &a.id,
        json!({ "kind": "hang", "max_attempts": 2 }),
    );
    let r = s.poll(&a.credential, "wait=0&lease=1");
    assert_eq!(
        (task_ids(&r), r.body["tasks"][0]["attempt"].as_i64()),
        (vec![stuck.clone()], Some(1))
    );
    assert_eq!(
        task_ids(&s.poll(&a.credential, "wait=0")).len(),
        0,
        "leased, not offered twice"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = s.poll(&a.credential, "wait=0&lease=1");
    assert_eq!(
        (task_ids(&r), r.body["tasks"][0]["attempt"].as_i64()),
        (vec![stuck.clone()], Some(2))
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(task_ids(&s.poll(&a.credential, "wait=0")).len(), 0);
    let detail = task_detail(&s, &u.viewer, &stuck);
    assert_eq!(detail["state"], "expired", "{detail:?}");
    assert_eq!(detail["attempts"], 2);
    let expiries = s.audit(
        &u.admin,
        &format!("action=tasks.lease_expired&target=task:{stuck}"),
    );
    assert_eq!(expiries.len(), 2, "{expiries:?}");
    assert_eq!(expiries[0]["actor"], "system");
    let late = s.report(&a.credential, &stuck, &outcome("succeeded"));
    assert_eq!((late.status, late.code()), (409, "task_finished"));

    // Without a poll, the housekeeping sweep expires a stuck lease too.
    let abandoned = new_task(
        &s,
        &u.operator,
        &b.id,
        json!({ "kind": "hang", "max_attempts": 1 }),
    );
    assert_eq!(
        task_ids(&s.poll(&b.credential, "wait=0&lease=1")),
        vec![abandoned.clone()]
    );
    wait_until(
        "the sweep expires the lease",
        Duration::from_secs(20),
        || (task_detail(&s, &u.viewer, &abandoned)["state"] == "expired").then_some(()),
    );
}

#[test]
fn revoking_an_agent_cancels_its_queued_tasks() {
    let s = Stack::start("");
    let u = s.users();
    let b = s.enroll_one(&u.admin, "host-b");
    let queued = new_task(&s, &u.operator, &b.id, json!({ "kind": "noop" }));
    assert_eq!(
        s.delete(Some(&u.operator), &format!("/api/v1/agents/{}", b.id))
            .status,
        204
    );
    assert_eq!(task_detail(&s, &u.viewer, &queued)["state"], "cancelled");
    let r = s.post(
        Some(&u.operator),
        &format!("/api/v1/agents/{}/tasks", b.id),
        &json!({ "kind": "noop" }),
    );
    assert_eq!((r.status, r.code()), (409, "agent_revoked"));
}

#[test]
fn tasks_are_listed_by_agent_and_state_and_counted_by_state_in_metrics() {
    let s = Stack::start("");
    let u = s.users();
    let [a, b]: [Agent; 2] = s
        .enroll(&u.admin, &["host-a", "host-b"])
        .try_into()
        .unwrap();
    // One task succeeds and one fails ...
    let done = new_task(&s, &u.operator, &a.id, json!({ "kind": "noop" }));
    let fails = new_task(
        &s,
        &u.operator,
        &a.id,
        json!({ "kind": "deploy", "max_attempts": 1 }),
    );
    assert_eq!(task_ids(&s.poll(&a.credential, "wait=0&max=10")).len(), 2);
    for (task, end) in [(&done, "succeeded"), (&fails, "failed")] {
        let r = s.report(&a.credential, task, &outcome(end));
        assert_eq!(
            (r.status, r.body["state"].as_str()),
            (200, Some(end)),
            "{r:?}"
        );
    }
    // ... two leases expire ...
    for _ in 0..2 {
        new_task(
            &s,
            &u.operator,
            &a.id,
            json!({ "kind": "hang", "max_attempts": 1 }),
        );
    }
    assert_eq!(
        task_ids(&s.poll(&a.credential, "wait=0&max=10&lease=1")).len(),
        2
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(task_ids(&s.poll(&a.credential, "wait=0")).len(), 0);
    // ... and two are cancelled, by hand and by revoking their agent.
    let cancelled = new_task(&s, &u.operator, &a.id, json!({ "kind": "noop" }));
    let r = s.delete(Some(&u.operator), &format!("/api/v1/tasks/{cancelled}"));
    assert_eq!(r.status, 200, "{r:?}");
    new_task(&s, &u.operator, &b.id, json!({ "kind": "noop" }));
    let r = s.delete(Some(&u.operator), &format!("/api/v1/agents/{}", b.id));
    assert_eq!(r.status, 204, "{r:?}");

    let listed = s.get(
        Some(&u.viewer),
        &format!("/api/v1/tasks?agent={}&state=succeeded", a.id),
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{listed:?}");
    assert_eq!(
        s.get(Some(&u.viewer), "/api/v1/tasks?state=expired")
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // /metrics: agents connected and tasks by state.
    assert_eq!(s.heartbeat(&a.credential).status, 200);
    let metrics = wait_until("the gauges are refreshed", Duration::from_secs(40), || {
        let m = get_text(&s.ports.api_url("/metrics"));
        (m.contains("\nphoenix_api_agents_connected 1\n")
            && m.contains("phoenix_api_tasks{state=\"succeeded\"} 1\n")
            && m.contains("phoenix_api_tasks{state=\"expired\"} 2\n"))
        .then_some(m)
    });
    for (state, n) in [
        ("queued", 0),
        ("leased", 0),
        ("failed", 1),
        ("cancelled", 2),
    ] {
        assert!(
            metrics.contains(&format!("phoenix_api_tasks{{state=\"{state}\"}} {n}\n")),
            "{state}: {metrics}"
        );
    }
}

#[test]
fn concurrent_long_polls_claim_every_task_exactly_once() {
    const TASKS: usize = 200;
    const POLLERS: usize = 8;
    let s = Stack::start("");
    let admin = s.admin_token();
    let a = s.enroll_one(&admin, "busy-host");
    // Half the tasks are queued before the polls start, half while they run.
    let mut created: Vec<String> = (0..TASKS / 2)
        .map(|i| {
            new_task(
                &s,
                &admin,
                &a.id,
                json!({ "kind": "work", "payload": { "n": i } }),
            )
        })
        .collect();
    let claimed = Mutex::new(Vec::new());
    let creating = AtomicBool::new(true);
    std::thread::scope(|scope| {
        for _ in 0..POLLERS {
            scope.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let done = !creating.load(Ordering::SeqCst);
                    let r = s.poll(&a.credential, "wait=2&max=7");
                    assert_eq!(r.status, 200, "{r:?}");
                    let ids = task_ids(&r);
                    if ids.is_empty() && done {
                        break;
                    }
                    for id in ids {
                        let body =
                            json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "succeeded" });
                        let r = s.report(&a.credential, &id, &body);
                        assert_eq!(r.status, 200, "{r:?}");
                        mine.push(id);
                    }
                }
                claimed.lock().unwrap().push(mine);
            });
        }
        let more: Vec<String> = (TASKS / 2..TASKS)
            .map(|i| {
                new_task(
                    &s,
                    &admin,
                    &a.id,
                    json!({ "kind": "work", "payload": { "n": i } }),
                )
            })
            .collect();
        created.extend(more);
        creating.store(false, Ordering::SeqCst);
    });
    let per_poller = claimed.into_inner().unwrap();
    let busy = per_poller.iter().filter(|mine| !mine.is_empty()).count();
    assert!(
        busy >= 2,
        "the polls ran side by side: {busy} of {POLLERS} claimed tasks"
    );
    let claimed: Vec<String> = per_poller.into_iter().flatten().collect();
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a task was claimed twice");
    let expected: HashSet<&String> = created.iter().collect();
    assert_eq!(unique, expected, "every task claimed");
    let done = s.get(
        Some(&admin),
        &format!("/api/v1/tasks?agent={}&state=succeeded&limit=1000", a.id),
    );
    assert_eq!(done.body.as_array().unwrap().len(), TASKS);
    for t in done.body.as_array().unwrap() {
        assert_eq!(t["attempts"], 1, "{t}");
    }
}

/// The agents' metric write refuses what the other agent routes refuse,
/// with a problem document: a malformed group, a user token, too many
/// series, and a revoked agent's credential, while another agent's writes
/// go on. (Malformed bodies: `api_write.rs`.)
#[test]
fn metric_writes_refuse_a_bad_group_a_user_token_too_many_series_and_a_revoked_agent() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let [a, b]: [Agent; 2] = s
        .enroll(&admin, &["metrics-host", "other-host"])
        .try_into()
        .unwrap();
    let live = "phoenix_test_rss_bytes 1024\nphoenix_test_cpu_percent{comm=\"x' OR '1'='1\"} 1\n";
    for agent in [&a, &b] {
        let r = s.write_text(&agent.credential, "", live);
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        s.get(Some(&admin), &format!("/api/v1/agents/{}", a.id))
            .body["pushed_series"],
        2
    );
    let refused = |r: &Reply, status: u16, code: &str| {
        assert_eq!((r.status, r.code()), (status, code), "{r:?}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
    };
    refused(
        &s.write_text(&a.credential, "experiment=../../x", "m 1\n"),
        400,
        "invalid_group",
    );
    refused(
        &s.write_text(&admin, "", "m 1\n"),
        401,
        "user_token_refused",
    );
    let many: String = (0..50_001).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
    refused(
        &s.write_text(&a.credential, "", &many),
        400,
        "too_many_series",
    );
    // The old text push is gone.
    let r = s.reply(
        s.agent(Method::PUT, "/api/v1/agent/metrics")
            .bearer_auth(&a.credential)
            .header("content-type", "text/plain; version=0.0.4")
            .body("m 1\n"),
    );
    assert_eq!(r.status, 404, "{r:?}");

    assert_eq!(
        s.delete(Some(&admin), &format!("/api/v1/agents/{}", a.id))
            .status,
        204
    );
    refused(&s.write_text(&a.credential, "", live), 401, "agent_revoked");
    let r = s.write_text(&b.credential, "", live);
    assert_eq!(r.status, 200, "the other agent writes on: {r:?}");
}
