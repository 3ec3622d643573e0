//! The offsite copy (`[backup.s3]`) with the real pgBackRest and
//! PostgreSQL 15 under the supervisor, against moto's S3 behind TLS with a
//! test CA (nginx in front for TLS; see `S3Server`), keys from a 0600 key
//! file.

use std::time::Duration;

use phoenix_tests::{
    S3_TEST_SECRET, S3Server, Stack, StackPorts, Supervisor, config_refused, wait_until,
};
use serde_json::Value;

const BUCKET: &str = "phoenix-offsite";

fn backups(s: &Stack) -> Vec<Value> {
    let out = s.sup.ctl(&["--json", "backup", "list"]);
    let list: Value = serde_json::from_str(&Supervisor::ok(&out)).unwrap();
    list["backups"].as_array().unwrap().clone()
}

fn offsite(s: &Stack) -> Value {
    let (_, health) = s.sup.health();
    health["checks"]["backup:offsite"][0].clone()
}

/// A stack whose `[backup.s3]` points at `s3`; the retry starts at `retry`.
fn stack_with(s3: &mut S3Server, dir: &std::path::Path, retry: &str) -> Stack {
    s3.create_bucket(BUCKET);
    let key_file = s3.key_file(dir);
    let ports = StackPorts::free();
    let mut sup = Supervisor::config(&ports.config(&s3.backup_toml(BUCKET, &key_file)));
    sup.set_env("PHOENIX_OFFSITE_RETRY", retry);
    let s = Stack::started(sup, ports);
    s.sup
        .wait_state("backup-stanza", "exited", Duration::from_secs(60));
    assert_eq!(s.sup.service("backup-stanza")["last_exit"], "exit code 0");
    s
}

