//! The Phoenix supervisor under test, started through the test harness (the
//! one way a supervisor is started on a temp config) with production logging.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use phoenix_tests::{NO_BUILTINS, Supervisor};

use crate::interrupt;

/// As small as a restart delay usefully gets: the backoff needs a non-zero
/// initial delay, and tokio's timers tick in milliseconds. No jitter, and a
/// start limit that never trips.
pub const RESTART_DELAY: Duration = Duration::from_millis(1);

/// Config of `[services.svcN]` running `testprog serve PORT` per port, no built-ins.
pub fn test_programs_config(testprog: &Path, ports: &[u16]) -> String {
    let delay = format!("{}ms", RESTART_DELAY.as_millis());
    let mut body = NO_BUILTINS.to_string();
    for (i, port) in ports.iter().enumerate() {
        body.push_str(&format!(
            "[services.svc{i}]\ncommand = [\"{}\", \"serve\", \"{port}\"]\n\
             restart = {{ initial_delay = \"{delay}\", max_delay = \"{delay}\", \
             jitter = 0.0, start_limit = {{ burst = 1000, interval = \"1s\" }} }}\n",
            testprog.display()
        ));
    }
    body
}

/// The appliance's built-ins (PostgreSQL, Prometheus, Pushgateway, API) on free ports.
pub fn full_stack_config() -> String {
    phoenix_tests::StackPorts::free().config("")
}

pub struct Phoenix {
    /// Taken in `drop`, so the harness stops the supervisor before the sweep.
    sup: Option<Supervisor>,
}

impl Phoenix {
    pub fn start(config_body: &str) -> Phoenix {
        let mut sup = Supervisor::config(config_body);
        // The harness asks for debug logs of the service module; a deployment
        // logs at info, and that is what is measured.
        sup.start_with(&["env", "RUST_LOG=info"]);
        Phoenix { sup: Some(sup) }
    }

    fn sup(&self) -> &Supervisor {
        self.sup.as_ref().expect("present until dropped")
    }

    pub fn pid(&self) -> i32 {
        self.sup().pid()
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.sup().health_port)
    }

    /// Wait for `/readyz` to answer 200: every required service is ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            if self
                .sup()
                .http("/readyz")
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Phoenix supervisor was not ready within {timeout:?} (/readyz not 200)\n\
                     status: {}\nlast lines of its log:\n{}",
                    self.sup()
                        .try_status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "control socket not answering".into()),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `phoenixctl --json status`: spawn, connect, answer; Err on failure.
    pub fn ctl_status(&self) -> Result<()> {
        let out = self.sup().ctl(&["--json", "status"]);
        if !out.status.success() {
            bail!(
                "phoenixctl status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Why resource limits are not applied, when the supervisor says so.
    pub fn limits_unavailable(&self) -> Option<String> {
        self.sup().try_status()?["limits_unavailable"]
            .as_str()
            .map(str::to_string)
    }

    pub fn version(&self) -> Option<String> {
        self.sup().try_status()?["version"]
            .as_str()
            .map(str::to_string)
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.sup().stderr();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Phoenix {
    /// The harness stops the supervisor (SIGTERM, then SIGKILL to its group);
    /// a server it failed to stop still names the temp dir on its command line.
    fn drop(&mut self) {
        let Some(sup) = self.sup.take() else { return };
        let dir = sup.dir.path().display().to_string();
        drop(sup);
        for pid in phoenix_tests::processes_matching(&dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
