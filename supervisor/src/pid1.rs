//! Duties that fall to the supervisor when it is PID 1 (or a subreaper).

use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Become the reaper of every orphan below us, even when not PID 1.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans will not be reaped here");
    }
}

/// Mark every descriptor the supervisor inherited (from a shell, a wrapper,
/// a careless parent) close-on-exec, so that no service, which runs as
/// another user, receives a descriptor opened by root. Those the supervisor
/// opens itself already are: Rust opens everything with `O_CLOEXEC`.
pub fn close_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        tracing::warn!("cannot list /proc/self/fd; inherited descriptors stay open in services");
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // Only the flag changes; the listing's own descriptor, closed by
        // now, answers EBADF, which is fine.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The kernel's fixed inode number of the initial PID namespace.
const INITIAL_PID_NS: &str = "pid:[4026531836]";

/// PID 1 of the whole machine (as opposed to PID 1 of a container or a
/// `unshare --pid`, which should exit rather than power anything off).
pub fn is_machine_init() -> bool {
    is_pid1()
        && std::fs::read_link("/proc/self/ns/pid").is_ok_and(|l| l.as_os_str() == INITIAL_PID_NS)
}

/// In a bare image nobody else mounts the API file systems: do it when missing.
pub fn mount_essentials() {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_mounted = |target: &str| {
        mounted
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(target))
    };
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
    ];
    for (source, target, fstype, flags, data) in table {
        // /proc is read first, so re-check after each mount.
        if is_mounted(target) || (target == "/proc" && Path::new("/proc/self").exists()) {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) => tracing::info!(target, fstype, "mounted"),
            Err(e) => tracing::warn!(target, fstype, error = %e, "cannot mount"),
        }
    }
}

/// Raise the open-files soft limit to the hard limit, for the supervisor and
/// (inherited) every service: the API holds a connection per agent, and the
/// usual soft limit of 1024 would cap it well below the agents it serves.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Let ctrl-alt-del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() {
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(error = %e, "cannot take over ctrl-alt-del");
    }
}

/// The last act of PID 1: flush file systems and power the machine off.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).unwrap_err();
    tracing::error!(error = %err, "power off failed");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
