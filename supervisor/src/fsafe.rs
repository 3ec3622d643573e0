//! File-system writes that a service user cannot redirect.
//!
//! The supervisor runs as root; each service user owns its directories
//! (`<state_dir>/prometheus`, `<state_dir>/postgres`, ...) and may put
//! anything in them at any moment, symbolic links included. Every path the
//! supervisor creates, writes, renames, chowns or chmods goes through this
//! module, which
//!
//! - walks a path one component at a time from an open directory (`openat`
//!   with `O_NOFOLLOW | O_DIRECTORY`), following a symbolic link only when
//!   the directory that holds it is *trusted*: owned by root or by the
//!   supervisor's own user and writable by no one else (or sticky, like
//!   `/tmp`, with the link owned by root, the supervisor's user or the
//!   directory's owner). A link anywhere else is refused, naming the path
//!   and the directory's owner, and so is a non-directory where a directory
//!   is expected;
//! - creates files with `O_CREAT | O_EXCL | O_NOFOLLOW` under an
//!   unpredictable name relative to the open directory, and `renameat`s
//!   them into place within that same directory;
//! - changes owners and modes only on an open descriptor (`fchown`,
//!   `fchmod`), never through a path, and never on a file with a second
//!   hard link in an untrusted directory.
//!
//! It depends on nothing else in the crate.
//!
//! Where the supervisor writes, and why it is safe:
//!
//! | what | written by | directory's owner | how |
//! |---|---|---|---|
//! | `state_dir`, `run_dir`, `log_dir`, `secrets/`, `tls/`, `generated/<service>/` | `prepare`, `tls`, `prepare::write_generated` | root (checked) | `ensure_private_dir` |
//! | a service's directories (`<state_dir>/postgres`, `prometheus`, `prometheus/data`, `pushgateway`, `<run_dir>/postgres`) | `prepare::service_dirs`, before each start | root, or the service user for `prometheus/data` | `ensure_dir`: created, then `fchown` on the descriptor; a link in the service's directory refused |
//! | `prometheus.yml`, `setup.sql` | `prepare::write_generated` | root | `write_file`; the service can read them, not change them (psql runs `setup.sql` as root) |
//! | `generated/pgbackrest/conf.d/s3-keys.conf` | `prepare` | root | `write_file`, 0600, `fchown` to PostgreSQL's user before the keys are written |
//! | secrets, the ACME account | `prepare`, `tls::acme` | root (`secrets/`, 0711) | `write_atomic`, `fix_file` |
//! | TLS key and certificate | `tls::ensure_self_signed`, `tls::install`, `prepare` | root (`tls/`) | `write_atomic`, `fix_file` |
//! | `services.json`, `scaling-state.json` | `leftovers`, `scaling` | root (`run_dir`, `state_dir`) | `write_atomic` |
//! | the config file, `user-data.rejected` | `firstboot` | root (`/etc/phoenix`) | `ensure_dir`, `write_atomic` |
//! | service logs and their rotation | `logs` (file-rotate, by path) | root (`log_dir`, checked) | `O_NOFOLLOW` as well |
//! | `control.sock` | `control::bind` (removes a stale one, by path) | root (`run_dir`, checked) | umask 0177 |
//! | cgroup files | `cgroup` | root, on cgroupfs (no links can be made there; nothing is delegated to service users) | by path |
//! | mount points | `pid1` | root, at boot before any service | by path |
//! | `<data>.initdb`, `<data>` | `pginit` | `postgres` | runs as `postgres` itself, with no more rights than the owner |

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;

/// The owner to give a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Symbolic links followed in one walk, at most (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Mode of the intermediate directories a walk creates.
const PARENT_MODE: u32 = 0o755;

/// A directory reached without following a symbolic link that anyone but
/// root or the supervisor's user could have made. All work on files in it
/// is relative to its descriptor.
#[derive(Debug)]
pub struct Dir {
    /// An `O_PATH` descriptor: enough for the `*at` calls, and it needs no
    /// read permission on the directory.
    fd: OwnedFd,
    path: PathBuf,
}

/// Opens `path`, which must exist and be a directory.
pub fn open_dir(path: &Path) -> io::Result<Dir> {
    walk(path, None)
}

