//! Starting and signalling child processes.
//!
//! The only `unsafe` of the supervisor lives here: the `pre_exec` hook that
//! moves a freshly forked child into its cgroup before it runs anything, so
//! no process of a service ever escapes its limits, drops to the service's
//! user, and ties the supervisor's own jobs to its life.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, User};

use crate::config::{Capability, ServiceSpec};

/// A service's configured user, looked up in the user database.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// The user and its primary group, as files are given to it.
    pub fn owner(&self) -> crate::fsafe::Owner {
        crate::fsafe::Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }

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

/// Whether a supervisor with this effective uid can run a service as
/// `name`: the user exists, and is its own unless it is root.
pub fn can_run_as(name: &str) -> Result<(), String> {
    let user = RunAs::lookup(name).map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid();
    if !me.is_root() && user.uid != me.as_raw() {
        return Err(format!(
            "runs as user `{name}`, but the supervisor is not root and cannot switch users; \
             remove `user` or run as root"
        ));
    }
    Ok(())
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
    build(argv, spec, run_as, cgroup_procs, false)
}

/// [`command`] for a job of the supervisor's own (a backup, a restore):
/// it gets SIGTERM when the supervisor dies (`PR_SET_PDEATHSIG`), so that
/// no job outlives the supervisor that would have checked its outcome.
pub fn job_command(
    argv: &[String],
    spec: &ServiceSpec,
    run_as: Option<&RunAs>,
) -> io::Result<Command> {
    build(argv, spec, run_as, None, true)
}

fn build(
    argv: &[String],
    spec: &ServiceSpec,
    run_as: Option<&RunAs>,
    cgroup_procs: Option<OwnedFd>,
    die_with_parent: bool,
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
    // Only root switches users; an ordinary user runs services as itself
    // (the config check allows no other user then).
    let drop_to = run_as
        .filter(|_| nix::unistd::geteuid().is_root())
        .map(|u| (u.uid, u.gid));
    let keep_bind = spec.capabilities.contains(&Capability::NetBindService);
    // The supervisor, as the child will see it as its parent.
    let parent = std::process::id() as libc::pid_t;
    if drop_to.is_some() || cgroup_procs.is_some() || die_with_parent {
        let cgroup = cgroup_procs.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: runs in the forked child before exec and only makes raw
        // system calls (write, prctl, setgroups, setgid, setuid, capset, getppid), all
        // async-signal-safe, with no allocation. The cgroup descriptor was
        // opened by the parent and is kept alive by the closure.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &cgroup_procs;
                // Into the cgroup first, while still root: "0" moves the
                // writer, so the service and all its descendants start there.
                if let Some(fd) = cgroup
                    && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(io::Error::last_os_error());
                }
                if let Some((uid, gid)) = drop_to {
                    if keep_bind && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // No supplementary groups of root survive the switch.
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if keep_bind {
                        raise_ambient(CAP_NET_BIND_SERVICE)?;
                    }
                }
                // After the user switch, which clears it; and if the
                // supervisor died before this, there is no one to tell.
                if die_with_parent {
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGTERM as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                }
                Ok(())
            });
        }
    }
    Ok(cmd)
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keep one capability across exec for a process that was root and has just
/// switched user with PR_SET_KEEPCAPS: make it effective, permitted,
/// inheritable and ambient (what systemd calls AmbientCapabilities).
///
/// # Safety
/// Only for the forked child between fork and exec; it makes raw system calls.
unsafe fn raise_ambient(cap: u32) -> io::Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let bit = 1u32 << cap;
    let data = [
        CapData {
            effective: bit,
            permitted: bit,
            inheritable: bit,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are valid for the duration of the call and
    // laid out as the kernel's capability v3 structures.
    let capset =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if capset != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    let raised = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
            0,
            0,
        )
    };
    if raised != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