#[test]
fn a_full_backup_lands_in_both_repositories_with_wal_and_the_appliance_state_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(dir.path());
    let s = stack_with(&mut s3, dir.path(), "2s");

    // The keys reach pgBackRest through its include file, never the 0644 conf.
    let conf =
        std::fs::read_to_string(s.sup.path("state/generated/pgbackrest/pgbackrest.conf")).unwrap();
    assert!(conf.contains("repo2-type=s3\n"), "{conf}");
    assert!(!conf.contains(S3_TEST_SECRET), "{conf}");
    let include = s.sup.path("state/generated/pgbackrest/conf.d/s3-keys.conf");
    let meta = std::fs::metadata(&include).unwrap();
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::mode(&meta) & 0o777
        ),
        (postgres.uid.as_raw(), 0o600)
    );

    let said = Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    assert!(said.contains("verification ok at "), "{said}");
    let both = wait_until("the full copied to repo2", Duration::from_secs(180), || {
        let list = backups(&s);
        let repos: Vec<u64> = list
            .iter()
            .filter(|b| b["type"] == "full")
            .filter_map(|b| b["repo"].as_u64())
            .collect();
        (repos.contains(&1) && repos.contains(&2)).then_some(list)
    });
    let local = both.iter().find(|b| b["repo"] == 1).unwrap();
    let remote = both.iter().find(|b| b["repo"] == 2).unwrap();
    assert_eq!(remote["copy_of"], local["label"], "{remote}");
    assert_eq!(remote["trigger"], "offsite");

    // WAL and the backup in the bucket, under repo2-path.
    let keys = wait_until("WAL in the bucket", Duration::from_secs(120), || {
        let keys = s3.keys(BUCKET);
        keys.iter()
            .any(|k| k.starts_with("phoenix/archive/phoenix/15-1/") && !k.ends_with(".info"))
            .then_some(keys)
    });
    assert!(
        keys.iter()
            .any(|k| k.starts_with("phoenix/backup/phoenix/")),
        "{keys:?}"
    );
    // The appliance's state: timestamped and latest, the manifest last.
    let state = wait_until("the appliance's state", Duration::from_secs(60), || {
        let keys = s3.keys(BUCKET);
        keys.iter()
            .any(|k| k == "phoenix/appliance/latest/manifest.json")
            .then_some(keys)
    });
    for name in [
        "phoenix.toml",
        "secrets/postgres-superuser-password",
        "secrets/initial-admin-password",
        "tls/cert.pem",
        "tls/key.pem",
    ] {
        let key = format!("phoenix/appliance/latest/{name}");
        assert!(state.contains(&key), "{key} in {state:?}");
    }
    assert!(
        state
            .iter()
            .any(|k| k.starts_with("phoenix/appliance/2") && k.ends_with("/phoenix.toml")),
        "{state:?}"
    );
    let manifest = s3
        .python(
            "print(s3.get_object(Bucket='phoenix-offsite', \
             Key='phoenix/appliance/latest/manifest.json')['Body'].read().decode())",
        )
        .unwrap();
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["local_backup"], local["label"]);
    assert_eq!(manifest["repo2_backup"], remote["label"]);

    let check = offsite(&s);
    assert_eq!(check["status"], "pass", "{check}");
    let metrics = s.sup.metrics();
    assert!(
        metrics.contains("phoenix_supervisor_backup_offsite_last_success_timestamp_seconds "),
        "{metrics}"
    );
    assert!(
        metrics.contains("phoenix_supervisor_backup_offsite_failures 0"),
        "{metrics}"
    );
    // No key in the status or the supervisor's log.
    let status = s.sup.status().to_string();
    assert!(!status.contains(S3_TEST_SECRET));
    assert!(!s.sup.stderr().contains(S3_TEST_SECRET));

    // The local repository is lost; S3 alone brings back everything,
    // including a user added after the copy (its WAL reaches the bucket).
    let admin = s.admin_token();
    s.user_token(&admin, "after_the_copy", "viewer");
    let before = s.usernames();
    assert!(before.contains(&"after_the_copy".to_string()), "{before:?}");
    let repo = s.sup.path("state/backup/repo");
    for entry in std::fs::read_dir(&repo).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let out = s.sup.ctl(&["restore", "--latest", "--from", "s3", "--yes"]);
    let said = Supervisor::ok(&out);
    assert!(said.contains("from the S3 repository"), "{said}");
    s.sup.wait_all_ready(Duration::from_secs(180));
    assert_eq!(s.usernames(), before);
}

#[test]
fn with_s3_down_the_local_backup_succeeds_health_warns_and_the_copy_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(dir.path());
    let s = stack_with(&mut s3, dir.path(), "2s");
    s3.down();

    let said = Supervisor::ok(&s.sup.ctl(&["backup", "now", "--type", "full"]));
    assert!(said.starts_with("full backup 2"), "{said}");
    let check = wait_until("backup:offsite warns", Duration::from_secs(120), || {
        let check = offsite(&s);
        (check["status"] == "warn").then_some(check)
    });
    assert!(
        check["output"]
            .as_str()
            .unwrap()
            .contains("the last copy failed"),
        "{check}"
    );
    let (code, _) = s.sup.health();
    assert_eq!(code, 200, "a warning does not fail the appliance");
    let metrics = s.sup.metrics();
    assert!(
        !metrics.contains("phoenix_supervisor_backup_offsite_failed_attempts_total 0"),
        "{metrics}"
    );

    s3.up();
    let check = wait_until("the copy retried", Duration::from_secs(240), || {
        let check = offsite(&s);
        (check["status"] == "pass" && check["observedValue"].is_string()).then_some(check)
    });
    assert!(
        check["output"]
            .as_str()
            .unwrap()
            .contains("the last copy: "),
        "{check}"
    );
    assert!(
        backups(&s)
            .iter()
            .any(|b| b["repo"] == 2 && b["type"] == "full"),
        "a full in repo2"
    );
}

