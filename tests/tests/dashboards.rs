//! The Grafana dashboards in `dashboards/`, checked without Grafana (it is
//! not packaged for Debian): against a real stack whose agents wrote an
//! experiment's two variants and a live pipeline, every variable resolves
//! to values, and every panel's PromQL, with the variables put in, runs in
//! the real Prometheus without error and returns data (but for the panels
//! of features this stack does not run: backups, firing alerts).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use phoenix_tests::{Stack, wait_until};
use serde_json::Value;

/// Panels whose series exist only with features the test stack leaves off.
const MAY_BE_EMPTY: [&str; 3] = [
    "Newest full backup: age",
    "WAL archiving failing for",
    "Firing alerts",
];

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards"));
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn prometheus(s: &Stack, path: &str, params: &[(&str, String)]) -> Value {
    // The label endpoints take GET only.
    let r: Value = reqwest::blocking::Client::new()
        .get(s.ports.prometheus_url(path))
        .query(params)
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("{path} {params:?}: {e}"));
    assert_eq!(r["status"], "success", "{path} {params:?}: {r}");
    r["data"].clone()
}

/// `label_values(SELECTOR, LABEL)` as Grafana's Prometheus data source
/// runs it: the label's values on the series the selector picks.
fn label_values(s: &Stack, query: &str) -> Vec<String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {query}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let data = prometheus(
        s,
        &format!("/api/v1/label/{}/values", label.trim()),
        &[("match[]", selector.trim().to_string())],
    );
    data.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_panel_query_runs_against_a_real_stack_and_the_variables_resolve() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agent = s.enroll_one(&admin, "web-1");
    let text = "phoenix_process_cpu_percent{process=\"nginx\",pid=\"12\"} 3.5\n\
                phoenix_process_memory_bytes{process=\"nginx\",pid=\"12\"} 52428800\n\
                phoenix_process_cpu_percent{process=\"postgres\",pid=\"40\"} 1.5\n\
                phoenix_process_memory_bytes{process=\"postgres\",pid=\"40\"} 104857600\n";
    let _writer = s.writer(
        [
            "experiment=demo&variant=baseline",
            "experiment=demo&variant=candidate",
            "",
        ]
        .into_iter()
        .map(|q| (agent.credential.clone(), q.to_string(), text.to_string()))
        .collect(),
        Duration::from_secs(1),
    );
    assert_eq!(s.heartbeat(&agent.credential).status, 200);
    // Prometheus has scraped the supervisor and the API, and the API's
    // gauges are refreshed.
    wait_until(
        "the API's gauges in Prometheus",
        Duration::from_secs(60),
        || {
            let r = prometheus(
                &s,
                "/api/v1/query",
                &[("query", "phoenix_api_agents_connected > 0".into())],
            );
            (!r["result"].as_array()?.is_empty()).then_some(())
        },
    );
    // Rates need two scrapes of a counter, and the batches counter starts
    // at the first write.
    std::thread::sleep(Duration::from_secs(5));

    let all = dashboards();
    assert_eq!(
        all.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["appliance.json", "experiments.json"]
    );
    let mut uids = BTreeSet::new();
    for (file, dashboard) in &all {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_string()),
            "{file}: uid"
        );
        // Variables: each resolves, the first value is the one used.
        let mut values: Vec<(String, String)> = Vec::new();
        for var in dashboard["templating"]["list"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            match var["type"].as_str().unwrap() {
                "datasource" => assert_eq!(var["query"], "prometheus", "{file}: {name}"),
                "constant" => values.push((name.into(), var["query"].as_str().unwrap().into())),
                "query" => {
                    let query = var["query"]["query"].as_str().unwrap();
                    let got = label_values(&s, query);
                    assert!(
                        !got.is_empty(),
                        "{file}: ${name} ({query}) resolves to nothing; the agents' series: {}",
                        prometheus(
                            &s,
                            "/api/v1/series",
                            &[("match[]", "{job=\"phoenix-agent\"}".into())]
                        )
                    );
                    let value = if var["includeAll"] == true {
                        var["allValue"].as_str().unwrap().to_string()
                    } else {
                        got[0].clone()
                    };
                    values.push((name.into(), value));
                }
                other => panic!("{file}: ${name}: a variable of type {other}"),
            }
        }
        if file == "experiments.json" {
            assert!(
                values.contains(&("experiment".into(), "demo".into())),
                "{values:?}"
            );
        }
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{file}: {title}: id"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: {title}"
            );
            for target in panel["targets"].as_array().unwrap() {
                let mut expr = target["expr"].as_str().unwrap().to_string();
                for (name, value) in &values {
                    expr = expr.replace(&format!("${name}"), value);
                }
                assert!(!expr.contains('$'), "{file}: {title}: {expr}");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let data = prometheus(
                    &s,
                    "/api/v1/query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", (now - 600).to_string()),
                        ("end", now.to_string()),
                        ("step", "5".into()),
                    ],
                );
                let series = data["result"].as_array().unwrap();
                assert!(
                    !series.is_empty() || MAY_BE_EMPTY.contains(&title),
                    "{file}: {title}: no data for {expr}"
                );
            }
        }
    }
}
