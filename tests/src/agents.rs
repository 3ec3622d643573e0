//! Real `phoenix-agent` processes beside a [`Stack`]: each with its own
//! state folder, name and TOML file, started, stopped and killed as an
//! operator or a crash would; and a second Prometheus, the "user's
//! backend", that receives remote writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{Stack, bin, free_port, wait_until};

/// One agent process and its files.
pub struct AgentProc {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub metrics_port: u16,
    child: Option<Child>,
}

impl AgentProc {
    /// An agent of `stack` named `name`, enrolling with `token`, collecting
    /// every second; `extra` is appended to its TOML file. Not started.
    pub fn new(stack: &Stack, name: &str, token: &str, extra: &str) -> AgentProc {
        let ca = stack.sup.path("state/tls/cert.pem");
        AgentProc::with_api(&stack.ports.agent_url(""), Some(&ca), name, token, extra)
    }

    /// Like [`AgentProc::new`], collecting every `interval`.
    pub fn every(
        stack: &Stack,
        name: &str,
        token: &str,
        interval: Duration,
        extra: &str,
    ) -> AgentProc {
        let ca = stack.sup.path("state/tls/cert.pem");
        AgentProc::build(
            &stack.ports.agent_url(""),
            Some(&ca),
            name,
            token,
            interval,
            extra,
        )
    }

    /// An agent of the control plane at `api_url`, trusting `ca`.
    pub fn with_api(
        api_url: &str,
        ca: Option<&Path>,
        name: &str,
        token: &str,
        extra: &str,
    ) -> AgentProc {
        AgentProc::build(api_url, ca, name, token, Duration::from_secs(1), extra)
    }

    fn build(
        api_url: &str,
        ca: Option<&Path>,
        name: &str,
        token: &str,
        interval: Duration,
        extra: &str,
    ) -> AgentProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("phx-agent-{name}-"))
            .tempdir()
            .expect("agent dir");
        std::fs::write(dir.path().join("token"), token).unwrap();
        let metrics_port = free_port();
        let ca_line = ca.map_or(String::new(), |ca| {
            format!("ca_file = \"{}\"\n", ca.display())
        });
        let toml = format!(
            "[api]\nurl = \"{api_url}\"\n{ca_line}enrollment_token_file = \"token\"\nname = \"{name}\"\n\
             [agent]\nstate_dir = \"state\"\ncollect_interval = \"{}ms\"\n\
             [health]\nlisten = \"127.0.0.1:{metrics_port}\"\n{extra}",
            interval.as_millis()
        );
        std::fs::write(dir.path().join("agent.toml"), toml).unwrap();
        AgentProc {
            name: name.to_owned(),
            dir,
            metrics_port,
            child: None,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the agent wrote to stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin("phoenix-agent"))
            .arg("--config")
            .arg(self.config())
            .arg("run")
            .env("PHOENIX_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("phoenix-agent starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and its exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        Some(wait_exit(&mut c, Duration::from_secs(20)))
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        wait_exit(&mut c, timeout)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent id, from the credential file, once enrolled.
    pub fn id(&self) -> String {
        let path = self.state().join("credential");
        wait_until(
            &format!("{} enrolled", self.name),
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|c| c.split_once('.').map(|(id, _)| id.to_owned()))
            },
        )
    }

    /// `phoenix-agent status --json`.
    pub fn status(&self) -> Value {
        let out = Command::new(bin("phoenix-agent"))
            .arg("--config")
            .arg(self.config())
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Whether every batch queued up to `t_ms` (ms since the epoch) was
    /// delivered: the oldest batch waiting, if any, was collected after it.
    pub fn drained_until(&self, t_ms: i64) -> bool {
        self.status()["queue"]["oldest_collected_at_ms"]
            .as_i64()
            .is_none_or(|oldest| oldest > t_ms)
    }

    /// The agent's own /metrics.
    pub fn metrics(&self) -> String {
        crate::plain_http()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// One value of the agent's /metrics, by series as written there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_in(&self.metrics(), series)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            // The end of the log: what the agent did last.
            let tail: Vec<&str> = log.lines().rev().take(150).collect();
            eprintln!(
                "---- agent {} log (last {} lines) ----",
                self.name,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn wait_exit(c: &mut Child, timeout: Duration) -> ExitStatus {
    wait_until("the agent to exit", timeout, || c.try_wait().ok().flatten())
}

/// A Prometheus of its own receiving remote writes: the user's backend.
pub struct Backend {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Backend {
    pub fn start() -> Backend {
        let dir = tempfile::Builder::new()
            .prefix("phx-backend-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), "global: {}\n").unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let b = Backend {
            port,
            _dir: dir,
            child,
        };
        wait_until(
            "the backend Prometheus ready",
            Duration::from_secs(60),
            || {
                crate::plain_http()
                    .get(b.url("/-/ready"))
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
        b
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn write_url(&self) -> String {
        self.url("/api/v1/write")
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        query(&self.url(""), promql)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One value of a text exposition, by series as written there.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// An instant query at `base` (a Prometheus origin): the result list.
pub fn query(base: &str, promql: &str) -> Vec<Value> {
    let r: Value = crate::plain_http()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
    assert_eq!(r["status"], "success", "{promql}: {r}");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The raw samples of a range selector (`m{...}[5m]`): per series, its
/// labels and `(timestamp ms, value)`s.
pub fn raw_samples(base: &str, selector: &str) -> Vec<(Value, Vec<(i64, f64)>)> {
    query(base, selector)
        .into_iter()
        .map(|s| {
            let values = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let ts = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (ts, v[1].as_str().unwrap().parse::<f64>().unwrap())
                })
                .collect();
            (s["metric"].clone(), values)
        })
        .collect()
}

/// The single number of an instant query, or None when it has no result.
pub fn scalar(base: &str, promql: &str) -> Option<f64> {
    query(base, promql)
        .first()
        .and_then(|s| s["value"][1].as_str().map(|v| v.parse().unwrap()))
}

/// Writes `text` to `path`.
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
