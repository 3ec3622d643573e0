//! `[backup.s3]`: the offsite copy. pgBackRest's second repository (repo2)
//! on S3, and where the appliance's own state goes beside it. Read by
//! `backup.rs` only; the keys are never in the TOML (the instance profile,
//! or a key file checked here through [`LoadOptions::key_files`]).
//!
//! [`LoadOptions::key_files`]: crate::config::LoadOptions::key_files

use std::fmt::Write as _;
use std::path::PathBuf;

use super::context::Context;
use crate::config::file::S3Table;
use crate::config::spec::{S3Settings, TlsSettings};
use crate::config::{ConfigError, Located};

pub(super) fn expand(
    raw: &S3Table,
    ctx: &Context<'_>,
    tls: &TlsSettings,
    local_retention: u64,
) -> Result<S3Settings, ConfigError> {
    let loc = ctx.loc;
    let key = |k: &'static str| -> [&'static str; 3] { ["backup", "s3", k] };
    let bucket = required(
        &raw.bucket,
        loc,
        "bucket",
        "the bucket's name, like \"acme-phoenix-backups\"",
    )?;
    if !valid_bucket(&bucket) {
        return Err(loc.error(
            &key("bucket"),
            format!(
                "`{bucket}` is not an S3 bucket name: 3 to 63 lower-case letters, digits, dots and \
                 hyphens, starting and ending with a letter or digit"
            ),
        ));
    }
    let region = required(
        &raw.region,
        loc,
        "region",
        "the bucket's region, like \"eu-west-1\"",
    )?;
    let prefix = prefix(raw.prefix.as_deref().unwrap_or("/phoenix"))
        .map_err(|m| loc.error(&key("prefix"), m))?;
    let (host, port) = match &raw.endpoint {
        Some(e) => endpoint(e).map_err(|m| loc.error(&key("endpoint"), m))?,
        None => (format!("s3.{region}.amazonaws.com"), None),
    };
    let path_style = match raw.uri_style.as_deref().unwrap_or("host") {
        "host" => false,
        "path" => true,
        other => {
            return Err(loc.error(
                &key("uri_style"),
                format!(
                    "`{other}` is not \"host\" (bucket.endpoint) or \"path\" (endpoint/bucket)"
                ),
            ));
        }
    };
    let key_file = credentials(raw, ctx)?;
    if let Some(class) = &raw.storage_class
        && !STORAGE_CLASSES.contains(&class.as_str())
    {
        return Err(loc.error(
            &key("storage_class"),
            format!("`{class}` is not one of {}", STORAGE_CLASSES.join(", ")),
        ));
    }
    let mut state = vec![
        ("phoenix.toml".to_string(), ctx.opts.cwd.join(loc.file)),
        ("secrets".to_string(), ctx.secrets_dir.clone()),
    ];
    state.push(("tls/cert.pem".into(), tls.cert.clone()));
    state.push(("tls/key.pem".into(), tls.key.clone()));
    Ok(S3Settings {
        bucket,
        prefix,
        region,
        host,
        port,
        path_style,
        storage_class: raw.storage_class.clone(),
        kms_key_id: raw.kms_key_id.clone().filter(|k| !k.is_empty()),
        key_file,
        ca_file: raw.ca_file.clone(),
        retention_full_days: raw.retention_full_days.map_or(local_retention, |d| d.0),
        state,
    })
}

/// S3's storage classes that hold an object for immediate reading.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
];

fn required(
    value: &Option<String>,
    loc: &Located<'_>,
    name: &'static str,
    example: &str,
) -> Result<String, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(loc.error(
            &["backup", "s3", name],
            format!("[backup.s3] needs `{name}`: {example}"),
        )),
    }
}

/// The key file for `credentials = "file"`, checked; None for the
/// instance profile.
fn credentials(raw: &S3Table, ctx: &Context<'_>) -> Result<Option<PathBuf>, ConfigError> {
    let loc = ctx.loc;
    match raw.credentials.as_deref().unwrap_or("instance-profile") {
        "instance-profile" => match &raw.key_file {
            Some(_) => Err(loc.error(
                &["backup", "s3", "key_file"],
                "a key file is read only with credentials = \"file\"; the default, \
                 \"instance-profile\", takes the keys from the EC2 instance's role",
            )),
            None => Ok(None),
        },
        "file" => {
            let Some(path) = &raw.key_file else {
                return Err(loc.error(
                    &["backup", "s3", "credentials"],
                    "credentials = \"file\" needs `key_file`: the path of a file (mode 0600, owned \
                     by root) holding AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines",
                ));
            };
            if let Some(check) = ctx.opts.key_files {
                check(path).map_err(|why| loc.error(&["backup", "s3", "key_file"], why))?;
            }
            Ok(Some(path.clone()))
        }
        other => Err(loc.error(
            &["backup", "s3", "credentials"],
            format!(
                "`{other}` is not \"instance-profile\" (the EC2 instance's role) or \"file\" \
                 (keys in `key_file`); keys are never written in this file"
            ),
        )),
    }
}

