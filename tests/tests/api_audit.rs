//! The audit log under attack and over time, end to end on a real stack:
//! a flood of refused credentials with huge paths on both listeners writes a
//! few bounded rows whose counts add up; months past the retention an admin
//! sets are dropped whole (and the drop audited) while no row can be
//! changed or deleted.

use std::time::Duration;

use phoenix_tests::{Stack, https, wait_until};
use serde_json::{Value, json};

/// Every audit entry newer than `after`, newest first.
fn entries_after(s: &Stack, admin: &str, after: i64) -> Vec<Value> {
    s.audit(admin, "limit=1000")
        .into_iter()
        .filter(|e| e["id"].as_i64().unwrap() > after)
        .collect()
}

/// `n` requests from `threads` threads at once, each answered 401.
fn refused(n: usize, threads: usize, request: impl Fn(&reqwest::blocking::Client) -> u16 + Sync) {
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let client = https();
                for _ in 0..n / threads {
                    assert_eq!(request(&client), 401);
                }
            });
        }
    });
}

#[test]
fn a_flood_of_refused_credentials_with_long_paths_writes_a_few_bounded_rows() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let newest = s.audit(&admin, "limit=1")[0]["id"].as_i64().unwrap();

    let long = "x".repeat(60_000);
    let user_path = s.ports.api_url(&format!("/api/v1/agents/{long}"));
    let agent_path = s
        .ports
        .agent_url(&format!("/api/v1/agent/tasks/{long}/result"));
    refused(1000, 8, |client| {
        client
            .get(&user_path)
            .bearer_auth("not-a-token")
            .send()
            .expect("the user listener answers")
            .status()
            .as_u16()
    });
    refused(1000, 8, |client| {
        client
            .post(&agent_path)
            .bearer_auth("not-a-credential")
            .send()
            .expect("the agent listener answers")
            .status()
            .as_u16()
    });

    // The first refusal of each listener is visible at once. (Two rows
    // each if a flood outlasted its 60 s window on a slow machine.)
    let now = entries_after(&s, &admin, newest);
    for action in ["auth.token", "agent.auth"] {
        assert!(
            now.iter().any(|e| e["action"] == action && e["count"] == 1),
            "{action}: {now:#?}"
        );
    }
    assert!(now.len() <= 4, "{now:#?}");

    // The repeats are written when the window ends, or at shutdown.
    phoenix_tests::Supervisor::ok(&s.sup.ctl(&["restart", "api"]));
    s.sup.wait_state("api", "ready", Duration::from_secs(60));
    let rows = entries_after(&s, &admin, newest);
    assert!(rows.len() <= 8, "{} rows: {rows:#?}", rows.len());
    for action in ["auth.token", "agent.auth"] {
        let of: Vec<&Value> = rows.iter().filter(|e| e["action"] == action).collect();
        let total: i64 = of.iter().map(|e| e["count"].as_i64().unwrap()).sum();
        assert_eq!(total, 1000, "{action}: {of:#?}");
        assert!(
            of.iter()
                .any(|e| e["details"]["aggregated"]["window_secs"] == 60),
            "{action}: {of:#?}"
        );
    }
    for row in &rows {
        let target = row["target"].as_str().unwrap();
        assert!(target.chars().count() <= 256, "{target}");
        assert!(target.contains("…[600"), "cut with its length: {target}");
        assert_eq!(row["source_ip"], "127.0.0.1");
        assert_eq!(row["outcome"], "denied");
    }
    let bytes: usize = rows.iter().map(|e| e.to_string().len()).sum();
    assert!(bytes < 8 * 1024, "{bytes} bytes of audit entries");
}

