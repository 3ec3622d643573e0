//! Readiness and liveness checks: one attempt each, bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::{Probe, ServiceSpec};
use crate::process::{self, RunAs};
use crate::reaper::Reaper;

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service failed the check: counts toward its failure threshold.
    Service(String),
    /// The supervisor could not run the check (out of file descriptors,
    /// memory or processes). It says nothing about the service, so it never
    /// counts against it.
    Supervisor(String),
}

impl Failure {
    /// A failure of `what`, blamed on the supervisor when `error` (or any
    /// error it was caused by) is a shortage of the supervisor's resources.
    pub fn of(error: &(dyn std::error::Error + 'static), what: String) -> Failure {
        if out_of_resources(error) {
            Failure::Supervisor(what)
        } else {
            Failure::Service(what)
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Service(e) => f.write_str(e),
            Failure::Supervisor(e) => write!(f, "the supervisor could not run the check: {e}"),
        }
    }
}

/// EMFILE, ENFILE, ENOMEM, ENOBUFS or EAGAIN (fork) anywhere in the chain
/// of `error`: the supervisor itself is short of something. (Connection
/// errors such as ECONNREFUSED are the service's.)
pub fn out_of_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EAGAIN)
            ) {
                return true;
            }
            // An io::Error wrapping another error reports the wrapped
            // one's source, not the wrapped one itself.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
            }
        }
    }
    false
}

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
    ) -> Result<(), Failure> {
        match tokio::time::timeout(timeout, self.attempt(probe, spec, run_as)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Service(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    async fn attempt(
        &self,
        probe: &Probe,
        spec: &ServiceSpec,
        run_as: Option<&RunAs>,
    ) -> Result<(), Failure> {
        match probe {
            Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| Failure::of(&e, format!("tcp {addr}: {e}"))),
            Probe::Http(url) => {
                let resp = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| Failure::of(&e, format!("GET {url}: {}", error_chain(&e))))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(Failure::Service(format!(
                        "GET {url}: status {}",
                        resp.status()
                    )))
                }
            }
            Probe::Exec(argv) => self.exec(argv, spec, run_as).await,
            Probe::Log(_) => Err(Failure::Service(
                "log readiness is matched on output lines".into(),
            )),
        }
    }

    async fn exec(
        &self,
        argv: &[String],
        spec: &ServiceSpec,
        run_as: Option<&RunAs>,
    ) -> Result<(), Failure> {
        let mut cmd = process::command(argv, spec, run_as, None)
            .map_err(|e| Failure::of(&e, e.to_string()))?;
        // Only stderr is kept (for the error message); stdout would fill an unread pipe.
        cmd.stdout(std::process::Stdio::null());
        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| Failure::of(&e, format!("cannot run {}: {e}", argv[0])))?;
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
            .map_err(|_| Failure::Service("check process vanished".into()))?;
        guard.0 = None;
        if status.success() {
            Ok(())
        } else if output.is_empty() {
            Err(Failure::Service(format!("{}: {status}", argv[0])))
        } else {
            Err(Failure::Service(format!("{}: {status}: {output}", argv[0])))
        }
    }
}

/// An error and its causes, `a: b: c`: reqwest's own message alone says
/// only "error sending request".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = e.source();
    }
    text
}

struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_of_the_supervisor_are_told_apart_from_failed_checks() {
        use std::io::Error;
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::ENOBUFS,
            libc::EAGAIN,
        ] {
            assert!(
                out_of_resources(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::ENOENT,
            libc::EACCES,
        ] {
            assert!(
                !out_of_resources(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // Found as the cause of a wrapping error, as in reqwest's.
        let wrapped = Error::other(Error::from_raw_os_error(libc::EMFILE));
        assert!(out_of_resources(&wrapped));
        assert!(!out_of_resources(&Error::other("refused")));
    }

    /// Real checks that cannot get a file descriptor. The limit is a
    /// process's, so the test runs itself again in a process of its own
    /// (other tests may share this one under `cargo test`).
    #[test]
    fn a_check_without_file_descriptors_is_the_supervisor_s_failure() {
        const CHILD: &str = "PHOENIX_TEST_OUT_OF_FILES";
        if std::env::var_os(CHILD).is_some() {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(checks_out_of_files());
            return;
        }
        let name = "probe::tests::a_check_without_file_descriptors_is_the_supervisor_s_failure";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the check ran: {text}");
    }

    async fn checks_out_of_files() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let prober = Prober::new(Arc::new(Reaper::default()));
        let spec = ServiceSpec::new("t", vec!["/bin/true".into()]);
        let check = |probe: Probe| {
            let (prober, spec) = (&prober, &spec);
            async move {
                prober
                    .check(&probe, Duration::from_secs(5), spec, None)
                    .await
            }
        };
        assert_eq!(check(Probe::Tcp(addr)).await, Ok(()));

        // Use up the open-files limit, lowered so that it is quick.
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 256.min(soft), hard).unwrap();
        let mut hoard = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hoard.push(f);
        }
        let tcp = check(Probe::Tcp(addr)).await;
        let http = check(Probe::Http(format!("http://{addr}/"))).await;
        let exec = check(Probe::Exec(vec!["/bin/true".into()])).await;
        drop(hoard);
        assert!(matches!(tcp, Err(Failure::Supervisor(_))), "{tcp:?}");
        assert!(matches!(http, Err(Failure::Supervisor(_))), "{http:?}");
        assert!(matches!(exec, Err(Failure::Supervisor(_))), "{exec:?}");

        drop(listener);
        let refused = check(Probe::Tcp(addr)).await;
        assert!(matches!(refused, Err(Failure::Service(_))), "{refused:?}");
    }
}
