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

    fn sup_mut(&mut self) -> &mut Supervisor {
        self.sup.as_mut().expect("present until dropped")
    }

    /// A path inside the supervisor's temp dir (`state/...`, `run/...`).
    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.sup().path(rel)
    }

    /// `phoenixctl ARGS` on this supervisor's control socket.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.sup().ctl(args)
    }

    /// `phoenixctl ARGS` on this supervisor's control socket, to be run
    /// (and timed) by the caller.
    pub fn ctl_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(phoenix_tests::bin("phoenixctl"));
        cmd.arg("--socket").arg(self.sup().socket()).args(args);
        cmd
    }

    /// The pid of a running service, from `phoenixctl --json status`.
    pub fn service_pid(&self, name: &str) -> Option<i32> {
        self.sup().try_status()?["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?["pid"]
            .as_i64()
            .map(|p| p as i32)
    }

    /// The state of a service (`ready`, `exited`, ...); empty when unknown.
    pub fn state_of(&self, name: &str) -> String {
        self.sup().state_of(name)
    }

    /// Wait until a service is in `state`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.state_of(name) != state {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!(
                    "{name} did not reach {state} within {timeout:?} (it is `{}`)\n\
                     last lines of the supervisor's log:\n{}",
                    self.state_of(name),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The machine dies: SIGKILL to PostgreSQL's process group first (no
    /// commit after it), then to the supervisor's group and to every
    /// process still naming the temp dir (the other servers, pgBackRest's
    /// background WAL push). Nothing is shut down cleanly.
    pub fn crash(&mut self) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::{Pid, getpgid};
        if let Some(pg) = self.service_pid("postgres")
            && let Ok(group) = getpgid(Some(Pid::from_raw(pg)))
        {
            let _ = kill(Pid::from_raw(-group.as_raw()), Signal::SIGKILL);
        }
        let sup = self.sup_mut();
        let _ = kill(Pid::from_raw(-sup.pid()), Signal::SIGKILL);
        sup.wait_exit(Duration::from_secs(10));
        let dir = sup.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = phoenix_tests::processes_matching(&dir);
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("processes {left:?} survived SIGKILL for 10 s");
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start the supervisor again on the same config and state (after
    /// [`Phoenix::crash`]); its earlier log is kept as `supervisor.stderr.1`.
    pub fn start_again(&mut self) {
        let log = self.path("supervisor.stderr");
        let _ = std::fs::rename(&log, log.with_extension("stderr.1"));
        self.sup_mut().start_with(&["env", "RUST_LOG=info"]);
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

    pub fn log_tail(&self, lines: usize) -> String {
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
