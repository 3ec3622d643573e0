//! Starting and signalling child processes.
//!
//! The only `unsafe` of the supervisor lives here: the `pre_exec` hook that
//! moves a freshly forked child into its cgroup before it runs anything, so
//! no process of a service ever escapes its limits.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, User};

use crate::config::ServiceSpec;

/// A service's configured user, looked up in the user database.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    pub fn lookup(name: &str) -> io::Result<RunAs> {
        match User::from_name(name) {
            Ok(Some(u)) => Ok(RunAs {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "user `{name}` does not exist; create it (e.g. `useradd --system {name}`) or set another user"
                ),
            )),
            Err(e) => Err(io::Error::other(format!(
                "cannot look up user `{name}`: {e}"
            ))),
        }
    }
}

/// Environment every child starts from; the supervisor's own is not inherited.
fn base_env(run_as: Option<&RunAs>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for key in ["PATH", "LANG", "LC_ALL", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            env.insert(key.to_string(), v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    if let Some(u) = run_as {
        env.insert("USER".into(), u.name.clone());
        env.insert("LOGNAME".into(), u.name.clone());
        env.insert("HOME".into(), u.home.display().to_string());
    }
    env
}

/// Build the command for a service (or an exec probe of it).
pub fn command(
    argv: &[String],
    spec: &ServiceSpec,
    run_as: Option<&RunAs>,
    cgroup_procs: Option<OwnedFd>,
) -> io::Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.envs(base_env(run_as));
    cmd.envs(&spec.env);
    for (key, path) in &spec.secret_env {
        let value = std::fs::read_to_string(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read secret {}: {e}", path.display()),
            )
        })?;
        cmd.env(key, value.trim_end_matches('\n'));
    }
    cmd.current_dir(spec.working_dir.as_deref().unwrap_or(Path::new("/")));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so stop and kill reach every descendant.
    cmd.process_group(0);
    if let Some(u) = run_as {
        // std drops supplementary groups when root switches uid.
        cmd.uid(u.uid).gid(u.gid);
    }
    if let Some(fd) = cgroup_procs {
        let raw = fd.as_raw_fd();
        // SAFETY: runs in the forked child before exec; it only calls write(2)
        // (async-signal-safe) on a descriptor opened by the parent, which is
        // kept alive by the closure. Writing "0" moves the writing process into
        // the cgroup, so the service and all its descendants start there.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &fd;
                let n = libc::write(raw, b"0".as_ptr().cast(), 1);
                if n != 1 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
    }
    Ok(cmd)
}

/// Where a program given as a bare name would be found, for the pre-flight check.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Signal the main process only.
pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Signal the whole process group the service started in.
pub fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}
