//! Backups with the real pgBackRest and PostgreSQL 15 under the supervisor.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::time::Duration;

use phoenix_tests::{Stack, Supervisor, wait_until};

/// pgBackRest run by hand as PostgreSQL's user with the supervisor's
/// generated configuration, as an operator would to look around.
fn pgbackrest(s: &Stack, args: &[&str]) -> Output {
    let password = std::fs::read_to_string(s.sup.path("state/secrets/postgres-superuser-password"))
        .expect("the superuser password");
    let config_path = s.sup.path("state/generated/pgbackrest");
    Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg("pgbackrest")
        .arg(format!("--config-path={}", config_path.display()))
        .arg("--stanza=phoenix")
        .args(args)
        .env("PGPASSWORD", password.trim())
        .current_dir("/")
        .output()
        .expect("pgbackrest runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn wal_is_archived_from_the_first_start_with_a_generated_configuration() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    assert_eq!(s.sup.service("backup-stanza")["last_exit"], "exit code 0");

    // The configuration is the supervisor's: root-owned, readable, no secret.
    let conf = s.sup.path("state/generated/pgbackrest/pgbackrest.conf");
    let meta = std::fs::metadata(&conf).expect("pgbackrest.conf");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644));
    let body = std::fs::read_to_string(&conf).unwrap();
    assert!(body.contains("[phoenix]\npg1-path="), "{body}");
    assert!(!body.to_lowercase().contains("password"), "{body}");

    // `check` makes PostgreSQL switch WAL and waits until pgBackRest has
    // the segment: archiving works end to end.
    let check = pgbackrest(&s, &["check"]);
    assert!(check.status.success(), "{}", text(&check));

    // PostgreSQL runs with the archive settings, and an operator's own
    // archive_command is refused (section_reload tests the refusal).
    let archived = wait_until("a WAL segment archived", Duration::from_secs(60), || {
        let out = pgbackrest(&s, &["info", "--output=json"]);
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        info[0]["archive"][0]["max"].as_str().map(str::to_string)
    });
    assert_eq!(archived.len(), 24, "a WAL segment name: {archived}");
}

#[test]
fn an_operator_backup_is_taken_verified_by_a_test_restore_and_listed() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    let admin = s.admin_token();
    s.user_token(&admin, "olivia", "operator");

    let out = s.sup.ctl(&["backup", "now", "--type", "full"]);
    let said = Supervisor::ok(&out);
    assert!(said.starts_with("full backup 2"), "{said}");
    // The test restore counted the API's rows: two users, no agent.
    assert!(said.contains("verification ok at "), "{said}");
    assert!(said.contains(": users 2, agents 0, audit rows "), "{said}");

    let out = s.sup.ctl(&["--json", "backup", "list"]);
    let list: serde_json::Value = serde_json::from_str(&Supervisor::ok(&out)).unwrap();
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{list}");
    let full = &backups[0];
    assert_eq!(
        (full["type"].as_str(), full["repo"].as_u64()),
        (Some("full"), Some(1))
    );
    assert_eq!(full["trigger"], "operator");
    assert!(
        full["verified"].as_str().unwrap().starts_with("ok at "),
        "{full}"
    );
    assert!(full["size_bytes"].as_u64().unwrap() > 1 << 20, "{full}");
    // The scratch copy is gone.
    let left: Vec<_> = std::fs::read_dir(s.sup.path("state/backup/verify"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Health and metrics know the newest full and its verification.
    let (code, health) = s.sup.health();
    assert_eq!(code, 200, "{health}");
    assert_eq!(
        health["checks"]["backup:age"][0]["status"], "pass",
        "{health}"
    );
    let verified = &health["checks"]["backup:verified"][0];
    assert_eq!(
        (
            verified["status"].as_str(),
            verified["observedValue"].as_str()
        ),
        (Some("pass"), Some("ok")),
        "{health}"
    );
    let metrics = s.sup.metrics();
    assert!(
        metrics.contains("phoenix_supervisor_backup_newest_full_verified 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("phoenix_supervisor_backup_last_success_timestamp_seconds{type=\"full\"}"),
        "{metrics}"
    );

    // In the audit log, by the supervisor.
    let rows = s.audit(&admin, "action=backup.full");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["actor"].as_str(), rows[0]["outcome"].as_str()),
        (Some("supervisor"), Some("success"))
    );
    assert_eq!(rows[0]["target"], full["label"]);

    let said = Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "diff"]));
    let label = full["label"].as_str().unwrap();
    assert!(said.starts_with(&format!("diff backup {label}_")), "{said}");
    assert!(
        !said.contains("verification"),
        "only fulls are restored: {said}"
    );
    let table = Supervisor::ok(&s.sup.ctl(&["backup", "list"]));
    assert!(table.starts_with("LABEL"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" local ")).count(),
        2,
        "{table}"
    );
}