/// Creates `path` and its missing parents (parents 0755, `path` itself
/// `mode`, exactly; existing directories keep their mode), then gives
/// `path` to `owner` through its descriptor.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<Owner>) -> io::Result<Dir> {
    let dir = walk(path, Some(mode))?;
    if let Some(owner) = owner {
        dir.set_owner(owner)?;
    }
    Ok(dir)
}

/// [`ensure_dir`] for a directory of the supervisor's own (state, logs,
/// secrets, TLS files, generated configuration): it must also be owned by
/// root or the supervisor's user and writable by no one else, since what
/// is kept there is later used by path.
pub fn ensure_private_dir(path: &Path, mode: u32) -> io::Result<Dir> {
    let dir = ensure_dir(path, mode, None)?;
    dir.check_private()?;
    Ok(dir)
}

/// Replaces `path` as a whole (readers see the old or the new contents,
/// never a part): a new file in the same directory, fsync, `renameat`, and
/// an fsync of the directory. A symbolic link at `path` is replaced, not
/// followed. The directory must exist.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    let (parent, name) = split(path)?;
    open_dir(parent)?.write_file(name, contents, mode, owner)
}

/// Sets the mode and owner of the existing regular file `path` through a
/// descriptor. A symbolic link there is refused; `NotFound` when missing.
pub fn fix_file(path: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    let (parent, name) = split(path)?;
    open_dir(parent)?.fix_file(name, mode, owner)
}

impl Dir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stat(&self) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// A descriptor that allows `fchown`, `fchmod` and `fsync`, which an
    /// `O_PATH` one does not: the same directory opened again through ".".
    fn handle(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    pub fn set_owner(&self, owner: Owner) -> io::Result<()> {
        let h = self.handle()?;
        rustix::fs::fchown(
            &h,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(|e| at(&self.path, e))
    }

    fn set_mode(&self, mode: u32) -> io::Result<()> {
        let h = self.handle()?;
        rustix::fs::fchmod(&h, Mode::from_raw_mode(mode)).map_err(|e| at(&self.path, e))
    }

    /// Swaps two entries of this directory in one step (`renameat2` with
    /// `RENAME_EXCHANGE`): at every moment each name holds one of the two.
    /// Names only: links are moved, never followed.
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, a, &self.fd, b, rustix::fs::RenameFlags::EXCHANGE)?;
        rustix::fs::fsync(self.handle()?)?;
        Ok(())
    }

    /// Renames an entry of this directory, refusing to replace one
    /// (`RENAME_NOREPLACE`).
    pub fn rename_new(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        rustix::fs::renameat_with(
            &self.fd,
            from,
            &self.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )?;
        rustix::fs::fsync(self.handle()?)?;
        Ok(())
    }

    /// Refuses a directory owned by another user, or writable by others.
    pub fn check_private(&self) -> io::Result<()> {
        let st = self.stat()?;
        if trusted_uid(st.st_uid) && !others_may_write(&st) {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by {} with mode {:04o}: the supervisor keeps its own files only in \
                 a directory owned by root (or its own user) that no one else can write",
                self.path.display(),
                who(st.st_uid),
                st.st_mode & 0o7777
            ),
        ))
    }

    /// Whether the supervisor can create files here (a file is made and
    /// removed again).
    pub fn check_writable(&self) -> io::Result<()> {
        let (tmp, file) = self.create_temp(OsStr::new(".phoenix-write-test"), 0o600)?;
        drop(file);
        rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty())?;
        Ok(())
    }

    /// [`write_atomic`] for the entry `name` of this directory.
    pub fn write_file(
        &self,
        name: &OsStr,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> io::Result<()> {
        check_name(name)?;
        let (tmp, file) = self.create_temp(name, mode)?;
        let result = (|| {
            // Mode and owner before the contents, so that a secret is never
            // readable by anyone else, even for a moment.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
            if let Some(o) = owner {
                rustix::fs::fchown(
                    &file,
                    Some(Uid::from_raw(o.uid)),
                    Some(Gid::from_raw(o.gid)),
                )?;
            }
            let mut file = File::from(file);
            file.write_all(contents)?;
            file.sync_all()?;
            rustix::fs::renameat(&self.fd, &tmp, &self.fd, name)?;
            rustix::fs::fsync(self.handle()?)?;
            Ok(())
        })();
        if result.is_err() {
            // Only the name is removed: whatever is there now (the file, or
            // something put in its place) is not followed.
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        result
    }

    /// [`fix_file`] for the entry `name` of this directory.
    pub fn fix_file(&self, name: &OsStr, mode: u32, owner: Option<Owner>) -> io::Result<()> {
        check_name(name)?;
        let path = self.path.join(name);
        // O_NONBLOCK: a FIFO put there must not make the open wait.
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(refused(format!(
                    "{} is a symbolic link; the supervisor sets modes and owners only on the file itself",
                    path.display()
                )));
            }
            Err(e) => return Err(at(&path, e)),
        };
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refused(format!(
                "{} is a {} owned by {}, not a regular file",
                path.display(),
                kind(&st),
                who(st.st_uid)
            )));
        }
        if st.st_nlink > 1 && !self.trusted()? {
            return Err(refused(format!(
                "{} has {} hard links in {}, a directory {} can change: it may be another file",
                path.display(),
                st.st_nlink,
                self.path.display(),
                who(self.stat()?.st_uid)
            )));
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| at(&path, e))?;
        if let Some(o) = owner {
            rustix::fs::fchown(&fd, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))
                .map_err(|e| at(&path, e))?;
        }
        Ok(())
    }

    /// Whether only root or the supervisor's user can change this
    /// directory's entries.
    fn trusted(&self) -> io::Result<bool> {
        let st = self.stat()?;
        Ok(trusted_uid(st.st_uid) && !others_may_write(&st))
    }

    /// A new file `.<name>.<random>.tmp` in this directory, created with
    /// `O_EXCL | O_NOFOLLOW`: never an existing file, never through a link.
    fn create_temp(&self, name: &OsStr, mode: u32) -> io::Result<(OsString, OwnedFd)> {
        let mut last = Errno::EXIST;
        for _ in 0..16 {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(".{:016x}.tmp", rand::random::<u64>()));
            match rustix::fs::openat(
                &self.fd,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            ) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(at(&self.path, e)),
            }
        }
        Err(at(&self.path, last))
    }
}

