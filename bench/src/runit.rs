//! The peer supervisor: runit's `runsvdir` over one `runsv` per service, each
//! service a `run` script that execs the same test program Phoenix runs.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::{interrupt, procs};

pub struct RunitBins {
    pub runsvdir: PathBuf,
    pub sv: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl RunitBins {
    pub fn locate() -> Result<RunitBins> {
        let find = |name: &str| {
            on_path(name).with_context(|| {
                format!(
                    "the peer supervisor runit is not installed ({name} not found on PATH); \
                     install it with `apt-get install runit` and run the benchmark again"
                )
            })
        };
        // runsvdir starts runsv by name, so runsv must be on PATH as well.
        find("runsv")?;
        Ok(RunitBins {
            runsvdir: find("runsvdir")?,
            sv: find("sv")?,
        })
    }

    /// The installed runit version, from dpkg when it is a Debian package.
    pub fn version() -> Option<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "runit"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

pub struct Runit {
    runsvdir: Child,
    service_dirs: Vec<PathBuf>,
    sv: PathBuf,
    dir: tempfile::TempDir,
}

impl Runit {
    /// One service directory per argv, then `runsvdir` over them in a
    /// process group of its own: a Ctrl-C at the terminal reaches only the
    /// benchmark, which then stops everything in order.
    pub fn start(bins: &RunitBins, argvs: &[Vec<String>]) -> Result<Runit> {
        // Orphaned runsv processes are reaped here at the end (see `drop`).
        nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
        let dir = tempfile::Builder::new()
            .prefix("phx-bench-runit")
            .tempdir()
            .context("create a temp dir for runit")?;
        let services = dir.path().join("service");
        let mut service_dirs = Vec::new();
        for (i, argv) in argvs.iter().enumerate() {
            let svc = services.join(format!("svc{i}"));
            std::fs::create_dir_all(&svc).with_context(|| format!("create {}", svc.display()))?;
            let run = svc.join("run");
            std::fs::write(&run, format!("#!/bin/sh\nexec {}\n", argv.join(" ")))
                .with_context(|| format!("write {}", run.display()))?;
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755))?;
            service_dirs.push(svc);
        }
        let stderr = std::fs::File::create(dir.path().join("runsvdir.stderr"))?;
        let mut cmd = Command::new(&bins.runsvdir);
        cmd.arg(&services)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let runsvdir = cmd
            .spawn()
            .with_context(|| format!("start {}", bins.runsvdir.display()))?;
        Ok(Runit {
            runsvdir,
            service_dirs,
            sv: bins.sv.clone(),
            dir,
        })
    }

    /// runsvdir and the runsv processes it started: the supervisor whose
    /// memory and CPU time are measured.
    pub fn supervisor_pids(&self) -> Vec<i32> {
        let root = self.runsvdir.id() as i32;
        let mut pids = vec![root];
        pids.extend(
            phoenix_tests::children_of(root)
                .into_iter()
                .map(|(pid, _)| pid)
                .filter(|&pid| procs::comm(pid) == "runsv"),
        );
        pids
    }

    /// Wait until runsvdir has started a runsv for every service.
    pub fn wait_supervisors(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.supervisor_pids().len() < self.service_dirs.len() + 1 {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!(
                    "runsvdir did not start {} runsv processes within {timeout:?}; see {}",
                    self.service_dirs.len(),
                    self.dir.path().join("runsvdir.stderr").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `sv status` of every service: spawn, read each supervise/ status; Err on failure.
    pub fn sv_status(&self) -> Result<()> {
        let out = Command::new(&self.sv)
            .arg("status")
            .args(&self.service_dirs)
            .output()
            .context("run sv status")?;
        if !out.status.success() {
            bail!(
                "sv status failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Runit {
    /// runsvdir would restart a runsv that exits, so it goes first; its runsv
    /// processes become orphans of this process (a child subreaper). SIGTERM
    /// makes each runsv stop its service and exit, and they are reaped here.
    fn drop(&mut self) {
        let root = self.runsvdir.id() as i32;
        let mut runsv: Vec<i32> = self.supervisor_pids().into_iter().skip(1).collect();
        let _ = kill(Pid::from_raw(root), Signal::SIGTERM);
        let _ = self.runsvdir.wait();
        for &pid in &runsv {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let still_running = |pid: i32| match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
        {
            Ok(WaitStatus::StillAlive) => true,
            Ok(_) => false,
            // Not a child of ours after all: all that can be done is watch it.
            Err(_) => phoenix_tests::process_alive(pid),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            runsv.retain(|&pid| still_running(pid));
            if runsv.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in runsv {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}
