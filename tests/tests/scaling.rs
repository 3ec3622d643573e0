//! Capacity checks on a real stack: values from the machine (CPU, memory,
//! disk) and from the real Prometheus (the API's latency histogram and
//! database size, Prometheus's own ingest rate), triggers raised with low
//! thresholds, alerts POSTed to a webhook (retried when it fails), shown in
//! /health, /metrics and `phoenixctl scaling`, and kept across a restart
//! without alerting again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use phoenix_tests::{Stack, StackPorts, wait_until};
use serde_json::Value;

/// A webhook that refuses its first request with 500, then takes the rest;
/// each body it took arrives on the channel.
fn webhook() -> (u16, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, rx)
}

fn trigger(s: &Stack, name: &str) -> Value {
    s.sup.status()["scaling"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["trigger"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn triggers_are_measured_raised_alerted_once_and_kept_across_a_restart() {
    let (port, alerts) = webhook();
    let ports = StackPorts::free();
    let extra = format!(
        "[scaling]\ninterval = \"1s\"\nwebhook = \"http://127.0.0.1:{port}/hook\"\n\
         [scaling.cpu]\nwarning = 0\ncritical = 1000\nsustain = \"0s\"\n\
         [scaling.db_size]\nwarning = 0.000001\ncritical = 1000\nsustain = \"0s\"\n"
    );
    let mut s = Stack::start_on(ports, &extra);

    // CPU is always at least 0 %: warning at once, alerted once, delivered
    // on the webhook's second try.
    let cpu = wait_until("cpu raised", Duration::from_secs(30), || {
        let t = trigger(&s, "cpu");
        (t["level"] == "warning").then_some(t)
    });
    assert_eq!(cpu["unit"], "%");
    assert!(cpu["value"].as_f64().unwrap() >= 0.0);
    assert!(
        cpu["recommendation"]
            .as_str()
            .unwrap()
            .contains("larger instance type")
    );
    let alert = alerts
        .recv_timeout(Duration::from_secs(20))
        .expect("the alert, retried after the webhook's 500");
    let mut received = vec![alert];
    // The database size comes from the API through Prometheus.
    let db = wait_until("db_size from Prometheus", Duration::from_secs(60), || {
        let t = trigger(&s, "db_size");
        (t["level"] == "warning").then_some(t)
    });
    let gb = db["value"].as_f64().unwrap();
    assert!(
        (0.001..1.0).contains(&gb),
        "a new database is some MB: {gb} GB"
    );
    while let Ok(a) = alerts.recv_timeout(Duration::from_secs(5)) {
        received.push(a);
    }
    let for_trigger = |name: &str| -> Vec<Value> {
        received
            .iter()
            .filter(|a| a["trigger"] == name)
            .cloned()
            .collect()
    };
    let cpu_alerts = for_trigger("cpu");
    assert_eq!(cpu_alerts.len(), 1, "one alert per change: {received:#?}");
    assert_eq!(
        (&cpu_alerts[0]["from"], &cpu_alerts[0]["to"]),
        (&Value::from("ok"), &Value::from("warning"))
    );
    assert_eq!(cpu_alerts[0]["repeated"], false);
    assert_eq!(for_trigger("db_size").len(), 1);

    // Every figure is measured.
    for name in ["memory", "disk", "api_latency", "metrics"] {
        let t = wait_until(name, Duration::from_secs(30), || {
            let t = trigger(&s, name);
            t["value"].is_number().then_some(t)
        });
        assert_eq!(t["error"], Value::Null, "{t}");
    }
    assert!(trigger(&s, "metrics")["value"].as_f64().unwrap() > 0.0);

    // Health: a warning, not a failure; the recommendation in the output.
    let (code, health) = s.sup.health();
    assert_eq!(
        (code, &health["status"]),
        (200, &Value::from("warn")),
        "{health:#}"
    );
    let check = &health["checks"]["scaling:cpu"][0];
    assert_eq!(check["status"], "warn");
    assert!(check["output"].as_str().unwrap().contains("vertical"));
    let metrics = s.sup.metrics();
    assert!(
        metrics.contains("phoenix_supervisor_scaling_level{trigger=\"cpu\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("phoenix_supervisor_scaling_alerts_total{trigger=\"cpu\"} 1"));
    let out = s.sup.ctl(&["scaling"]);
    assert_eq!(out.status.code(), Some(1), "raised triggers: exit 1");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("cpu") && table.contains("warning"),
        "{table}"
    );

    // A restart keeps the levels and does not alert again.
    s.sup.signal(Signal::SIGTERM);
    assert!(s.sup.wait_exit(Duration::from_secs(60)).success());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(s.sup.path("state/scaling-state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["triggers"]["cpu"]["level"], "warning", "{saved:#}");
    s.sup.start();
    s.sup.wait_all_ready(Duration::from_secs(120));
    let cpu = wait_until("cpu evaluated again", Duration::from_secs(30), || {
        let t = trigger(&s, "cpu");
        t["value"].is_number().then_some(t)
    });
    assert_eq!(cpu["level"], "warning");
    assert_eq!(cpu["alerts"], 0, "no alert for a level it already had");
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<Value> = alerts
        .try_iter()
        .filter(|a| a["trigger"] == "cpu")
        .collect();
    assert!(late.is_empty(), "{late:#?}");
}

#[test]
fn scaling_settings_are_checked() {
    for (toml, want) in [
        ("[scaling]\nhysteresis = 80\n", "scaling.hysteresis"),
        ("[scaling]\ninterval = \"100ms\"\n", "scaling.interval"),
        ("[scaling]\nwebhook = \"ftp://x\"\n", "scaling.webhook"),
        (
            "[scaling.cpu]\nwarning = 90\ncritical = 80\n",
            "scaling.cpu",
        ),
        ("[scaling.cpu]\nwarn = 90\n", "unknown field"),
        ("[scaling.gpu]\nwarning = 90\n", "unknown field"),
    ] {
        let err = phoenix_tests::config_refused(toml);
        assert!(err.contains(want), "{toml}: {err}");
    }
}
