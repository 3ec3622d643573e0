//! The appliance's own state to the S3 bucket of `[backup.s3]`, with
//! aws-sdk-s3, so that a new machine can be rebuilt from the bucket alone:
//! the config file, the secrets directory (the ACME account is in it) and
//! the TLS certificate and key. Layout, under `<prefix>/appliance/`:
//!
//! ```text
//! <UTC time, 20261201T020304Z>/phoenix.toml, secrets/..., tls/cert.pem, tls/key.pem, manifest.json
//! latest/...   the same objects, replaced by each copy; manifest.json last
//! ```
//!
//! `manifest.json` names the local full and its repo2 copy and lists the
//! objects; it is written last, so a copy without it is incomplete.
//! Symbolic links are not followed (the secrets directory is root's alone).
//! The objects' contents never reach a log.

use std::path::{Path, PathBuf};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use serde::Serialize;

use crate::config::S3Settings;

/// Uploads the state; each upload reads the key file and CA afresh.
#[derive(Clone)]
pub struct Uploader {
    pub s3: S3Settings,
}

#[derive(Serialize)]
struct Manifest<'a> {
    created: &'a str,
    local_backup: &'a str,
    repo2_backup: &'a str,
    objects: Vec<Object>,
}

#[derive(Serialize)]
struct Object {
    name: String,
    bytes: u64,
}

/// The prefix of the state's objects: `<prefix>/appliance`, no leading `/`.
pub fn state_prefix(s3: &S3Settings) -> String {
    format!("{}/appliance", s3.prefix.trim_matches('/'))
}

/// A timestamp fit for an object name, from RFC 3339 (`2026-12-01T02:03:04Z`
/// becomes `20261201T020304Z`).
pub fn folder_name(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// How long the reachability probe waits for the bucket.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl Uploader {
    /// Whether the bucket answers (HeadBucket, within 15 s): a copy to an
    /// S3 that is down fails at once with why, instead of in pgBackRest's
    /// retries.
    pub async fn reachable(&self) -> Result<(), String> {
        let client = client(&self.s3).await?;
        let head = client.head_bucket().bucket(&self.s3.bucket).send();
        match tokio::time::timeout(PROBE_TIMEOUT, head).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "S3 bucket {} at {}: {}",
                self.s3.bucket,
                self.s3.endpoint_url(),
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
            Err(_) => Err(format!(
                "S3 bucket {} at {}: no answer in {} s",
                self.s3.bucket,
                self.s3.endpoint_url(),
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Uploads to `<time>/` and `latest/`; returns the objects written.
    pub async fn upload(&self, local: &str, remote: &str, at: &str) -> Result<u64, String> {
        let files = collect(&self.s3.state);
        let client = client(&self.s3).await?;
        let base = state_prefix(&self.s3);
        let manifest = Manifest {
            created: at,
            local_backup: local,
            repo2_backup: remote,
            objects: files
                .iter()
                .map(|(name, body)| Object {
                    name: name.clone(),
                    bytes: body.len() as u64,
                })
                .collect(),
        };
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        let mut written = 0;
        for folder in [folder_name(at), "latest".to_string()] {
            for (name, body) in files
                .iter()
                .map(|(n, b)| (n.as_str(), b))
                .chain([("manifest.json", &manifest)])
            {
                let key = format!("{base}/{folder}/{name}");
                self.put(&client, &key, body.clone()).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    async fn put(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let mut put = client
            .put_object()
            .bucket(&self.s3.bucket)
            .key(key)
            .body(ByteStream::from(body));
        if let Some(class) = &self.s3.storage_class {
            put = put.storage_class(StorageClass::from(class.as_str()));
        }
        if let Some(kms) = &self.s3.kms_key_id {
            put = put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        put.send().await.map(drop).map_err(|e| {
            format!(
                "PUT s3://{}/{key}: {}",
                self.s3.bucket,
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })
    }
}

/// An S3 client for `[backup.s3]`: its endpoint, region and addressing;
/// the system's CAs plus `ca_file`; the key file's keys or the default
/// AWS chain (the instance profile on EC2).
pub async fn client(s3: &S3Settings) -> Result<aws_sdk_s3::Client, String> {
    let mut trust = TrustStore::default();
    if let Some(ca) = &s3.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("[backup.s3] ca_file {}: {e}", ca.display()))?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| format!("TLS for S3: {e}"))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(s3.region.clone()))
        .http_client(http);
    if let Some(file) = &s3.key_file {
        let keys = crate::s3keys::read(file)?;
        loader = loader.credentials_provider(Credentials::new(
            keys.access_key_id,
            keys.secret_access_key,
            None,
            None,
            "phoenix-key-file",
        ));
    }
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(s3.endpoint_url())
        .force_path_style(s3.path_style)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// The state's files, each with its object name: a file as named, a
/// directory's regular files below its name. What is missing is left out
/// (a self-signed certificate not made yet, say); links are not followed.
fn collect(state: &[(String, PathBuf)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, path) in state {
        walk(name, path, &mut out, 0);
    }
    out
}

fn walk(name: &str, path: &Path, out: &mut Vec<(String, Vec<u8>)>, depth: u32) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        match std::fs::read(path) {
            Ok(body) => out.push((name.to_string(), body)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "not copied offsite: unreadable")
            }
        }
    } else if meta.is_dir() && depth < 4 {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Some(child) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            walk(&format!("{name}/{child}"), &entry.path(), out, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_named_below_their_folder_and_links_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::write(secrets.join("b"), "2").unwrap();
        std::fs::write(secrets.join("a"), "1").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", secrets.join("link")).unwrap();
        let toml = dir.path().join("phoenix.toml");
        std::fs::write(&toml, "[backup]\n").unwrap();
        let files = collect(&[
            ("phoenix.toml".into(), toml),
            ("secrets".into(), secrets),
            ("tls/key.pem".into(), dir.path().join("missing")),
        ]);
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["phoenix.toml", "secrets/a", "secrets/b"]);
    }

    #[test]
    fn folders_are_timestamps_under_the_prefix() {
        assert_eq!(folder_name("2026-12-01T02:03:04Z"), "20261201T020304Z");
    }
}
