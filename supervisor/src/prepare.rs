//! First-boot and every-boot preparation: directories with the right owners,
//! secrets generated once (0600), the self-signed certificate, and the
//! pre-flight checks that refuse to start a half-working stack. Every write
//! goes through `fsafe`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rand::RngCore;

use crate::config::{Config, GeneratedFile, Probe, ServiceSpec};
use crate::fsafe;
use crate::process::{RunAs, find_program};

#[derive(Debug, Default)]
pub struct Prepared {
    users: HashMap<String, RunAs>,
}

impl Prepared {
    /// The user a service runs as; `None` means the supervisor's own.
    pub fn run_as(&self, service: &str) -> Option<RunAs> {
        self.users.get(service).cloned()
    }
}

/// Create what the config needs on disk. Idempotent; never deletes anything.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let root = nix::unistd::geteuid().is_root();
    let me = nix::unistd::geteuid();
    let sup = &config.supervisor;
    for (dir, mode, what) in [
        (&sup.state_dir, 0o755, "state_dir"),
        (&sup.run_dir, 0o755, "run_dir"),
        (&sup.log_dir, 0o750, "log_dir"),
    ] {
        fsafe::ensure_private_dir(dir, mode)
            .with_context(|| format!("[supervisor] {what} = {} cannot be used", dir.display()))?
            .check_writable()
            .with_context(|| format!("[supervisor] {what} = {} is not writable", dir.display()))?;
    }

    let mut users = HashMap::new();
    let lookup = |name: &Option<String>, service: &str| -> anyhow::Result<Option<RunAs>> {
        let Some(name) = name else { return Ok(None) };
        let user = RunAs::lookup(name).with_context(|| format!("service {service}"))?;
        if !root && user.uid != me.as_raw() {
            bail!(
                "service {service}: runs as user `{name}`, but the supervisor is not root and cannot switch users; \
                 remove `user` or run as root"
            );
        }
        Ok(Some(user))
    };
    for spec in &config.services {
        if let Some(user) = lookup(&spec.user, &spec.name)? {
            users.insert(spec.name.clone(), user);
        }
    }
    let owner_of = |name: &Option<String>| -> anyhow::Result<Option<RunAs>> {
        name.as_ref()
            .map(|n| RunAs::lookup(n))
            .transpose()
            .map_err(Into::into)
    };

    // Service directories are made before each start of their service
    // (`service_dirs`): one a service user spoiled stops that service only.

    // Also the ACME account's directory.
    if !config.secrets.is_empty() || config.tls.acme.is_some() {
        let dir = sup.state_dir.join("secrets");
        fsafe::ensure_private_dir(&dir, 0o711)
            .with_context(|| format!("secrets directory {}", dir.display()))?;
    }
    for secret in &config.secrets {
        let owner = owner_of(&secret.owner)?;
        ensure_secret(&secret.path, owner.as_ref())
            .with_context(|| format!("secret {}", secret.path.display()))?;
    }

    let tls = &config.tls;
    let key_owner = owner_of(&tls.key_owner)?;
    if tls.acme.is_some() {
        // A certificate from the CA is renewed by the certificate task; a
        // self-signed stand-in serves only until the first one comes.
        let pair_fits = match (fs::read(&tls.cert), fs::read(&tls.key)) {
            (Ok(cert), Ok(key)) => crate::tls::key_matches(&cert, &key) != Some(false),
            _ => false,
        };
        if crate::tls::expires_within(&tls.cert, std::time::Duration::ZERO) || !pair_fits {
            crate::tls::ensure_self_signed(tls, key_owner.as_ref())
                .context("self-signed TLS certificate (stand-in until ACME)")?;
        } else {
            fsafe::fix_file(&tls.key, 0o600, key_owner.as_ref().map(RunAs::owner))
                .with_context(|| format!("TLS key {}", tls.key.display()))?;
        }
    } else if tls.self_signed {
        crate::tls::ensure_self_signed(tls, key_owner.as_ref())
            .context("self-signed TLS certificate")?;
    } else {
        for f in [&tls.cert, &tls.key] {
            fs::File::open(f)
                .with_context(|| format!("[tls] mode = \"files\": cannot read {}", f.display()))?;
        }
    }
    if let Some(backup) = &config.backup {
        let owner = owner_of(&backup.user)?;
        write_s3_keys(backup, owner.as_ref())?;
    }
    Ok(Prepared { users })
}

/// pgBackRest's include file with the S3 keys of `[backup.s3] key_file`
/// (0600, PostgreSQL's user: archive-push runs under PostgreSQL), or
/// without keys when there are none to give, so that none are left behind.
fn write_s3_keys(
    backup: &crate::config::BackupSettings,
    owner: Option<&RunAs>,
) -> anyhow::Result<()> {
    let keys = match backup.s3.as_ref().and_then(|s3| s3.key_file.as_ref()) {
        Some(file) => Some(crate::s3keys::read(file).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let path = backup.keys_include();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("{}: not a file path", path.display());
    };
    if keys.is_none() && !dir.exists() {
        return Ok(());
    }
    fsafe::ensure_private_dir(dir, 0o755)
        .and_then(|d| {
            d.write_file(
                name,
                crate::config::s3_keys_include(keys.as_ref()).as_bytes(),
                0o600,
                owner.map(RunAs::owner),
            )
        })
        .with_context(|| format!("pgBackRest's S3 keys {}", path.display()))
}

/// Refuse to start when a program is missing or a port is taken, naming both.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for spec in &config.services {
        let program = &spec.command[0];
        if find_program(program).is_none() {
            problems.push(format!(
                "service {}: program `{program}` not found or not executable",
                spec.name
            ));
        }
        for probe in [
            spec.readiness.as_ref().map(|r| &r.probe),
            spec.liveness.as_ref().map(|l| &l.probe),
        ]
        .into_iter()
        .flatten()
        {
            if let Probe::Exec(argv) = probe
                && find_program(&argv[0]).is_none()
            {
                problems.push(format!(
                    "service {}: check program `{}` not found",
                    spec.name, argv[0]
                ));
            }
        }
        for addr in &spec.ports {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                problems.push(format!(
                    "service {}: cannot listen on {addr}: {e} (another process holds it?)",
                    spec.name
                ));
            }
        }
    }
    problems.extend(unreachable(config));
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("not starting anything:\n  - {}", problems.join("\n  - "))
    }
}

