//! Alert rules: the rules `phoenix-supervisor` generates pass
//! `promtool check rules` and the unit tests of tests/alerts/rules.test.yml,
//! which cover every rule; and in a running appliance, Prometheus loads them,
//! evaluates every one without error, and fires and resolves an alert when a
//! service stops and starts again.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phoenix_tests::{Stack, bin, wait_until};
use serde_json::Value;

fn alerts_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/alerts"))
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (Debian package prometheus; scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// `(alert, severity, trigger)` of every rule in a rules file.
fn rules_of(yml: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let (mut alert, mut severity, mut trigger) = (String::new(), String::new(), String::new());
    for line in yml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            (alert, severity, trigger) = (name.into(), String::new(), String::new());
        } else if let Some(v) = line.strip_prefix("severity: ") {
            severity = v.into();
        } else if let Some(v) = line.strip_prefix("trigger: ") {
            trigger = v.trim_matches('"').into();
        } else if line == "annotations:" {
            out.insert((alert.clone(), severity.clone(), trigger.clone()));
        }
    }
    out
}

/// `(alert, severity, trigger)` of every alert a unit test expects to fire.
fn tested(test_yml: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let mut alert = String::new();
    for line in test_yml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            alert = name.to_string();
        } else if let Some(labels) = line.strip_prefix("- exp_labels: {") {
            let label = |name: &str| {
                labels
                    .trim_end_matches('}')
                    .split(", ")
                    .find_map(|kv| kv.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string()
            };
            out.insert((alert.clone(), label("severity"), label("trigger")));
        }
    }
    out
}

#[test]
fn every_generated_rule_passes_promtool_and_has_a_unit_test_that_fires_it() {
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["alert-rules", "--dev", "--config"])
        .arg(alerts_dir().join("phoenix.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rules = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    let tests = std::fs::read_to_string(alerts_dir().join("rules.test.yml")).unwrap();
    std::fs::write(dir.path().join("rules.test.yml"), &tests).unwrap();

    let checked = promtool(dir.path(), &["check", "rules", "rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let ran = promtool(dir.path(), &["test", "rules", "rules.test.yml"]);
    assert!(ran.contains("SUCCESS"), "{ran}");

    let (all, covered) = (rules_of(&rules), tested(&tests));
    assert!(all.len() >= 30, "{all:?}");
    let untested: Vec<_> = all.difference(&covered).collect();
    assert!(
        untested.is_empty(),
        "rules without a case in tests/alerts/rules.test.yml that fires them: {untested:?}"
    );
}

#[test]
fn without_alerts_there_are_no_rules_and_the_command_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("phoenix.toml");
    std::fs::write(&config, "[alerts]\nenable = false\n").unwrap();
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["alert-rules", "--dev", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[alerts] is off"),
        "{out:?}"
    );
}

fn prometheus_get(s: &Stack, path: &str) -> Value {
    let r: Value = reqwest::blocking::get(s.ports.prometheus_url(path))
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r["status"], "success", "{path}: {r}");
    r["data"].clone()
}

/// The labels of the firing alerts named `name`.
fn firing(s: &Stack, name: &str) -> Vec<Value> {
    prometheus_get(s, "/api/v1/alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .map(|a| a["labels"].clone())
        .collect()
}

#[test]
fn the_appliances_prometheus_evaluates_every_rule_and_a_stopped_service_fires_and_resolves() {
    let s = Stack::start("[alerts]\npending = \"2s\"\n");
    // Every rule loaded and evaluated without error against the real
    // metrics of the supervisor and the API.
    let groups = wait_until("every rule evaluated", Duration::from_secs(60), || {
        let groups = prometheus_get(&s, "/api/v1/rules")["groups"].clone();
        let rules: Vec<&Value> = groups
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        (!rules.is_empty()
            && rules
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z"))
        .then_some(groups)
    });
    let names: BTreeSet<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "phoenix-api",
            "phoenix-backups",
            "phoenix-capacity",
            "phoenix-certificate",
            "phoenix-services",
        ])
    );
    for group in groups.as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule:#}");
        }
    }
    assert!(firing(&s, "PhoenixServiceDown").is_empty());

    let out = s.sup.ctl(&["stop", "api"]);
    assert!(out.status.success(), "{out:?}");
    let labels = wait_until("PhoenixServiceDown fires", Duration::from_secs(60), || {
        let f = firing(&s, "PhoenixServiceDown");
        (!f.is_empty()).then_some(f)
    });
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(
        (&labels[0]["service"], &labels[0]["severity"]),
        (&Value::from("api"), &Value::from("critical"))
    );

    let out = s.sup.ctl(&["start", "api"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(
        "PhoenixServiceDown resolves",
        Duration::from_secs(60),
        || firing(&s, "PhoenixServiceDown").is_empty().then_some(()),
    );
}

/// A webhook receiver: every request's `Authorization` header and JSON body.
struct Webhook {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut length, mut authorization) = (0, String::new());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "authorization" => authorization = value.trim().to_string(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap();
                sink.lock().unwrap().push((authorization, body));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        Webhook { port, got }
    }

    /// The first notification with `status` that holds an alert named `name`.
    fn wait_for(&self, status: &str, name: &str) -> (String, Value) {
        wait_until(
            &format!("a {status} {name} at the webhook"),
            Duration::from_secs(90),
            || {
                self.got
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, body)| {
                        body["status"] == status
                            && body["alerts"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|a| a["labels"]["alertname"] == name)
                    })
                    .cloned()
            },
        )
    }
}

#[test]
fn a_stopped_service_is_notified_through_the_real_alertmanager_and_so_is_its_recovery() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    // The token file is read by the Alertmanager's own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = dir.path().join("hook-token");
    std::fs::write(&token, "s3cret-hook-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let alertmanager = phoenix_tests::free_port();
    let s = Stack::start(&format!(
        "[alerts]\npending = \"1s\"\n\
         [alertmanager]\nenable = true\nlisten = \"127.0.0.1:{alertmanager}\"\n\
         group_wait = \"1s\"\ngroup_interval = \"1s\"\nrepeat_interval = \"1h\"\n\
         [[alertmanager.webhook]]\nurl = \"http://127.0.0.1:{}/hook\"\nbearer_token_file = \"{}\"\n",
        hook.port,
        token.display()
    ));
    assert_eq!(s.sup.state_of("alertmanager"), "ready");
    // Prometheus found its Alertmanager.
    wait_until(
        "Prometheus sends to the Alertmanager",
        Duration::from_secs(30),
        || {
            let data = prometheus_get(&s, "/api/v1/alertmanagers");
            let active = data["activeAlertmanagers"].as_array()?.clone();
            (active.len() == 1
                && active[0]["url"]
                    .as_str()?
                    .contains(&format!("127.0.0.1:{alertmanager}")))
            .then_some(())
        },
    );

    let out = s.sup.ctl(&["stop", "api"]);
    assert!(out.status.success(), "{out:?}");
    let (authorization, body) = hook.wait_for("firing", "PhoenixServiceDown");
    assert_eq!(authorization, "Bearer s3cret-hook-token");
    let alert = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "PhoenixServiceDown")
        .unwrap();
    assert_eq!(alert["labels"]["service"], "api", "{body:#}");
    assert_eq!(alert["labels"]["severity"], "critical", "{body:#}");
    assert!(
        alert["annotations"]["action"]
            .as_str()
            .unwrap()
            .contains("phoenixctl start api"),
        "{body:#}"
    );

    let out = s.sup.ctl(&["start", "api"]);
    assert!(out.status.success(), "{out:?}");
    hook.wait_for("resolved", "PhoenixServiceDown");
}