/// One walk from `/` (or the current directory) to `path`, component by
/// component; with `create`, missing directories are made on the way.
fn walk(path: &Path, create: Option<u32>) -> io::Result<Dir> {
    let root =
        || -> io::Result<OwnedFd> { open_component(CWD, "/").map_err(|e| at(Path::new("/"), e)) };
    let (mut fd, mut here) = if path.is_absolute() {
        (root()?, PathBuf::from("/"))
    } else {
        (
            open_component(CWD, ".").map_err(|e| at(Path::new("."), e))?,
            PathBuf::new(),
        )
    };
    let mut queue = components(path)?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            fd = open_component(&fd, "..").map_err(|e| at(&here, e))?;
            here.push("..");
            continue;
        }
        let next = here.join(&name);
        match open_component(&fd, &name) {
            Ok(child) => {
                fd = child;
                here = next;
            }
            Err(Errno::NOENT) if create.is_some() => {
                let mode = match (queue.is_empty(), create) {
                    (true, Some(mode)) => mode,
                    _ => PARENT_MODE,
                };
                match rustix::fs::mkdirat(&fd, &name, Mode::from_raw_mode(mode)) {
                    Ok(()) => {
                        let child = open_component(&fd, &name).map_err(|e| at(&next, e))?;
                        // Exactly `mode`, whatever the umask.
                        let made = Dir {
                            fd: child,
                            path: next.clone(),
                        };
                        made.set_mode(mode)?;
                        fd = made.fd;
                        here = next;
                    }
                    // Made meanwhile by someone else: look again.
                    Err(Errno::EXIST) => queue.push_front(name),
                    Err(e) => return Err(at(&next, e)),
                }
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| at(&next, e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(refused(format!(
                        "{} is not a directory but a {} owned by {}",
                        next.display(),
                        kind(&st),
                        who(st.st_uid)
                    )));
                }
                let target =
                    rustix::fs::readlinkat(&fd, &name, Vec::new()).map_err(|e| at(&next, e))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                let parent = rustix::fs::fstat(&fd).map_err(|e| at(&here, e))?;
                if !may_follow(&parent, &st) {
                    return Err(refused(format!(
                        "{} is a symbolic link (to {}) in {}, a directory owned by {} with mode \
                         {:04o}: not followed, since a user other than root could have made it",
                        next.display(),
                        target.display(),
                        here.display(),
                        who(parent.st_uid),
                        parent.st_mode & 0o7777
                    )));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(at(&next, Errno::LOOP));
                }
                let mut rest = components(&target)?;
                rest.extend(queue);
                queue = rest;
                if target.is_absolute() {
                    fd = root()?;
                    here = PathBuf::from("/");
                }
            }
            Err(e) => return Err(at(&next, e)),
        }
    }
    Ok(Dir {
        fd,
        path: path.to_path_buf(),
    })
}