#[test]
fn bad_s3_settings_are_refused_by_check_config_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_refused(
        "[backup.s3]\nbucket = \"b-1\"\nregion = \"us-east-1\"\ncredentials = \"file\"\n",
    );
    assert!(
        err.contains(":4:1: backup.s3.credentials: credentials = \"file\" needs `key_file`"),
        "{err}"
    );

    let keys = dir.path().join("keys");
    std::fs::write(&keys, "AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n").unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = config_refused(&format!(
        "[backup.s3]\nbucket = \"b-1\"\nregion = \"us-east-1\"\ncredentials = \"file\"\nkey_file = \"{}\"\n",
        keys.display()
    ));
    assert!(
        err.contains(&format!(
            ":5:1: backup.s3.key_file: the key file {} has mode 0644; it must be 0600",
            keys.display()
        )),
        "{err}"
    );

    let err = config_refused("[backup.s3]\nregion = \"us-east-1\"\n");
    assert!(
        err.contains(":1:9: backup.s3.bucket: [backup.s3] needs `bucket`"),
        "{err}"
    );
    let err = config_refused(
        "[backup.s3]\nbucket = \"b-1\"\nregion = \"r\"\nsecret_access_key = \"x\"\n",
    );
    assert!(err.contains("unknown field `secret_access_key`"), "{err}");
}

#[test]
fn a_new_machine_is_rebuilt_from_the_bucket_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(dir.path());
    let old = stack_with(&mut s3, dir.path(), "2s");
    let admin_password = old.admin_password();
    Supervisor::ok(&old.sup.ctl(&["backup", "now", "--type", "full"]));
    wait_until("the state in the bucket", Duration::from_secs(180), || {
        s3.keys(BUCKET)
            .iter()
            .any(|k| k == "phoenix/appliance/latest/manifest.json")
            .then_some(())
    });
    let admin = old.admin_token();
    old.user_token(&admin, "written_before_the_loss", "viewer");
    let users = old.usernames();
    // The segment holding that user reaches the bucket.
    let segment = old.psql("SELECT pg_walfile_name(pg_switch_wal())");
    wait_until("its WAL in the bucket", Duration::from_secs(120), || {
        s3.keys(BUCKET)
            .iter()
            .any(|k| k.contains(&format!("/{segment}-")))
            .then_some(())
    });
    // The machine is lost, with its disk.
    let ports = old.ports;
    drop(old);

    // A new machine: the files the bucket keeps, put in place before the
    // first start, as docs/operations.md says.
    let fetched = dir.path().join("fetched");
    s3.python(&format!(
        "import os\n\
         for o in s3.list_objects_v2(Bucket='{BUCKET}', Prefix='phoenix/appliance/latest/')['Contents']:\n\
         \x20   p = os.path.join('{}', o['Key'][len('phoenix/appliance/latest/'):])\n\
         \x20   os.makedirs(os.path.dirname(p), exist_ok=True)\n\
         \x20   s3.download_file('{BUCKET}', o['Key'], p)",
        fetched.display()
    ))
    .unwrap();
    let toml = std::fs::read_to_string(fetched.join("phoenix.toml")).unwrap();
    // The harness writes each machine's own directories and health port
    // first; the rest is the operator's file as it was.
    let body = toml
        .split_once("[health]\n")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .unwrap()
        .1;
    let mut sup = Supervisor::config(body);
    sup.set_env("PHOENIX_OFFSITE_RETRY", "2s");
    for (from, to) in [("secrets", "state/secrets"), ("tls", "state/tls")] {
        let to = sup.path(to);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(fetched.join(from)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    sup.start();
    sup.wait_state("api", "ready", Duration::from_secs(180));
    let new = Stack::attach(sup, ports);
    let said = Supervisor::ok(
        &new.sup
            .ctl(&["restore", "--latest", "--from", "s3", "--yes"]),
    );
    assert!(
        said.contains("is not the cluster the repository holds"),
        "{said}"
    );
    new.sup.wait_state("api", "ready", Duration::from_secs(180));
    assert_eq!(new.usernames(), users);
    assert!(!new.login("admin", &admin_password).is_empty());
}
