//! More `phoenix-api` processes beside a stack's own, on the same database
//! with the same settings (its environment, read from `/proc`), each on
//! listeners of its own: phase 3's replicas, for `tests/replicas.rs` and
//! `phoenix-load --replicas`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{Stack, bin, free_port, https, wait_until};

pub struct Replica {
    child: Child,
    pub api: u16,
    pub agent: u16,
    pub log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// A replica of `stack`'s API, number `n` (for its log's name), once
    /// its `/health` passes. Needs root to read the API's environment and
    /// secrets when the API runs as its own user.
    pub fn start(stack: &Stack, n: u32) -> Replica {
        let env = api_env(stack);
        let (api, agent) = (free_port(), free_port());
        let log = stack.sup.path(&format!("replica-{n}.log"));
        let child = Command::new(bin("phoenix-api"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PHOENIX_API_LISTEN", format!("127.0.0.1:{api}"))
            .env("PHOENIX_API_AGENT_LISTEN", format!("127.0.0.1:{agent}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let r = Replica {
            child,
            api,
            agent,
            log,
        };
        wait_until(
            &format!("replica {n} healthy"),
            Duration::from_secs(60),
            || health(&r.url("/health")).filter(|h| h["status"] == "pass"),
        );
        r
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A URL of its user listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api)
    }

    /// A URL of its agent listener.
    pub fn agent_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.agent)
    }
}

/// The stack's API's environment: the settings every replica shares.
fn api_env(stack: &Stack) -> Vec<(String, String)> {
    let pid = stack.sup.pid_of("api");
    let env: Vec<(String, String)> = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| k.starts_with("PHOENIX_") || *k == "RUST_LOG")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        env.iter().any(|(k, _)| k == "PHOENIX_DATABASE_URL"),
        "{env:?}"
    );
    env
}

/// A `/health` document, when it answers.
pub fn health(url: &str) -> Option<Value> {
    https().get(url).send().ok()?.json().ok()
}

/// `held`, `standby`, or `down` when `/health` at `url` does not answer.
pub fn singleton(url: &str) -> String {
    health(url).map_or("down".into(), |h| {
        h["singleton"].as_str().unwrap_or("").to_string()
    })
}