#[test]
fn old_months_are_dropped_past_the_retention_and_rows_stay_unchangeable() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let viewer = s.user_token(&admin, "victor", "viewer");

    let retention = s.get(Some(&admin), "/api/v1/audit/retention");
    assert_eq!(retention.status, 200, "{retention:?}");
    assert_eq!(retention.body["months"], 13, "the default");
    assert_eq!(retention.body["updated_by"], "default");
    for months in [0, -1, 1201] {
        let r = s.put(
            Some(&admin),
            "/api/v1/audit/retention",
            &json!({ "months": months }),
        );
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_retention"),
            "{months}: {r:?}"
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    for r in [
        s.get(Some(&viewer), "/api/v1/audit/retention"),
        s.put(
            Some(&viewer),
            "/api/v1/audit/retention",
            &json!({ "months": 1 }),
        ),
    ] {
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
    }

    // A month long past and the month before last, both with entries,
    // written as the API's own role would.
    let two_ago = s
        .sql("SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '2 months', 'YYYYMM')")
        .unwrap();
    s.sql(&format!(
        "SELECT audit_log_create_partition('2020-01-01'); \
         SELECT audit_log_create_partition(to_date('{two_ago}', 'YYYYMM')); \
         INSERT INTO audit_log (at, actor, action, target, outcome) \
         SELECT '2020-01-10T00:00:00Z', 'user:admin', 'users.create', 'user:old' || i, 'success' \
         FROM generate_series(1, 3) AS i; \
         INSERT INTO audit_log (at, actor, action, target, outcome) \
         VALUES (to_date('{two_ago}', 'YYYYMM') + interval '1 day', 'user:admin', 'users.create', 'user:recent', 'success')"
    ))
    .unwrap();
    let held = s.get(Some(&admin), "/api/v1/audit/retention").body["held"].clone();
    assert!(
        held.as_array().unwrap().contains(&json!("2020-01")),
        "{held}"
    );

    let r = s.put(
        Some(&admin),
        "/api/v1/audit/retention",
        &json!({ "months": 2 }),
    );
    assert_eq!(
        (r.status, r.body["months"].as_i64()),
        (200, Some(2)),
        "{r:?}"
    );
    assert_eq!(r.body["updated_by"], "user:admin");
    wait_until("2020-01 dropped", Duration::from_secs(30), || {
        (s.sql("SELECT to_regclass('audit_log_p202001') IS NULL")
            .unwrap()
            == "t")
            .then_some(())
    });
    assert_eq!(
        s.sql(&format!("SELECT count(*) FROM audit_log_p{two_ago}"))
            .unwrap(),
        "1",
        "the month before last is kept with two months of retention"
    );
    let held = s.get(Some(&admin), "/api/v1/audit/retention").body["held"].clone();
    assert!(
        !held.as_array().unwrap().contains(&json!("2020-01")),
        "{held}"
    );

    let drops = s.audit(&admin, "action=audit.partition.drop");
    assert_eq!(drops.len(), 1, "{drops:#?}");
    assert_eq!(drops[0]["target"], "audit_log_p202001");
    assert_eq!(drops[0]["actor"], "system:housekeeping");
    assert_eq!(drops[0]["details"]["rows"], 3);
    assert_eq!(drops[0]["details"]["retention_months"], 2);
    let changes = s.audit(&admin, "action=audit.retention.update&outcome=success");
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0]["actor"], "user:admin");
    assert_eq!(changes[0]["details"], json!({ "from": 13, "to": 2 }));
    assert_eq!(
        s.audit(&admin, "action=audit.retention.update&outcome=denied")[0]["actor"],
        "user:victor"
    );

    // Append-only still: through the log and on a partition directly.
    for statement in [
        "UPDATE audit_log SET outcome = 'failure'".to_string(),
        "DELETE FROM audit_log WHERE action = 'users.create'".to_string(),
        "TRUNCATE audit_log".to_string(),
        format!("UPDATE audit_log_p{two_ago} SET target = 'user:forged'"),
        format!("DELETE FROM audit_log_p{two_ago}"),
        format!("TRUNCATE audit_log_p{two_ago}"),
    ] {
        let error = s.sql(&statement).unwrap_err();
        assert!(
            error.contains("audit_log is append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(
        s.sql("SELECT target FROM audit_log WHERE target = 'user:recent'")
            .unwrap(),
        "user:recent"
    );
}