#[test]
fn backup_commands_say_clearly_when_backups_are_off_or_the_type_is_wrong() {
    let s = Stack::start("[backup]\nenable = false\n");
    assert!(s.sup.try_status().unwrap()["backup"].is_null());
    let out = s.sup.ctl(&["backup", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backups are off here"), "{err}");
    let out = s.sup.ctl(&["backup", "now", "--type", "weekly"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'weekly'"), "{err}");
    // No archiving either: PostgreSQL runs without archive_mode.
    let pg = s.sup.service("postgres");
    assert_eq!(pg["state"], "ready");
    assert!(!s.sup.path("state/generated/pgbackrest").exists());
}

/// psql as PostgreSQL's superuser over the stack's socket.
fn psql(s: &Stack, sql: &str) -> String {
    let password = std::fs::read_to_string(s.sup.path("state/secrets/postgres-superuser-password"))
        .expect("the superuser password");
    let out = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-h"])
        .arg(s.sup.path("run/postgres"))
        .args([
            "-p",
            &s.ports.pg.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password.trim())
        .current_dir("/")
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn wal_archiving_that_fails_shows_in_health_until_it_works_again() {
    let ports = phoenix_tests::StackPorts::free();
    let mut sup = Supervisor::config(&ports.config(""));
    sup.set_env("PHOENIX_ARCHIVE_CHECK_INTERVAL", "1s");
    let s = Stack::started(sup, ports);
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    let check = |s: &Stack| {
        let (_, health) = s.sup.health();
        health["checks"]["backup:walArchive"][0].clone()
    };
    wait_until("archiving checked", Duration::from_secs(30), || {
        (check(&s)["status"] == "pass").then_some(())
    });
    // The repository goes away: archive-push fails, PostgreSQL keeps the WAL.
    let repo = s.sup.path("state/backup/repo");
    let away = s.sup.path("state/backup/repo.away");
    std::fs::rename(&repo, &away).unwrap();
    psql(&s, "SELECT pg_switch_wal()");
    let failing = wait_until("archiving seen failing", Duration::from_secs(60), || {
        let c = check(&s);
        (c["status"] == "warn").then_some(c)
    });
    assert!(
        failing["output"]
            .as_str()
            .unwrap()
            .starts_with("archiving has failed for "),
        "{failing}"
    );
    // Back: the segment is archived on PostgreSQL's next try, and health passes.
    std::fs::rename(&away, &repo).unwrap();
    wait_until("archiving works again", Duration::from_secs(120), || {
        (check(&s)["status"] == "pass").then_some(())
    });
}

#[test]
fn verify_finds_a_corrupted_backup_file_and_health_warns() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    let said = Supervisor::ok(&s.sup.ctl(&["backup", "now"]));
    assert!(said.contains("verification ok at "), "{said}");
    let list: serde_json::Value =
        serde_json::from_str(&Supervisor::ok(&s.sup.ctl(&["--json", "backup", "list"]))).unwrap();
    let label = list["backups"][0]["label"].as_str().unwrap().to_string();

    // One byte run of a data file in the repository overwritten.
    let dir = s.sup.path(&format!(
        "state/backup/repo/backup/phoenix/{label}/pg_data/base/1"
    ));
    let victim = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.metadata().unwrap().len() > 64)
        .expect("a data file");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[20..27].copy_from_slice(b"garbage");
    std::fs::write(&victim, bytes).unwrap();

    let out = s.sup.ctl(&["backup", "verify", &label]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("backup {label}: failed at ")),
        "{err}"
    );
    assert!(err.contains("checksum invalid: 1"), "{err}");
    let (_, health) = s.sup.health();
    let verified = &health["checks"]["backup:verified"][0];
    assert_eq!(verified["status"], "warn", "{health}");
    let admin = s.admin_token();
    let rows = s.audit(&admin, "action=backup.verify");
    assert_eq!(rows[0]["outcome"], "failure", "{rows:?}");
    let out = s.sup.ctl(&["backup", "verify", "20990101-000000F"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no backup 20990101-000000F"));
}
