//! The growth path beyond one VM (docs/scaling.md), phase 2: the API on an
//! external PostgreSQL (a second PostgreSQL 15 standing in for RDS, TLS
//! only, scram-sha-256), and what health says when it is unreachable or
//! its certificate does not verify.

use std::path::Path;
use std::time::Duration;

use phoenix_tests::pg::ExternalPostgres;
use phoenix_tests::{Stack, StackPorts, Supervisor, root_or_opted_out, wait_until};
use serde_json::Value;

fn external_config(ports: &StackPorts, pg: &ExternalPostgres, ca: &Path) -> String {
    format!(
        "[postgres]\nurl = \"{}\"\nca_file = \"{}\"\npassword_file = \"{}\"\n\
         [prometheus]\nenable = false\n[pushgateway]\nenable = false\n\
         [api]\nlisten = \"127.0.0.1:{}\"\nagent_listen = \"127.0.0.1:{}\"\n[tls]\n{}\n",
        pg.url(),
        ca.display(),
        pg.password_file.display(),
        ports.api,
        ports.agent,
        ports.http_listen()
    )
}

fn external_check(stack: &Stack) -> Value {
    let (_, health) = stack.sup.health();
    health["checks"]["postgres:external"][0].clone()
}

#[test]
fn the_api_runs_on_an_external_database_over_verified_tls() {
    if !root_or_opted_out("the external PostgreSQL runs as the postgres user") {
        return;
    }
    let pg = ExternalPostgres::start(true);
    let ports = StackPorts::free();
    let text = external_config(&ports, &pg, &pg.ca_file);
    let stack = Stack::started(Supervisor::config(&text), ports);

    // The built-in PostgreSQL and its backups stepped aside, and health
    // says so and checks the external database instead.
    let (code, health) = stack.sup.health();
    assert_eq!(code, 200, "{health}");
    let checks = health["checks"].as_object().unwrap();
    assert!(
        !checks
            .keys()
            .any(|k| k.starts_with("postgres:state") || k.starts_with("backup:")),
        "{health}"
    );
    let check = &checks["postgres:external"][0];
    assert_eq!(check["status"], "pass", "{health}");
    assert_eq!(check["componentId"], format!("localhost:{}", pg.port));
    let notes = health["notes"].to_string();
    assert!(
        notes.contains("the API's database is external") && notes.contains("TLS verify-full"),
        "{notes}"
    );

    // The API keeps its data there, over TLS, logged in by password.
    let admin = stack.admin_token();
    let r = stack.post(
        Some(&admin),
        "/api/v1/users",
        &serde_json::json!({ "username": "on-rds", "password": "on-rds-password-1", "role": "viewer" }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT count(*) FROM users WHERE username = 'on-rds'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'phoenix'"
        ),
        "t",
        "every connection of the API is TLS"
    );
    assert!(
        pg.log().is_empty() || !pg.log().contains("no pg_hba.conf entry"),
        "{}",
        pg.log()
    );

    // A CA that did not sign the server's certificate: health names it,
    // and the API says why it cannot start rather than retrying blindly.
    stack
        .sup
        .write_config(&external_config(&stack.ports, &pg, &pg.wrong_ca_file));
    Supervisor::ok(&stack.sup.ctl(&["reload"]));
    let check = wait_until(
        "health to fail the wrong CA",
        Duration::from_secs(30),
        || {
            let c = external_check(&stack);
            (c["status"] == "fail").then_some(c)
        },
    );
    let output = check["output"].as_str().unwrap();
    assert!(
        output.contains("TLS with localhost:")
            && output.contains(&format!("is {} the CA", pg.wrong_ca_file.display())),
        "{output}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(stack.sup.path("log/api.log")).unwrap_or_default();
        if log.contains("TLS with PostgreSQL at phoenix@localhost") {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API did not refuse the certificate:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(log.contains("([postgres] ca_file)"), "{log}");
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT count(*) FROM users WHERE username = 'on-rds'"
        ),
        "1",
        "nothing lost"
    );

    // The right CA again: healthy, with the data.
    stack
        .sup
        .write_config(&external_config(&stack.ports, &pg, &pg.ca_file));
    Supervisor::ok(&stack.sup.ctl(&["reload"]));
    stack
        .sup
        .wait_state("api", "ready", Duration::from_secs(120));
    wait_until("health to pass again", Duration::from_secs(30), || {
        (external_check(&stack)["status"] == "pass").then_some(())
    });
    let names = stack.usernames();
    assert!(names.contains(&"on-rds".to_string()), "{names:?}");

    // The database goes away: health fails and says where it looked.
    let port = pg.port;
    drop(pg);
    let check = wait_until(
        "health to fail the unreachable database",
        Duration::from_secs(40),
        || {
            let c = external_check(&stack);
            (c["status"] == "fail").then_some(c)
        },
    );
    assert!(
        check["output"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot connect to localhost:{port}")),
        "{check}"
    );
    let (code, _) = stack.sup.health();
    assert_eq!(code, 503, "a failing check fails health");
}

/// Every table of the API's database with its rows, `table|rows` lines.
const ROW_COUNTS: &str = "SELECT table_name || '|' || (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM public.%I', table_name), false, true, '')))[1]::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1";

fn counts(lines: &str) -> std::collections::BTreeMap<String, u64> {
    lines
        .lines()
        .filter_map(|l| l.rsplit_once('|'))
        .map(|(t, n)| (t.to_string(), n.parse().unwrap()))
        .collect()
}

#[test]
fn migrate_database_moves_a_populated_appliance_with_every_row() {
    if !root_or_opted_out("the external PostgreSQL runs as the postgres user") {
        return;
    }
    let ports = StackPorts::free();
    let stack = Stack::started(Supervisor::config(&ports.database_config("")), ports);
    let admin = stack.admin_token();
    for (name, role) in [
        ("ops-1", "operator"),
        ("ops-2", "operator"),
        ("watch-1", "viewer"),
    ] {
        stack.user_token(&admin, name, role);
    }
    stack.enroll(&admin, &["web-1", "db-1"]);
    let pg = ExternalPostgres::start(true);
    pg.psql("phoenix", "CREATE TABLE leftover (x int)");
    let migrate = |ca: &Path, extra: &[&str]| {
        let mut args = vec![
            "migrate-database".to_string(),
            "--to".into(),
            pg.url(),
            "--password-file".into(),
            pg.password_file.display().to_string(),
            "--ca-file".into(),
            ca.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stack.sup.ctl(&args)
    };
    let config_before = std::fs::read_to_string(stack.sup.path("phoenix.toml")).unwrap();

    // A target that is not empty, or whose certificate does not verify,
    // is refused before anything stops.
    let out = migrate(&pg.ca_file, &["--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the target database is not empty (1 tables, views or sequences")
            && err.contains("nothing was changed"),
        "{err}"
    );
    let out = migrate(&pg.wrong_ca_file, &["--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not answer as it must") && err.contains("certificate verify failed"),
        "{err}"
    );
    let out = stack.sup.ctl(&[
        "migrate-database",
        "--to",
        &pg.url().replace("postgres://", "mysql://"),
        "--password-file",
        &pg.password_file.display().to_string(),
        "--yes",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--to: must start with postgres://"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(stack.sup.path("phoenix.toml")).unwrap(),
        config_before
    );
    stack
        .sup
        .wait_state("api", "ready", Duration::from_secs(10));
    assert!(
        !stack.sup.path("state/secrets/database-password").exists(),
        "a refused migration leaves no password behind"
    );

    pg.psql("phoenix", "DROP TABLE leftover");
    let out = migrate(&pg.ca_file, &["--dry-run"]);
    let plan = Supervisor::ok(&out);
    assert!(
        plan.contains("would move") && plan.contains("reachable and empty"),
        "{plan}"
    );
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );

    let before = counts(&stack.psql_in("phoenix", ROW_COUNTS));
    assert!(before["users"] >= 4 && before["agents"] == 2, "{before:?}");
    let out = migrate(&pg.ca_file, &["--yes"]);
    let done = Supervisor::ok(&out);
    println!("{done}");
    assert!(
        done.contains("every count equal") && done.contains("the API runs on it now"),
        "{done}"
    );

    // Every row is there; the migration is in the audit log.
    let after = counts(&pg.psql("phoenix", ROW_COUNTS));
    let audit = |c: &std::collections::BTreeMap<String, u64>| -> u64 {
        c.iter()
            .filter(|(t, _)| t.starts_with("audit_log_p"))
            .map(|(_, n)| n)
            .sum()
    };
    for (table, rows) in before.iter().filter(|(t, _)| !t.starts_with("audit_log")) {
        assert_eq!(
            after.get(table),
            Some(rows),
            "{table}: {before:?} -> {after:?}"
        );
    }
    // The migration's own row, in the log (and one of its partitions).
    assert_eq!(after["audit_log"], before["audit_log"] + 1, "{after:?}");
    assert_eq!(audit(&after), audit(&before) + 1, "{after:?}");
    assert_eq!(after.len(), before.len(), "{after:?}");
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT actor || ' ' || outcome || ' ' || (details->>'rows') FROM audit_log WHERE action = 'database.migrate'"
        ),
        format!("supervisor success {}", before.values().sum::<u64>())
    );

    // The config names the target, the built-in stepped aside, and the
    // appliance is healthy on the external database.
    let config = std::fs::read_to_string(stack.sup.path("phoenix.toml")).unwrap();
    assert!(
        config.contains(&format!("url = \"{}\"", pg.url()))
            && config.contains(&format!("ca_file = \"{}\"", pg.ca_file.display())),
        "{config}"
    );
    let secret = std::fs::metadata(stack.sup.path("state/secrets/database-password")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&secret.permissions()) & 0o777,
        0o600
    );
    // The built-in PostgreSQL may still be shutting down (a checkpoint)
    // when the external check first passes: wait for both.
    wait_until(
        "health to check the external database, the built-in stopped",
        Duration::from_secs(40),
        || {
            let (_, health) = stack.sup.health();
            (health["checks"]["postgres:external"][0]["status"] == "pass"
                && health["checks"].get("postgres:state").is_none())
            .then_some(())
        },
    );
    let (code, health) = stack.sup.health();
    assert_eq!(code, 200, "{health}");
    assert!(health["checks"].get("postgres:state").is_none(), "{health}");
    let names = stack.usernames();
    for name in ["admin", "ops-1", "ops-2", "watch-1"] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }
    let r = stack.post(
        Some(&stack.admin_token()),
        "/api/v1/users",
        &serde_json::json!({ "username": "after-move", "password": "after-move-password-1", "role": "viewer" }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        pg.psql(
            "phoenix",
            "SELECT count(*) FROM users WHERE username = 'after-move'"
        ),
        "1",
        "new writes land on the external database"
    );
}
