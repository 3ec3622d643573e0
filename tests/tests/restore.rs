//! `phoenixctl restore` with the real pgBackRest and PostgreSQL 15: rows
//! written through the API before a point in time come back, rows after it
//! do not, and the old data directory is kept.

use std::time::Duration;

use phoenix_tests::{Stack, Supervisor};

fn now_utc() -> String {
    // RFC 3339 in UTC with milliseconds, from the system clock.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    chrono_like(ms)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds (civil-from-days).
fn chrono_like(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn add_user(s: &Stack, name: &str) {
    let admin = s.admin_token();
    s.user_token(&admin, name, "viewer");
}

fn restore(s: &Stack, args: &[&str]) -> String {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    all.push("--yes");
    let out = s.sup.ctl(&all);
    let said = Supervisor::ok(&out);
    s.sup.wait_all_ready(Duration::from_secs(180));
    // The plan, the steps, then what was done.
    assert!(said.starts_with("This restores "), "{said}");
    assert!(said.contains("\n· stopping postgres\n"), "{said}");
    said.lines().last().unwrap_or_default().to_string()
}

#[test]
fn restore_to_a_time_brings_back_exactly_what_was_committed_by_then() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    Supervisor::ok(&s.sup.ctl(&["backup", "now"]));
    add_user(&s, "before1");
    std::thread::sleep(Duration::from_millis(1500));
    let t = now_utc();
    std::thread::sleep(Duration::from_millis(1500));
    add_user(&s, "after1");

    let said = restore(&s, &["--to", &t]);
    assert!(said.starts_with("restored the state of "), "{said}");
    let names = s.usernames();
    assert!(names.contains(&"before1".to_string()), "{names:?}");
    assert!(!names.contains(&"after1".to_string()), "{names:?}");
    // The old data is kept aside, whole.
    let kept: Vec<_> = std::fs::read_dir(s.sup.path("state/postgres"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data.before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        s.sup
            .path(&format!("state/postgres/{}/PG_VERSION", kept[0]))
            .exists()
    );
    assert!(said.contains(&kept[0]), "{said}");
    // The restore is in the restored database's audit log.
    let admin = s.admin_token();
    let rows = s.audit(&admin, "action=database.restore");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["actor"], "supervisor");

    // A second full after T: the restore must start from the first.
    Supervisor::ok(&s.sup.ctl(&["backup", "now"]));
    add_user(&s, "after2");
    restore(&s, &["--to", &t]);
    let names = s.usernames();
    assert!(names.contains(&"before1".to_string()), "{names:?}");
    assert!(!names.contains(&"after2".to_string()), "{names:?}");

    // T seconds before the command: its commits are archived first.
    add_user(&s, "last1");
    std::thread::sleep(Duration::from_millis(300));
    let t2 = now_utc();
    std::thread::sleep(Duration::from_millis(300));
    add_user(&s, "last2");
    restore(&s, &["--to", &t2]);
    let names = s.usernames();
    assert!(names.contains(&"last1".to_string()), "{names:?}");
    assert!(!names.contains(&"last2".to_string()), "{names:?}");

    // A backup by its label, as it ended: the first full, before any of them.
    let list: serde_json::Value =
        serde_json::from_str(&Supervisor::ok(&s.sup.ctl(&["--json", "backup", "list"]))).unwrap();
    let first = list["backups"][0]["label"].as_str().unwrap().to_string();
    let said = restore(&s, &["--backup", &first]);
    assert!(
        said.starts_with(&format!("restored backup {first} as it ended")),
        "{said}"
    );
    let names = s.usernames();
    assert!(!names.contains(&"before1".to_string()), "{names:?}");
}

#[test]
fn bad_restore_targets_are_refused_and_nothing_is_touched() {
    let s = Stack::start("");
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    let refused = |args: &[&str]| {
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        let out = s.sup.ctl(&all);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&["--latest", "--yes"]);
    assert!(e.contains("the local repository holds no backup"), "{e}");
    Supervisor::ok(&s.sup.ctl(&["backup", "now"]));
    let pg_pid = s.sup.pid_of("postgres");
    let e = refused(&["--to", "2001-01-01 00:00:00", "--yes"]);
    assert!(e.contains("is before the oldest backup"), "{e}");
    let e = refused(&["--to", "2999-01-01T00:00:00Z", "--yes"]);
    assert!(e.contains("is in the future"), "{e}");
    let e = refused(&["--to", "last tuesday", "--yes"]);
    assert!(e.contains("`last tuesday` is not a time"), "{e}");
    let e = refused(&["--backup", "20990101-000000F", "--yes"]);
    assert!(e.contains("there is no backup 20990101-000000F"), "{e}");
    let e = refused(&["--latest"]);
    assert!(e.contains("add --yes"), "{e}");
    let e = refused(&["--yes"]);
    assert!(e.contains("say what to restore to"), "{e}");
    // Nothing was stopped or moved.
    assert_eq!(s.sup.pid_of("postgres"), pg_pid);
    assert!(
        !std::fs::read_dir(s.sup.path("state/postgres"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("restore"))
    );
}

#[test]
fn a_supervisor_killed_during_a_restore_leaves_the_old_data_whole_and_the_stack_startable() {
    // PostgreSQL and the API only: what a restore touches.
    let ports = phoenix_tests::StackPorts::free();
    let config = ports.database_config("");
    let mut s = Stack::started(Supervisor::config(&config), ports);
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    add_user(&s, "kept1");
    Supervisor::ok(&s.sup.ctl(&["backup", "now"]));
    add_user(&s, "kept2");

    let mut restore = std::process::Command::new(phoenix_tests::bin("phoenixctl"))
        .args(["--socket"])
        .arg(s.sup.socket())
        .args(["restore", "--latest", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed while pgBackRest writes the copy beside the data directory.
    let restoring = s.sup.path("state/postgres/data.restoring");
    phoenix_tests::wait_until("the restore under way", Duration::from_secs(60), || {
        restoring.exists().then_some(())
    });
    s.sup.signal(nix::sys::signal::Signal::SIGKILL);
    s.sup.wait_exit(Duration::from_secs(5));
    let _ = restore.wait();

    s.sup.start();
    s.sup.wait_all_ready(Duration::from_secs(180));
    let names = s.usernames();
    for name in ["kept1", "kept2"] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    // And the next restore goes through.
    let said = restore_latest(&s);
    assert!(said.starts_with("restored backup "), "{said}");
    assert!(s.usernames().contains(&"kept2".to_string()));
}

fn restore_latest(s: &Stack) -> String {
    restore(s, &["--latest"])
}

#[test]
fn after_the_data_directory_is_lost_a_restore_loses_at_most_the_archive_timeout() {
    // archive_timeout 20 s instead of the default 60 s, to keep the test short.
    let ports = phoenix_tests::StackPorts::free();
    let config = ports.database_config("[backup]\nverify = false\narchive_timeout = \"20s\"\n");
    let mut s = Stack::started(Supervisor::config(&config), ports);
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    s.psql("CREATE TABLE rpo (t timestamptz NOT NULL DEFAULT clock_timestamp())");
    Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    // A steady write load: one committed row every 100 ms for 45 s.
    s.psql(
        "DO $$ BEGIN FOR i IN 1..450 LOOP INSERT INTO rpo DEFAULT VALUES; COMMIT; \
         PERFORM pg_sleep(0.1); END LOOP; END $$",
    );
    let last = s.psql("SELECT extract(epoch FROM max(t)) FROM rpo");
    // The machine is lost at once: no clean shutdown (which would switch
    // and archive the last WAL segment), then the data directory goes.
    let postmaster: i32 = std::fs::read_to_string(s.sup.path("state/postgres/data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    s.sup.signal(nix::sys::signal::Signal::SIGKILL);
    s.sup.wait_exit(Duration::from_secs(10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    phoenix_tests::wait_until("PostgreSQL gone", Duration::from_secs(30), || {
        (!std::path::Path::new(&format!("/proc/{postmaster}")).exists()).then_some(())
    });
    std::fs::remove_dir_all(s.sup.path("state/postgres/data")).unwrap();

    // A new, empty cluster starts; the restore replaces it.
    s.sup.start();
    s.sup.wait_state("api", "ready", Duration::from_secs(120));
    let said = restore(&s, &["--latest"]);
    assert!(said.starts_with("restored backup "), "{said}");
    let restored = s.psql("SELECT extract(epoch FROM max(t)) FROM rpo");
    let lost = last.parse::<f64>().unwrap() - restored.parse::<f64>().unwrap();
    println!("RPO: the last {lost:.1} s of commits were lost (archive_timeout 20 s)");
    assert!(
        (0.0..=25.0).contains(&lost),
        "lost {lost:.1} s: last commit {last}, newest restored {restored}"
    );
}
