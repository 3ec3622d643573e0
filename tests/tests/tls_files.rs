//! `[tls] mode = "files"`: certificates the operator (or certbot) replaces
//! on disk. A new pair is served by the API without a restart once it is
//! whole; a pair the API cannot load shows in /health as a certificate it
//! does not serve, while the old one keeps serving.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use phoenix_tests::{Stack, StackPorts, Supervisor, root_or_opted_out, wait_until};
use serde_json::Value;

/// A self-signed pair for 127.0.0.1 named `cn`, written to `dir`.
fn pair(dir: &Path, cn: &str, key_mode: u32) {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    // The key first, as a careful operator would; the supervisor does not
    // rely on the order.
    let key_path = dir.join("key.pem");
    std::fs::write(dir.join("key.pem.new"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        dir.join("key.pem.new"),
        std::fs::Permissions::from_mode(key_mode),
    )
    .unwrap();
    std::fs::rename(dir.join("key.pem.new"), &key_path).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
}

fn served_issuer(ports: &StackPorts) -> String {
    String::from_utf8_lossy(&ports.served_certificate()).into_owned()
}

fn certificate_check(s: &Stack) -> Value {
    s.sup.health().1["checks"]["tls:certificate"][0].clone()
}

#[test]
fn replaced_files_are_served_without_a_restart_and_a_failed_reload_shows() {
    // Without root the API runs as this user and can read any key here.
    let root = root_or_opted_out("the failed reload of a key the API's user cannot read");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Readable by the API's user (`phoenix` when the tests run as root).
    pair(dir.path(), "first pair", 0o644);
    let ports = StackPorts::free();
    let extra = format!(
        "[tls]\nmode = \"files\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n{}\n",
        ports.http_listen(),
        d = dir.path().display()
    );
    let mut sup = Supervisor::config(&ports.config(&extra));
    sup.set_env("PHOENIX_CERT_CHECK_INTERVAL", "500ms");
    let s = Stack::started(sup, ports);
    assert!(served_issuer(&ports).contains("first pair"));
    let api_pid = s.sup.pid_of("api");

    pair(dir.path(), "second pair", 0o644);
    wait_until("the second pair served", Duration::from_secs(30), || {
        served_issuer(&ports).contains("second pair").then_some(())
    });
    assert_eq!(s.sup.pid_of("api"), api_pid, "reloaded, not restarted");
    let check = certificate_check(&s);
    assert_eq!(check["status"], "pass", "{check}");
    assert_eq!(check["mode"], "files");

    if !root {
        return;
    }
    // A key the API's user cannot read: its reload fails, the second pair
    // keeps serving, and health says the file is not what is served.
    pair(dir.path(), "third pair", 0o600);
    let check = wait_until(
        "the stale certificate reported",
        Duration::from_secs(30),
        || {
            let c = certificate_check(&s);
            (c["status"] == "warn").then_some(c)
        },
    );
    let output = check["output"].as_str().unwrap();
    assert!(
        output.contains("the API still serves another certificate"),
        "{output}"
    );
    assert!(served_issuer(&ports).contains("second pair"));
    let (code, _) = s.sup.health();
    assert_eq!(code, 200, "a warning, not a failure");

    // Fixed: readable again; the supervisor keeps asking the API to reload
    // while it serves another certificate, so nothing else is needed.
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    wait_until("the third pair served", Duration::from_secs(30), || {
        served_issuer(&ports).contains("third pair").then_some(())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let check = certificate_check(&s);
        if check["status"] == "pass" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the warning did not clear: {check}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
