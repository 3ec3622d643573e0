//! The supervisor runs as root among directories that service users own:
//! nothing a service user puts there (symbolic links above all) may make it
//! write, chown or chmod anything else. Each attack is played as the
//! service user itself (`setpriv`), against a root-owned victim that must
//! come out unchanged. And a `state_dir` the service users cannot reach is
//! refused before anything starts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use phoenix_tests::{
    NOT_ROOT_ENV, StackPorts, Supervisor, free_port, processes_matching, root_or_opted_out,
    wait_until,
};

struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// The service user `name`, when the tests run as root (only root switches
/// users). Without root the test fails, or with `PHOENIX_TESTS_NOT_ROOT=1`
/// this is None and the test skips itself, saying so.
fn service_user(name: &'static str) -> Option<User> {
    if !root_or_opted_out("a supervisor running as root, with service users,") {
        return None;
    }
    let u = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("user {name} (scripts/setup.sh creates it)"));
    Some(User {
        name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// `argv` run as `user`, with no other group.
fn as_user(user: &User, argv: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--"])
        .args(argv)
        .output()
        .expect("run setpriv")
}

fn ok_as(user: &User, argv: &[&str]) {
    let out = as_user(user, argv);
    assert!(
        out.status.success(),
        "{argv:?} as {}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What the attacks aim at: a root-owned 0600 file and a root-owned 0700
/// directory holding one file.
struct Victims {
    file: PathBuf,
    dir: PathBuf,
}

impl Victims {
    fn new(sup: &Supervisor) -> Victims {
        let file = sup.path("victim");
        std::fs::write(&file, "root's own\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = sup.path("victim-dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("inside"), "root's own\n").unwrap();
        Victims { file, dir }
    }

    fn unchanged(&self) {
        let f = std::fs::metadata(&self.file).unwrap();
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            "root's own\n",
            "the victim file's contents"
        );
        assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o600, 0, 0));
        let d = std::fs::metadata(&self.dir).unwrap();
        assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o700, 0, 0));
        let inside = std::fs::metadata(self.dir.join("inside")).unwrap();
        assert_eq!((inside.uid(), inside.gid()), (0, 0));
        assert_eq!(std::fs::read_dir(&self.dir).unwrap().count(), 1);
    }
}

/// Only the built-in Prometheus (as user `prometheus`).
fn prometheus_only() -> String {
    format!(
        "[postgres]\nenable = false\nexternal_url = \"postgres://x@127.0.0.1:1/x\"\n\
         [api]\nenable = false\n[pushgateway]\nenable = false\n\
         [prometheus]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    )
}

/// Kill the service as its own user (what a compromised service can do)
/// and wait for the supervisor to have reacted.
fn kill_own(user: &User, sup: &Supervisor, service: &str) -> i32 {
    let pid = sup.pid_of(service);
    ok_as(user, &["kill", "-KILL", &pid.to_string()]);
    wait_until("the exit noticed", Duration::from_secs(20), || {
        (sup.service(service)["pid"].as_i64() != Some(pid as i64)).then_some(())
    });
    pid
}

fn root_owned(path: &Path, mode: u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(!m.file_type().is_symlink(), "{}", path.display());
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (mode, 0),
        "{} is root's, mode {mode:o}",
        path.display()
    );
}