fn valid_bucket(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// repo2-path: absolute, no trailing slash, no `..`, no spaces.
fn prefix(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let path = if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    };
    if path == "/" || path.split('/').any(|c| c == ".." || c == ".") || path.contains("//") {
        return Err(format!(
            "`{text}` is not a folder in the bucket: write one like \"/phoenix\" (not the \
             bucket's root, no `.` or `..`)"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{text}`: no spaces in the prefix"));
    }
    Ok(path)
}

/// `host`, `host:port`, `https://host[:port][/]`; plain HTTP is refused
/// (pgBackRest speaks TLS only, and the keys would travel in the clear).
fn endpoint(text: &str) -> Result<(String, Option<u16>), String> {
    if text.starts_with("http://") {
        return Err(format!(
            "`{text}`: S3 is reached over HTTPS only; write https://... (a private CA goes in `ca_file`)"
        ));
    }
    let rest = text.strip_prefix("https://").unwrap_or(text);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || {
        format!("`{text}` is not an endpoint: write a host name, host:port, or https://host:port")
    };
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(bad()),
            None => (rest, None),
        }
    };
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad))
        .transpose()?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port.filter(|p| *p != 443)))
}

/// The repo2 lines of `pgbackrest.conf`. No key: with a key file they are
/// in the include file (`BackupSettings::keys_include`), with the instance profile pgBackRest asks the
/// instance metadata service.
pub(super) fn repo2_lines(s: &S3Settings) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k}={v}");
    };
    line("repo2-type", &"s3");
    line("repo2-path", &s.prefix);
    line("repo2-s3-bucket", &s.bucket);
    line("repo2-s3-region", &s.region);
    line("repo2-s3-endpoint", &s.host);
    if let Some(port) = s.port {
        line("repo2-storage-port", &port);
    }
    line(
        "repo2-s3-uri-style",
        &if s.path_style { "path" } else { "host" },
    );
    line(
        "repo2-s3-key-type",
        &if s.key_file.is_some() {
            "shared"
        } else {
            "auto"
        },
    );
    if let Some(id) = &s.kms_key_id {
        line("repo2-s3-kms-key-id", id);
    }
    if let Some(ca) = &s.ca_file {
        line("repo2-storage-ca-file", &ca.display());
    }
    line("repo2-retention-full-type", &"time");
    line("repo2-retention-full", &s.retention_full_days);
    out
}

/// The include file's text: the keys for pgBackRest, or none (the
/// instance profile, or no S3), so that keys given up are not kept.
pub fn keys_include(keys: Option<&crate::s3keys::S3Keys>) -> String {
    let mut out = String::from(
        "# Written by phoenix-supervisor from [backup.s3] key_file; edits here are replaced.\n",
    );
    if let Some(keys) = keys {
        let _ = write!(
            out,
            "[global]\nrepo2-s3-key={}\nrepo2-s3-key-secret={}\n",
            keys.access_key_id, keys.secret_access_key
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_a_host_a_port_and_https_only() {
        assert_eq!(
            endpoint("s3.eu-west-1.amazonaws.com").unwrap(),
            ("s3.eu-west-1.amazonaws.com".into(), None)
        );
        assert_eq!(
            endpoint("https://127.0.0.1:9000/").unwrap(),
            ("127.0.0.1".into(), Some(9000))
        );
        assert_eq!(
            endpoint("minio.lan:443").unwrap(),
            ("minio.lan".into(), None)
        );
        assert_eq!(
            endpoint("https://[::1]:9000").unwrap(),
            ("::1".into(), Some(9000))
        );
        assert!(
            endpoint("http://127.0.0.1:9000")
                .unwrap_err()
                .contains("HTTPS only")
        );
        assert!(endpoint("https://h:99999").is_err());
        assert!(endpoint("https://h/path").is_err());
        assert!(endpoint("").is_err());
    }

    #[test]
    fn prefixes_are_absolute_folders() {
        assert_eq!(prefix("phoenix/").unwrap(), "/phoenix");
        assert_eq!(prefix("/a/b").unwrap(), "/a/b");
        assert!(prefix("/").is_err());
        assert!(prefix("/a/../b").is_err());
        assert!(prefix("/a b").is_err());
    }

    #[test]
    fn bucket_names_follow_s3s_rules() {
        assert!(valid_bucket("acme-phoenix.backups"));
        assert!(!valid_bucket("Acme"));
        assert!(!valid_bucket("ab"));
        assert!(!valid_bucket("-ab"));
        assert!(!valid_bucket("a_b"));
    }
}
