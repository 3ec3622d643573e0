//! Certificates over ACME from a real CA: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS server so that `phoenix.test` resolves
//! to this machine. Pebble validates HTTP-01 against the supervisor's plain
//! HTTP listener, the API is sent SIGHUP and serves the new certificate
//! without restarting, a forced renewal reuses the account, and a CA that is
//! gone leaves the certificate serving with the failure in health.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phoenix_tests::{Stack, StackPorts, Supervisor, free_port, wait_until};
use serde_json::Value;

const NAME: &str = "phoenix.test";

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (scripts/setup.sh installs the pebble package)")
        });
    Killed(child)
}

/// Pebble's own HTTPS certificate, from a CA whose root the supervisor is
/// told to trust with `acme_ca`.
fn pebble_tls(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test root for pebble");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("root.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

struct Ca {
    directory: String,
    root: std::path::PathBuf,
    _dns: Killed,
    pebble: Option<Killed>,
}

/// challtestsrv answering every A query with 127.0.0.1, and pebble using it,
/// validating HTTP-01 on `http_port`.
fn start_ca(dir: &Path, http_port: u16) -> Ca {
    pebble_tls(dir);
    let (dns, dns_mgmt, acme, mgmt) = (free_port(), free_port(), free_port(), free_port());
    let dns_addr = format!("127.0.0.1:{dns}");
    let dns_mgmt = format!("127.0.0.1:{dns_mgmt}");
    let dns_child = spawn(
        "pebble-challtestsrv",
        &[
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &dns_addr,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &dns_mgmt,
        ],
        &[],
        &dir.join("challtestsrv.log"),
    );
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let pebble = spawn(
        "pebble",
        &[
            "-config",
            dir.join("pebble.json").to_str().unwrap(),
            "-dnsserver",
            &dns_addr,
        ],
        // Validate at once, and no deliberately refused nonces.
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        &dir.join("pebble.log"),
    );
    let directory = format!("https://127.0.0.1:{acme}/dir");
    wait_until("pebble listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", acme)).ok()
    });
    Ca {
        directory,
        root: dir.join("root.pem"),
        _dns: dns_child,
        pebble: Some(pebble),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn certificate(s: &Stack) -> Value {
    s.sup.status()["certificate"].clone()
}

#[test]
fn certificates_come_from_an_acme_ca_and_are_renewed_without_a_restart() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ports = StackPorts::free();
    let mut ca = start_ca(ca_dir.path(), ports.http);
    let s = Stack::start_on(
        ports,
        &format!(
            "[tls]\nmode = \"acme\"\nhostnames = [\"{}\"]\n{}\n\
             acme_directory = \"{}\"\nacme_ca = \"{}\"\nacme_email = \"ops@phoenix.test\"\n",
            // DNS is case-insensitive; the certificate names it in lower case.
            NAME.to_uppercase(),
            ports.http_listen(),
            ca.directory,
            ca.root.display()
        ),
    );
    let api_pid = s.sup.pid_of("api");

    // The self-signed stand-in served first is replaced by pebble's.
    let cert = wait_until("a certificate from pebble", Duration::from_secs(90), || {
        let c = certificate(&s);
        c["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Pebble"))
            .then_some(c)
    });
    assert_eq!(cert["mode"], "acme");
    assert_eq!(cert["names"], serde_json::json!([NAME]));
    assert_eq!(cert["failures"], 0);
    assert!(cert["renewed_at_ms"].is_u64(), "{cert}");
    let first = wait_until("the API serving it", Duration::from_secs(30), || {
        let der = ports.served_certificate();
        contains(&der, "Pebble").then_some(der)
    });
    assert!(contains(&first, NAME));
    assert_eq!(s.sup.pid_of("api"), api_pid, "reloaded, not restarted");
    let (code, health) = s.sup.health();
    assert_eq!(code, 200, "{health:#}");
    let check = &health["checks"]["tls:certificate"][0];
    assert_eq!(check["status"], "pass", "{health:#}");
    assert_eq!(check["mode"], "acme");

    // The account and the key are for root (and the API) alone.
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(s.sup.path(p)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("state/secrets/acme-account.json"), 0o600);
    assert_eq!(mode("state/tls/key.pem"), 0o600);
    let account = std::fs::read(s.sup.path("state/secrets/acme-account.json")).unwrap();
    let key_pem = std::fs::read_to_string(s.sup.path("state/tls/key.pem")).unwrap();
    let mut logs = s.sup.stderr();
    for entry in std::fs::read_dir(s.sup.path("log")).unwrap() {
        logs += &std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
    }
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!logs.contains(&key_body), "the TLS key is never logged");
    let stored: Value = serde_json::from_slice(&account).unwrap();
    let account_key = stored["credentials"]["key_pkcs8"]
        .as_str()
        .expect("the account's key in its file");
    assert!(
        !logs.contains(account_key),
        "the account key is never logged"
    );

    // Plain HTTP redirects to the API; unknown challenges are 404.
    let plain = phoenix_tests::plain_http();
    let r = plain
        .get(ports.http_url("/api/v1/agents?status=online"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://127.0.0.1:{}/api/v1/agents?status=online",
            ports.api
        )
        .as_str()
    );
    let r = plain
        .get(ports.http_url("/.well-known/acme-challenge/unknown"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // A forced renewal: a new certificate, the same account.
    let out = s.sup.ctl(&["certs", "renew"]);
    Supervisor::ok(&out);
    let second = wait_until(
        "a renewed certificate served",
        Duration::from_secs(90),
        || {
            let der = ports.served_certificate();
            (der != first).then_some(der)
        },
    );
    assert!(contains(&second, "Pebble"));
    assert_eq!(
        std::fs::read(s.sup.path("state/secrets/acme-account.json")).unwrap(),
        account
    );
    assert_eq!(s.sup.pid_of("api"), api_pid);
    let text = Supervisor::ok(&s.sup.ctl(&["certs"]));
    assert!(
        text.contains("mode        acme") && text.contains(NAME),
        "{text}"
    );

    // The CA goes away: the renewal fails, the certificate keeps serving,
    // and the failure shows in `phoenixctl certs` and /health.
    ca.pebble = None;
    Supervisor::ok(&s.sup.ctl(&["certs", "renew"]));
    let failing = wait_until("the failure recorded", Duration::from_secs(60), || {
        let c = certificate(&s);
        (c["failures"] == 1).then_some(c)
    });
    assert!(
        failing["error"].as_str().unwrap().contains("127.0.0.1"),
        "{failing}"
    );
    assert_eq!(ports.served_certificate(), second);
    let (code, health) = s.sup.health();
    assert_eq!(code, 200, "a fresh certificate still passes: {health:#}");
    let output = health["checks"]["tls:certificate"][0]["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        output.contains("ACME failed 1 time(s) in a row"),
        "{output}"
    );
    let metrics = s.sup.metrics();
    assert!(
        metrics.contains("phoenix_supervisor_certificate_renewal_failures 1"),
        "{metrics}"
    );
    assert!(metrics.contains("phoenix_supervisor_certificate_expiry_timestamp_seconds"));

    // Leaving ACME needs a restart: a reload that tries is refused whole.
    s.sup.write_config(&ports.config(&format!(
        "[tls]\nmode = \"self-signed\"\n{}\n",
        ports.http_listen()
    )));
    let out = s.sup.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restart phoenix-supervisor"), "{err}");
    assert_eq!(ports.served_certificate(), second);
}

#[test]
fn acme_settings_are_checked() {
    for (toml, want) in [
        ("[tls]\nmode = \"acme\"\n", "tls.hostnames"),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"10.0.0.1\"]\n",
            "not a DNS name",
        ),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"*.example.com\"]\n",
            "not a DNS name",
        ),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"a.example.com\"]\nacme_directory = \"http://ca/dir\"\n",
            "https://",
        ),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"a.example.com\"]\nacme_email = \"nobody\"\n",
            "tls.acme_email",
        ),
        (
            "[tls]\nacme_email = \"ops@example.com\"\n",
            "for mode = \"acme\"",
        ),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"a.example.com\"]\ncert = \"/x.pem\"\n",
            "tls.cert",
        ),
        ("[tls]\nhttp_listen = \"port 80\"\n", "tls.http_listen"),
        (
            "[tls]\nmode = \"acme\"\nhostnames = [\"a.example.com\"]\nhttp_listen = \"off\"\n",
            "cannot be \"off\"",
        ),
    ] {
        let err = phoenix_tests::config_refused(toml);
        assert!(err.contains(want), "{toml}: {err}");
    }
}