fn open_component<Fd: std::os::fd::AsFd>(
    dir: Fd,
    name: impl rustix::path::Arg,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names of `path` in order, without `/` and `.`.
fn components(path: &Path) -> io::Result<VecDeque<OsString>> {
    let mut out = VecDeque::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => out.push_back(OsString::from("..")),
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a Unix path", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// The directory and the file name of `path`.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            name,
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )),
    }
}

fn check_name(name: &OsStr) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Writable by others, or by a group other than root's.
fn others_may_write(st: &Stat) -> bool {
    st.st_mode & 0o002 != 0 || (st.st_mode & 0o020 != 0 && st.st_gid != 0)
}

/// Whether a walk may follow the link `link` found in the directory `dir`.
fn may_follow(dir: &Stat, link: &Stat) -> bool {
    if !trusted_uid(dir.st_uid) {
        return false;
    }
    if !others_may_write(dir) {
        return true;
    }
    // Sticky (like /tmp): others cannot remove or replace a link they do
    // not own; the kernel's protected_symlinks rule.
    let sticky = dir.st_mode & 0o1000 != 0;
    sticky && (trusted_uid(link.st_uid) || link.st_uid == dir.st_uid)
}

/// A user for messages: `name (uid N)`, or the number alone.
fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn kind(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

fn at(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A root-owned 0600 file and a root-owned 0700 directory: what an
    /// attacker's links point at.
    fn victims(dir: &Path) -> (PathBuf, PathBuf) {
        let file = dir.join("victim");
        std::fs::write(&file, "precious\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = dir.join("victim-dir");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        (file, d)
    }

    fn unchanged(file: &Path, d: &Path) {
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(std::fs::read_to_string(file).unwrap(), "precious\n");
        assert_eq!(mode(file), 0o600);
        assert_eq!(std::fs::metadata(file).unwrap().uid(), me);
        assert_eq!(mode(d), 0o700);
        assert_eq!(std::fs::metadata(d).unwrap().uid(), me);
    }

    /// A directory owned by `nobody`, as a service's own directory is;
    /// None when not root (it cannot be made).
    fn service_owned(parent: &Path) -> Option<(PathBuf, Owner)> {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: needs root to make a directory another user owns");
            return None;
        }
        let nobody = Owner {
            uid: 65534,
            gid: 65534,
        };
        let d = parent.join("svc");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(nobody.uid), Some(nobody.gid)).unwrap();
        Some((d, nobody))
    }

    #[test]
    fn atomic_write_replaces_the_whole_file_with_its_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o640, None).unwrap();
        write_atomic(&path, b"two", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(mode(&path), 0o600);
        let err = write_atomic(&dir.path().join("missing/f"), b"x", 0o644, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn ensure_dir_creates_parents_with_exact_modes_and_keeps_existing_modes() {
        let dir = tempfile::tempdir().unwrap();
        // Group-writable: more than the usual umask (022) lets mkdir give.
        ensure_dir(&dir.path().join("a/b/c"), 0o775, None).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o755);
        assert_eq!(mode(&dir.path().join("a/b")), 0o755);
        assert_eq!(mode(&dir.path().join("a/b/c")), 0o775);
        std::fs::set_permissions(
            dir.path().join("a/b/c"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        ensure_dir(&dir.path().join("a/b/c"), 0o711, None).unwrap();
        assert_eq!(
            mode(&dir.path().join("a/b/c")),
            0o750,
            "an existing mode is kept"
        );
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_refused_naming_it_and_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        let err = ensure_dir(&dir.path().join("f/sub"), 0o755, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "{} is not a directory but a regular file owned by",
                dir.path().join("f").display()
            )),
            "{msg}"
        );
        assert!(msg.contains("uid "), "{msg}");
    }

    #[test]
    fn links_in_trusted_directories_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        symlink("real", dir.path().join("rel")).unwrap();
        symlink(dir.path().join("real"), dir.path().join("abs")).unwrap();
        symlink("../real/../real", dir.path().join("real/up")).unwrap();
        write_atomic(&dir.path().join("rel/a"), b"a", 0o644, None).unwrap();
        write_atomic(&dir.path().join("abs/b"), b"b", 0o644, None).unwrap();
        ensure_dir(&dir.path().join("rel/up/c"), 0o700, None).unwrap();
        assert_eq!(std::fs::read(dir.path().join("real/a")).unwrap(), b"a");
        assert_eq!(std::fs::read(dir.path().join("real/b")).unwrap(), b"b");
        assert!(dir.path().join("real/c").is_dir());
        // A link at the name itself is replaced, not written through.
        symlink("a", dir.path().join("real/d")).unwrap();
        write_atomic(&dir.path().join("real/d"), b"d", 0o644, None).unwrap();
        assert_eq!(std::fs::read(dir.path().join("real/a")).unwrap(), b"a");
        assert!(
            !std::fs::symlink_metadata(dir.path().join("real/d"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A loop ends.
        symlink("loop", dir.path().join("loop")).unwrap();
        assert!(open_dir(&dir.path().join("loop")).is_err());
    }

    #[test]
    fn a_service_users_link_to_a_directory_is_refused_and_the_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (file, victim_dir) = victims(dir.path());
        let Some((svc, nobody)) = service_owned(dir.path()) else {
            return;
        };
        symlink(&victim_dir, svc.join("data")).unwrap();
        let err = ensure_dir(&svc.join("data"), 0o700, Some(nobody)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "{} is a symbolic link",
                svc.join("data").display()
            )) && msg.contains("owned by nobody (uid 65534)")
                && msg.contains(&victim_dir.display().to_string()),
            "{msg}"
        );
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // Deeper too: a link on the way to the file.
        let err = write_atomic(&svc.join("data/f"), b"x", 0o644, None).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(!victim_dir.join("f").exists());
        unchanged(&file, &victim_dir);
    }

    #[test]
    fn a_service_users_links_never_redirect_a_write_or_a_mode_change() {
        let dir = tempfile::tempdir().unwrap();
        let (file, victim_dir) = victims(dir.path());
        let Some((svc, nobody)) = service_owned(dir.path()) else {
            return;
        };
        // Links at the name, and at every temporary name the old helper used.
        symlink(&file, svc.join("config.yml")).unwrap();
        for n in 0..64 {
            symlink(
                &file,
                svc.join(format!(".config.yml.tmp{}-{n}", std::process::id())),
            )
            .unwrap();
        }
        write_atomic(&svc.join("config.yml"), b"generated\n", 0o644, None).unwrap();
        assert_eq!(
            std::fs::read(svc.join("config.yml")).unwrap(),
            b"generated\n"
        );
        unchanged(&file, &victim_dir);

        // fix_file: neither through a link nor on a hard link of another file.
        symlink(&file, svc.join("key.pem")).unwrap();
        let err = fix_file(&svc.join("key.pem"), 0o644, Some(nobody)).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        std::fs::hard_link(&file, svc.join("hard")).unwrap();
        let err = fix_file(&svc.join("hard"), 0o644, Some(nobody)).unwrap_err();
        assert!(err.to_string().contains("2 hard links"), "{err}");
        unchanged(&file, &victim_dir);

        // Its own file, though, is fixed.
        std::fs::write(svc.join("own"), "").unwrap();
        fix_file(&svc.join("own"), 0o600, Some(nobody)).unwrap();
        let meta = std::fs::metadata(svc.join("own")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o600, 65534));
        assert_eq!(
            fix_file(&svc.join("none"), 0o600, None).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn directories_of_the_supervisor_must_be_its_own() {
        let dir = tempfile::tempdir().unwrap();
        ensure_private_dir(&dir.path().join("mine"), 0o755).unwrap();
        std::fs::create_dir(dir.path().join("open")).unwrap();
        std::fs::set_permissions(
            dir.path().join("open"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = ensure_private_dir(&dir.path().join("open"), 0o755).unwrap_err();
        assert!(err.to_string().contains("with mode 0777"), "{err}");
        let Some((svc, _)) = service_owned(dir.path()) else {
            return;
        };
        let err = ensure_private_dir(&svc, 0o755).unwrap_err();
        assert!(
            err.to_string().contains("owned by nobody (uid 65534)"),
            "{err}"
        );
    }

    #[test]
    fn writability_is_checked_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        open_dir(dir.path()).unwrap().check_writable().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
