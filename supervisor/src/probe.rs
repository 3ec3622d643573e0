//! Readiness and liveness checks: one attempt each, bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::{Probe, ServiceSpec};
use crate::process::{self, RunAs};
use crate::reaper::Reaper;

pub struct Prober {
    http: reqwest::Client,
    reaper: Arc<Reaper>,
}

impl Prober {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        // Probes reach services on this machine to ask whether they answer,
        // not who they are: certificates (often self-signed) are not verified.
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("http client");
        Prober { http, reaper }
    }

    /// Run `probe` once. Log probes are driven by the output pump, not here.
    pub async fn check(
        &self,
        probe: &Probe,
        timeout: Duration,
        spec: &ServiceSpec,
        run_as: Option<&RunAs>,
    ) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.attempt(probe, spec, run_as)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn attempt(
        &self,
        probe: &Probe,
        spec: &ServiceSpec,
        run_as: Option<&RunAs>,
    ) -> Result<(), String> {
        match probe {
            Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("tcp {addr}: {e}")),
            Probe::Http(url) => {
                let resp = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("GET {url}: status {}", resp.status()))
                }
            }
            Probe::Exec(argv) => self.exec(argv, spec, run_as).await,
            Probe::Log(_) => Err("log readiness is matched on output lines".into()),
        }
    }

    async fn exec(
        &self,
        argv: &[String],
        spec: &ServiceSpec,
        run_as: Option<&RunAs>,
    ) -> Result<(), String> {
        let mut cmd = process::command(argv, spec, run_as, None).map_err(|e| e.to_string())?;
        // Only stderr is kept (for the error message); stdout would fill an unread pipe.
        cmd.stdout(std::process::Stdio::null());
        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        let pid = child.id() as i32;
        // Kill the check if it outlives the timeout (this future is dropped).
        let mut guard = KillOnDrop(Some(pid));
        let mut output = String::new();
        if let Some(stderr) = child.stderr.take()
            && let Ok(mut stderr) = tokio::process::ChildStderr::from_std(stderr)
        {
            // Read to the end (a closed pipe would kill a chatty check),
            // keep the start for the message.
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf.truncate(4096);
            output = String::from_utf8_lossy(&buf).trim().to_string();
        }
        let status = exit
            .await
            .map_err(|_| "check process vanished".to_string())?;
        guard.0 = None;
        if status.success() {
            Ok(())
        } else if output.is_empty() {
            Err(format!("{}: {status}", argv[0]))
        } else {
            Err(format!("{}: {status}: {output}", argv[0]))
        }
    }
}

struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
