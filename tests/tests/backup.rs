//! Backups with the real pgBackRest and PostgreSQL 15 under the supervisor.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::time::Duration;

use phoenix_tests::{Stack, wait_until};

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