/// As root: directories on the way to a service's files that its user
/// cannot enter (say, `state_dir` under a 0700 directory). One line per
/// user and directory, naming both. Empty when not root (every service
/// runs as the supervisor's own user then).
pub fn unreachable(config: &Config) -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    // Per (user, directory): the services, and the first path found behind it.
    let mut closed: BTreeMap<(String, PathBuf), (fs::Metadata, Vec<String>, PathBuf)> =
        BTreeMap::new();
    for spec in &config.services {
        let Some(name) = &spec.user else { continue };
        // A missing user is named by `prepare`.
        let Ok(user) = RunAs::lookup(name) else {
            continue;
        };
        if user.uid == 0 {
            continue;
        }
        for path in needed_by(config, spec) {
            let Some((dir, meta)) = first_closed(path, &spec.dirs, &user) else {
                continue;
            };
            let (_, services, _) = closed
                .entry((user.name.clone(), dir))
                .or_insert_with(|| (meta, Vec::new(), path.to_path_buf()));
            if !services.contains(&spec.name) {
                services.push(spec.name.clone());
            }
        }
    }
    closed
        .into_iter()
        .map(|((user, dir), (meta, services, path))| {
            let owner = nix::unistd::User::from_uid(meta.uid().into())
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
            format!(
                "user `{user}` (service {}) cannot enter {} (mode {:04o}, owner {owner}) to reach {}; \
                 let it through (for example `chmod o+x {}`) or move the [supervisor] directories elsewhere",
                services.join(", "),
                dir.display(),
                meta.mode() & 0o7777,
                path.display(),
                dir.display()
            )
        })
        .collect()
}

/// What a service's user opens itself: its directories, its generated
/// files, the secrets it owns and, for the API, the TLS files.
fn needed_by<'a>(config: &'a Config, spec: &'a ServiceSpec) -> Vec<&'a Path> {
    let mut paths: Vec<&Path> = spec.dirs.iter().map(PathBuf::as_path).collect();
    paths.extend(spec.files.iter().map(|f| f.path.as_path()));
    paths.extend(
        config
            .secrets
            .iter()
            .filter(|s| s.owner.is_some() && s.owner == spec.user)
            .map(|s| s.path.as_path()),
    );
    if spec.tls_reload {
        paths.extend([config.tls.cert.as_path(), config.tls.key.as_path()]);
    }
    paths
}

/// The first existing directory above `path`, from `/` down, that `user`
/// may not search. The service's own directories are skipped (they are
/// handed to the user at start), and so is a directory with an ACL (its
/// mode bits do not tell).
fn first_closed(path: &Path, own: &[PathBuf], user: &RunAs) -> Option<(PathBuf, fs::Metadata)> {
    let mut above: Vec<&Path> = path.ancestors().skip(1).collect();
    above.reverse();
    for dir in above {
        if own.iter().any(|d| d == dir) {
            continue;
        }
        // Missing: made 0755 by the supervisor.
        let Ok(meta) = fs::metadata(dir) else { break };
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        let acl = rustix::fs::getxattr_query(dir, "system.posix_acl_access").is_ok();
        if meta.mode() & bit == 0 && !acl {
            return Some((dir.to_path_buf(), meta));
        }
    }
    None
}

/// A service's directories, made before each of its starts (0700) and
/// handed to its user through their descriptors; a symbolic link where a
/// service user could have put it is refused, and the service does not start.
pub fn service_dirs(spec: &ServiceSpec, run_as: Option<&RunAs>) -> io::Result<()> {
    for dir in &spec.dirs {
        fsafe::ensure_dir(dir, 0o700, run_as.map(RunAs::owner))?;
    }
    Ok(())
}

/// A generated file (0644), in a directory of the supervisor's own that the
/// service can read but not change (`<state_dir>/generated/<service>`, 0755).
pub fn write_generated(file: &GeneratedFile) -> io::Result<()> {
    let (Some(dir), Some(name)) = (file.path.parent(), file.path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", file.path.display()),
        ));
    };
    fsafe::ensure_private_dir(dir, 0o755)?.write_file(name, file.contents.as_bytes(), 0o644, None)
}

/// Generate a random secret once; afterwards only fix its mode and owner.
fn ensure_secret(path: &Path, owner: Option<&RunAs>) -> io::Result<()> {
    let owner = owner.map(RunAs::owner);
    match fsafe::fix_file(path, 0o600, owner) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        done => return done,
    }
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(path = %path.display(), "generated a secret");
    fsafe::write_atomic(path, format!("{text}\n").as_bytes(), 0o600, owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        ensure_secret(&path, None).unwrap();
        let first = fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 48);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        ensure_secret(&path, None).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            first,
            "never regenerated"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "mode repaired"
        );
    }
}
