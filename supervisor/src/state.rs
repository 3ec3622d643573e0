//! First-boot and every-boot preparation: directories with the right owners,
//! secrets generated once (0600), the self-signed certificate, and the
//! pre-flight checks that refuse to start a half-working stack.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context as _, bail};
use rand::RngCore;

use crate::config::{Config, Probe};
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
        ensure_dir(dir, mode, None)
            .with_context(|| format!("[supervisor] {what} = {} cannot be used", dir.display()))?;
        let probe = dir.join(".phoenix-write-test");
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
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

    for spec in &config.services {
        let owner = users.get(&spec.name);
        for dir in &spec.dirs {
            ensure_dir(dir, 0o700, owner)
                .with_context(|| format!("service {}: directory {}", spec.name, dir.display()))?;
        }
    }

    if !config.secrets.is_empty() {
        let dir = sup.state_dir.join("secrets");
        ensure_dir(&dir, 0o711, None)
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
            (Ok(cert), Ok(key)) => crate::certs::key_matches(&cert, &key) != Some(false),
            _ => false,
        };
        if crate::tls::expires_within(&tls.cert, std::time::Duration::ZERO) || !pair_fits {
            crate::tls::ensure_self_signed(tls, key_owner.as_ref())
                .context("self-signed TLS certificate (stand-in until ACME)")?;
        } else if let Some(u) = &key_owner {
            std::os::unix::fs::chown(&tls.key, Some(u.uid), Some(u.gid))?;
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
    Ok(Prepared { users })
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
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("not starting anything:\n  - {}", problems.join("\n  - "))
    }
}

pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<&RunAs>) -> std::io::Result<()> {
    let created = !dir.exists();
    fs::create_dir_all(dir)?;
    if created {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    if let Some(u) = owner {
        chown(dir, u)?;
    }
    Ok(())
}

fn chown(path: &Path, u: &RunAs) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
}

/// Write a file so that readers see the old or the new contents, never half:
/// temporary file in the same directory, fsync, then rename.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<&RunAs>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per write: two tasks writing the same file never share one.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(u) = owner {
            chown(&tmp, u)?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Generate a random secret once; afterwards only fix its mode and owner.
fn ensure_secret(path: &Path, owner: Option<&RunAs>) -> std::io::Result<()> {
    if path.exists() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        if let Some(u) = owner {
            chown(path, u)?;
        }
        return Ok(());
    }
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(path = %path.display(), "generated a secret");
    write_atomic(path, format!("{text}\n").as_bytes(), 0o600, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o640, None).unwrap();
        write_atomic(&path, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
}
