//! Enrollment: the agent trades the enrollment token for its own
//! credential once, and keeps the credential in `<state>/credential`
//! (mode 0600, written atomically). Later starts read it and do not enroll
//! again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use phoenix_wire::agent::{EnrollRequest, Enrolled, path};

use crate::client::{Refusal, check};
use crate::config::Config;

pub const CREDENTIAL_FILE: &str = "credential";

/// The credential: `<agent id>.<secret>`.
#[derive(Clone)]
pub struct Credential {
    pub agent_id: uuid::Uuid,
    text: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}.<secret>)", self.agent_id)
    }
}

impl Credential {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.text)
    }

    fn parse(text: &str) -> Option<Credential> {
        let text = text.trim();
        let (id, secret) = text.split_once('.')?;
        if secret.is_empty() {
            return None;
        }
        Some(Credential {
            agent_id: id.parse().ok()?,
            text: text.to_owned(),
        })
    }
}

pub fn credential_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CREDENTIAL_FILE)
}

/// Reads the stored credential, if the agent enrolled before.
pub fn stored(state_dir: &Path) -> anyhow::Result<Option<Credential>> {
    let path = credential_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Credential::parse(&text).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a credential (<agent id>.<secret>); delete it to enroll again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The stored credential, or a new one from enrolling with the token file.
pub async fn credential(config: &Config, client: &reqwest::Client) -> anyhow::Result<Credential> {
    if let Some(c) = stored(&config.state_dir)? {
        return Ok(c);
    }
    let Some(token_file) = &config.api.enrollment_token_file else {
        anyhow::bail!(
            "the agent is not enrolled ({} does not exist) and [api] enrollment_token_file is not set",
            credential_path(&config.state_dir).display()
        );
    };
    let token = std::fs::read_to_string(token_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the enrollment token {}: {e}",
            token_file.display()
        )
    })?;
    let hostname = sysinfo::System::host_name().unwrap_or_else(|| "unknown".into());
    let request = EnrollRequest {
        token: token.trim().to_owned(),
        name: config.api.name.clone().unwrap_or_else(|| hostname.clone()),
        hostname,
        labels: config.api.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let url = config.api.url.join(path::ENROLL)?;
    let answer = check(client.post(url).json(&request).send().await)
        .await
        .map_err(|e| match e {
            Refusal::Refused { code, detail, .. } => anyhow::anyhow!(
                "enrollment refused ({code}): {detail}; ask an admin for a new enrollment token"
            ),
            other => anyhow::anyhow!("cannot enroll: {other}"),
        })?;
    let enrolled: Enrolled = answer.json().await?;
    let credential = Credential::parse(&enrolled.credential).ok_or_else(|| {
        anyhow::anyhow!("the control plane answered a credential of an unknown form")
    })?;
    write_secret(&credential_path(&config.state_dir), &enrolled.credential)?;
    tracing::info!(agent_id = %credential.agent_id, name = %request.name, "enrolled");
    Ok(credential)
}

/// Writes `text` to `path` with mode 0600 through a temporary file and a
/// rename, so a crash leaves the old file or the new one.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_credential_is_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4();
        write_secret(&credential_path(dir.path()), &format!("{id}.s3cret")).unwrap();
        let meta = std::fs::metadata(credential_path(dir.path())).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let c = stored(dir.path()).unwrap().unwrap();
        assert_eq!(c.agent_id, id);
        assert_eq!(c.bearer(), format!("Bearer {id}.s3cret"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the secret is never printed"
        );
    }

    #[test]
    fn a_damaged_credential_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(credential_path(dir.path()), "garbage").unwrap();
        let err = stored(dir.path()).unwrap_err().to_string();
        assert!(err.contains("delete it to enroll again"), "{err}");
        assert!(
            stored(tempfile::tempdir().unwrap().path())
                .unwrap()
                .is_none()
        );
    }
}