#[test]
fn links_at_prometheus_yml_and_its_temporary_names_never_redirect_the_write() {
    let Some(prom) = service_user("prometheus") else {
        return;
    };
    let mut sup = Supervisor::config(&prometheus_only());
    let victims = Victims::new(&sup);
    sup.start();
    sup.wait_state("prometheus", "ready", Duration::from_secs(60));

    // In its own directory, links at the old place of prometheus.yml and at
    // every temporary name the old write helper would have used.
    let own = sup.path("state/prometheus");
    let mut names = vec!["prometheus.yml".to_string()];
    names.extend((0..100).map(|n| format!(".prometheus.yml.tmp{}-{n}", sup.pid())));
    for name in &names {
        ok_as(&prom, &["ln", "-sf", s(&victims.file), s(&own.join(name))]);
    }
    // The file is now where only root writes.
    let generated = sup.path("state/generated/prometheus");
    let out = as_user(
        &prom,
        &[
            "ln",
            "-s",
            s(&victims.file),
            s(&generated.join(".prometheus.yml.tmp")),
        ],
    );
    assert!(!out.status.success(), "prometheus cannot write there");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    let old = kill_own(&prom, &sup, "prometheus");
    wait_until("prometheus back", Duration::from_secs(60), || {
        let svc = sup.service("prometheus");
        (svc["state"] == "ready" && svc["pid"].as_i64() != Some(old as i64)).then_some(())
    });
    victims.unchanged();
    let yml = generated.join("prometheus.yml");
    root_owned(&generated, 0o755);
    root_owned(&yml, 0o644);
    assert!(
        std::fs::read_to_string(&yml)
            .unwrap()
            .starts_with("# Generated by phoenix-supervisor")
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", sup.pid_of("prometheus"))).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&format!("--config.file={}", yml.display())),
        "prometheus reads the generated file"
    );
    for name in &names {
        assert!(
            std::fs::symlink_metadata(own.join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "the service's own files are left alone"
        );
    }
}

#[test]
fn a_data_directory_swapped_for_a_link_is_refused_not_chowned() {
    let Some(prom) = service_user("prometheus") else {
        return;
    };
    let mut sup = Supervisor::config(&prometheus_only());
    let victims = Victims::new(&sup);
    sup.start();
    sup.wait_state("prometheus", "ready", Duration::from_secs(60));

    let data = sup.path("state/prometheus/data");
    let aside = sup.path("state/prometheus/data.aside");
    ok_as(&prom, &["mv", s(&data), s(&aside)]);
    ok_as(&prom, &["ln", "-s", s(&victims.dir), s(&data)]);

    // A reload that changes nothing touches no service directory.
    Supervisor::ok(&sup.ctl(&["reload"]));
    victims.unchanged();

    // Its next start would hand `data` to prometheus: refused instead, and
    // the service does not start.
    kill_own(&prom, &sup, "prometheus");
    let error = wait_until("the refusal reported", Duration::from_secs(30), || {
        sup.service("prometheus")["last_error"]
            .as_str()
            .filter(|e| e.contains("symbolic link"))
            .map(str::to_string)
    });
    assert!(
        error.contains(&format!("{} is a symbolic link", data.display()))
            && error.contains(&victims.dir.display().to_string())
            && error.contains("owned by prometheus"),
        "{error}"
    );
    assert_ne!(sup.state_of("prometheus"), "ready");
    assert!(sup.stderr().contains("is a symbolic link"), "logged");
    let log = std::fs::read_to_string(sup.path("log/prometheus.log")).unwrap();
    assert!(log.contains("cannot start: "), "{log}");
    victims.unchanged();

    // Put right, it starts again.
    ok_as(&prom, &["rm", s(&data)]);
    ok_as(&prom, &["mv", s(&aside), s(&data)]);
    Supervisor::ok(&sup.ctl(&["restart", "prometheus"]));
    sup.wait_state("prometheus", "ready", Duration::from_secs(60));
    let meta = std::fs::symlink_metadata(&data).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), prom.uid);
    victims.unchanged();
}

#[test]
fn setup_sql_is_written_where_postgres_cannot_reach() {
    let Some(pg) = service_user("postgres") else {
        return;
    };
    let ports = StackPorts::free();
    let mut sup = Supervisor::config(&format!(
        "[postgres]\nport = {}\n[prometheus]\nenable = false\n[pushgateway]\nenable = false\n\
         [api]\nlisten = \"127.0.0.1:{}\"\nagent_listen = \"127.0.0.1:{}\"\n[tls]\n{}\n",
        ports.pg,
        ports.api,
        ports.agent,
        ports.http_listen()
    ));
    let victims = Victims::new(&sup);
    sup.start();
    sup.wait_all_ready(Duration::from_secs(180));

    let own = sup.path("state/postgres");
    let mut names = vec!["setup.sql".to_string()];
    names.extend((0..100).map(|n| format!(".setup.sql.tmp{}-{n}", sup.pid())));
    for name in &names {
        ok_as(&pg, &["ln", "-sf", s(&victims.file), s(&own.join(name))]);
    }
    let generated = sup.path("state/generated/postgres-setup");
    let out = as_user(&pg, &["touch", s(&generated.join("setup.sql"))]);
    assert!(
        !out.status.success(),
        "postgres cannot change what psql runs as root"
    );

    // Its own server killed, and the setup run again.
    kill_own(&pg, &sup, "postgres");
    sup.wait_state("postgres", "ready", Duration::from_secs(120));
    Supervisor::ok(&sup.ctl(&["restart", "postgres-setup"]));
    let log = sup.path("log/postgres-setup.log");
    wait_until("the setup run again", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches("started pid").count() >= 2 && sup.state_of("postgres-setup") == "exited")
            .then_some(text)
    });
    victims.unchanged();
    let sql = generated.join("setup.sql");
    root_owned(&generated, 0o755);
    root_owned(&sql, 0o644);
    assert!(
        std::fs::read_to_string(&sql)
            .unwrap()
            .contains("CREATE ROLE phoenix")
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("-f {}", sql.display())),
        "psql runs the generated file: {text}"
    );
}

