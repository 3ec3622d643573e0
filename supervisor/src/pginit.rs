//! `phoenix-supervisor postgres-init`: initialise the PostgreSQL data
//! directory exactly once. initdb runs into a scratch directory that is
//! renamed into place, so an interrupted first boot never leaves a
//! half-initialised cluster that looks real.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

pub struct InitOptions {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub superuser: String,
    pub superuser_password_file: PathBuf,
}

/// Returns true when it initialised, false when the cluster already existed.
pub fn postgres_init(o: &InitOptions) -> anyhow::Result<bool> {
    if o.data_dir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    if o.data_dir.exists() && std::fs::read_dir(&o.data_dir)?.next().is_some() {
        bail!(
            "{} is not empty but holds no PG_VERSION: not a PostgreSQL data directory; move it aside and start again",
            o.data_dir.display()
        );
    }
    let scratch = scratch_dir(&o.data_dir);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing an interrupted initdb at {}", scratch.display()))?;
    }
    let initdb = o.bin_dir.join("initdb");
    let status = Command::new(&initdb)
        .arg("-D")
        .arg(&scratch)
        .arg("-U")
        .arg(&o.superuser)
        .arg(format!("--pwfile={}", o.superuser_password_file.display()))
        .args([
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--data-checksums",
        ])
        .status()
        .with_context(|| format!("cannot run {}", initdb.display()))?;
    if !status.success() {
        bail!(
            "{} failed ({status}); its output is above",
            initdb.display()
        );
    }
    if o.data_dir.exists() {
        std::fs::remove_dir(&o.data_dir)?;
    }
    std::fs::rename(&scratch, &o.data_dir)?;
    Ok(true)
}

fn scratch_dir(data: &Path) -> PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".initdb");
    data.with_file_name(name)
}
