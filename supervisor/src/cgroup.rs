//! cgroup v2 resource limits. The supervisor moves itself into a leaf
//! (`<own cgroup>/supervisor`) and puts each service in `<own cgroup>/<name>`
//! with `memory.max`, `cpu.max` and `pids.max`. Without a writable cgroup v2
//! hierarchy that offers those controllers, it warns once and runs without.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::config::Limits;

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// Set up the delegated subtree, or say why not (the caller warns once).
    pub fn init() -> Result<Cgroups, String> {
        let mount = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process is not in a cgroup v2 hierarchy")?;
        let base = mount.join(rel.trim_start_matches('/'));
        Self::init_at(&base).map_err(|e| format!("{} is not usable: {e}", base.display()))
    }

    fn init_at(base: &Path) -> io::Result<Cgroups> {
        let available = fs::read_to_string(base.join("cgroup.controllers"))?;
        let missing: Vec<_> = CONTROLLERS
            .iter()
            .filter(|c| !available.split_whitespace().any(|a| a == **c))
            .collect();
        if !missing.is_empty() {
            return Err(io::Error::other(format!(
                "controllers {missing:?} are not available"
            )));
        }
        let leaf = base.join("supervisor");
        create_dir(&leaf)?;
        fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
        let enable: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        fs::write(base.join("cgroup.subtree_control"), enable.join(" "))?;
        Ok(Cgroups {
            base: base.to_path_buf(),
        })
    }

    pub fn path(&self, service: &str) -> PathBuf {
        self.base.join(service)
    }

    /// Create the service's cgroup, apply its limits, and return the open
    /// `cgroup.procs` the child writes itself into before exec.
    pub fn prepare(&self, service: &str, limits: &Limits) -> io::Result<OwnedFd> {
        let dir = self.path(service);
        create_dir(&dir)?;
        fs::write(
            dir.join("memory.max"),
            limits.memory.map_or("max".into(), |m| m.to_string()),
        )?;
        let cpu = limits.cpus.map_or_else(
            || format!("max {CPU_PERIOD_US}"),
            |c| {
                format!(
                    "{} {CPU_PERIOD_US}",
                    (c * CPU_PERIOD_US as f64).round() as u64
                )
            },
        );
        fs::write(dir.join("cpu.max"), cpu)?;
        fs::write(
            dir.join("pids.max"),
            limits.pids.map_or("max".into(), |p| p.to_string()),
        )?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(procs.into())
    }

    /// Processes still in the service's cgroup.
    pub fn procs(&self, service: &str) -> Vec<i32> {
        fs::read_to_string(self.path(service).join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL everything in the service's cgroup.
    pub fn kill(&self, service: &str) {
        let dir = self.path(service);
        if fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"))
            .is_ok()
        {
            return;
        }
        // Kernels before 5.14 have no cgroup.kill.
        for pid in self.procs(service) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Where cgroup2 is mounted: `/sys/fs/cgroup` on unified systems.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mountpoint = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mountpoint))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_hierarchy_without_controllers() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpuset io\n").unwrap();
        let err = Cgroups::init_at(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory") && err.contains("pids"), "{err}");
        assert!(
            !dir.path().join("supervisor").exists(),
            "nothing created on refusal"
        );
    }
}