#[test]
fn a_state_dir_the_service_users_cannot_enter_is_refused_before_anything_starts() {
    if service_user("postgres").is_none() {
        return;
    }
    let ports = StackPorts::free();
    let mut sup = Supervisor::config(&ports.config(""));
    let parent = sup.dir.path().to_path_buf();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    sup.start();
    let status = sup.wait_exit(Duration::from_secs(30));
    let err = sup.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    for (user, services) in [
        ("postgres", "postgres-init, postgres, backup-stanza"),
        ("prometheus", "prometheus, pushgateway"),
        ("phoenix", "api"),
    ] {
        let line = format!(
            "user `{user}` (service {services}) cannot enter {} (mode 0700, owner root)",
            parent.display()
        );
        assert!(err.contains(&line), "{line}\nin:\n{err}");
    }
    assert!(err.contains("not starting anything"), "{err}");
    assert!(
        processes_matching(s(&sup.path("state"))).is_empty(),
        "nothing started"
    );
    assert!(!sup.path("state").exists(), "nothing created");
    assert!(!sup.socket().exists());
}

#[test]
fn a_state_dir_a_service_user_owns_is_refused_naming_the_owner() {
    let Some(prom) = service_user("prometheus") else {
        return;
    };
    let mut sup = Supervisor::config(&prometheus_only());
    let state = sup.path("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(prom.uid), Some(prom.gid)).unwrap();
    sup.start();
    let status = sup.wait_exit(Duration::from_secs(30));
    let err = sup.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is owned by prometheus (uid {})",
            state.display(),
            prom.uid
        )),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_none(),
        "nothing written into it"
    );
    assert!(processes_matching(s(&state)).is_empty());
}

/// What only root can test fails when the tests run as another user, so
/// that such a run cannot pass while it proved nothing; unless that user
/// says to skip it, and then each test says it skipped. This file's other
/// tests, run by a copy of this binary as `nobody`, both ways.
#[test]
fn without_root_these_tests_fail_unless_skipping_them_is_asked_for() {
    let Some(nobody) = service_user("nobody") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let exe = dir.path().join("section_files");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, PermissionsExt::from_mode(0o755)).unwrap();
    let run = |skip: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", nobody.uid))
            .arg(format!("--regid={}", nobody.gid))
            .args(["--clear-groups", "--"])
            .arg(&exe)
            .args(["--skip", "without_root_these_tests", "--test-threads=1"])
            .arg("--nocapture")
            .current_dir(dir.path())
            .env("TMPDIR", dir.path())
            .env_remove(NOT_ROOT_ENV);
        if skip {
            cmd.env(NOT_ROOT_ENV, "1");
        }
        let out = cmd.output().expect("run setpriv");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (passed, text) = run(false);
    assert!(!passed, "passed without root:\n{text}");
    assert!(text.contains("test result: FAILED. 0 passed;"), "{text}");
    assert!(
        text.contains(&format!(
            "needs root: run the tests as root, or set {NOT_ROOT_ENV}=1"
        )),
        "{text}"
    );

    let (passed, text) = run(true);
    assert!(passed, "{text}");
    let skipped = text
        .matches(&format!("skipped ({NOT_ROOT_ENV}=1): "))
        .count();
    let ran: usize = text
        .split_once("test result: ok. ")
        .and_then(|(_, rest)| rest.split_once(" passed"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(
        ran >= 5 && skipped == ran,
        "{ran} ran, {skipped} skipped:\n{text}"
    );
}
