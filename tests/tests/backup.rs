//! Backups with the real pgBackRest and PostgreSQL 15 under the supervisor.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::time::Duration;

use phoenix_tests::{Stack, Supervisor, output_text as text, wait_until};

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
    s.psql("SELECT pg_switch_wal()");
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

#[test]
fn the_test_restore_catches_a_backup_that_passes_verify_but_cannot_start() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    // postgresql.auto.conf is part of the backup: a library that does not
    // exist keeps every copy of it from starting, while the running server,
    // not restarted, carries on. Every file's checksum is right.
    s.psql("ALTER SYSTEM SET shared_preload_libraries = 'phoenix_no_such_library'");
    let out = s.sup.ctl(&["backup", "now", "--type", "full"]);
    let said = text(&out);
    assert!(
        said.contains("the restored PostgreSQL did not start")
            && said.contains("phoenix_no_such_library"),
        "{said}"
    );
    s.psql("ALTER SYSTEM RESET shared_preload_libraries");
    let (_, health) = s.sup.health();
    let verified = &health["checks"]["backup:verified"][0];
    assert_eq!(verified["status"], "warn", "{health}");
    let list: serde_json::Value =
        serde_json::from_str(&Supervisor::ok(&s.sup.ctl(&["--json", "backup", "list"]))).unwrap();
    let note = list["backups"][0]["verified"].as_str().unwrap();
    assert!(note.starts_with("failed at "), "{note}");
    assert!(
        !s.sup
            .path("state/backup/verify")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "the scratch directory is removed"
    );
}

fn local_fulls(s: &Stack) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&Supervisor::ok(&s.sup.ctl(&["--json", "backup", "list"]))).unwrap();
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "full" && b["repo"] == 1)
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retention_keeps_what_the_policy_says_and_waits_for_a_verified_full() {
    let s = Stack::start("[backup]\nretention_full_count = 2\n");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    let oldest_wal = || {
        let list: serde_json::Value =
            serde_json::from_str(&Supervisor::ok(&s.sup.ctl(&["--json", "backup", "list"])))
                .unwrap();
        list["wal"][0]["min"].as_str().unwrap().to_string()
    };
    Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    let first = local_fulls(&s);
    let wal_before = oldest_wal();
    for _ in 0..2 {
        Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    }
    let kept = local_fulls(&s);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        !kept.contains(&first[0]),
        "the oldest full expired: {kept:?}"
    );
    // The WAL only the expired full needed went with it.
    let wal_after = oldest_wal();
    assert!(wal_after > wal_before, "{wal_before} then {wal_after}");

    // The newest full fails its test restore: nothing is expired, so the
    // newest verified full stays.
    s.psql("ALTER SYSTEM SET shared_preload_libraries = 'phoenix_no_such_library'");
    let said = text(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    assert!(said.contains("did not start"), "{said}");
    s.psql("ALTER SYSTEM RESET shared_preload_libraries");
    let held = local_fulls(&s);
    assert_eq!(held.len(), 3, "{held:?}");
    assert_eq!(held[..2], kept[..], "{held:?}");
    assert!(
        s.sup.stderr().contains("retention held back"),
        "the hold is logged"
    );

    // A verified full again: the policy applies.
    Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    let after = local_fulls(&s);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], held[2], "{after:?}");
}

#[test]
fn a_supervisor_killed_during_a_backup_leaves_no_half_backup_listed_and_the_next_succeeds() {
    // PostgreSQL and the API only: what a backup touches.
    let ports = phoenix_tests::StackPorts::free();
    let config = ports.database_config("[backup]\ncompress = \"gz\"\nverify = false\n");
    let mut s = Stack::started(Supervisor::config(&config), ports);
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    // Enough data, gzip-compressed, that the copy is under way for a while.
    s.psql(
        "CREATE TABLE ballast AS SELECT g, md5(g::text) || repeat(md5(random()::text), 20) AS pad \
         FROM generate_series(1, 200000) g",
    );
    let mut backup = Command::new(phoenix_tests::bin("phoenixctl"))
        .args(["--socket"])
        .arg(s.sup.socket())
        .args(["backup", "now", "--type", "full"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sets = s.sup.path("state/backup/repo/backup/phoenix");
    phoenix_tests::wait_until("files being copied", Duration::from_secs(60), || {
        std::fs::read_dir(&sets)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with('F'))
            .and_then(|e| std::fs::read_dir(e.path().join("pg_data/base")).ok())
            .map(|_| ())
    });
    s.sup.signal(nix::sys::signal::Signal::SIGKILL);
    s.sup.wait_exit(Duration::from_secs(5));
    let _ = backup.wait();
    // pgBackRest died with the supervisor.
    let ours = format!(
        "pgbackrest --config-path={}.*--type=full",
        s.sup.path("state/generated/pgbackrest").display()
    );
    phoenix_tests::wait_until("pgbackrest gone", Duration::from_secs(30), || {
        let out = Command::new("pgrep").args(["-f", &ours]).output().unwrap();
        (!out.status.success()).then_some(())
    });

    s.sup.start();
    s.sup.wait_all_ready(Duration::from_secs(180));
    assert!(
        local_fulls(&s).is_empty(),
        "the half-done backup is not listed"
    );
    let said = Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    assert!(said.starts_with("full backup 2"), "{said}");
    assert_eq!(local_fulls(&s).len(), 1);
    let (_, health) = s.sup.health();
    assert_eq!(
        health["checks"]["backup:age"][0]["status"], "pass",
        "{health}"
    );
}
