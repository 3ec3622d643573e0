//! The S3 key file of `[backup.s3] credentials = "file"`: read without
//! following a symbolic link, refused unless it is a regular file of mode
//! 0600 owned by the supervisor's user (root on the appliance), and parsed
//! into the two keys. The keys never reach a log: [`S3Keys`]'s `Debug`
//! hides them. A leaf: it imports nothing from the crate.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// An access key pair, as the key file holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Keys { .. }")
    }
}

/// The file's size at most; a key file is two short lines.
const MAX_BYTES: u64 = 64 << 10;

/// Reads `path`, or says what is wrong with it and how to put it right.
pub fn read(path: &Path) -> Result<S3Keys, String> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    check_meta(path, meta.is_file(), meta.mode(), meta.uid(), me)?;
    let mut text = String::new();
    file.take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
    parse(&text).map_err(|why| format!("the key file {shown}: {why}"))
}

/// Only its owner may read it, and its owner is the supervisor's user.
fn check_meta(path: &Path, regular: bool, mode: u32, uid: u32, me: u32) -> Result<(), String> {
    let shown = path.display();
    if !regular {
        return Err(format!("the key file {shown} is not a regular file"));
    }
    let owner = if me == 0 {
        "root"
    } else {
        "the supervisor's user"
    };
    if mode & 0o777 != 0o600 {
        return Err(format!(
            "the key file {shown} has mode {:04o}; it must be 0600, owned by {owner}: \
             chmod 0600 {shown}",
            mode & 0o7777
        ));
    }
    if uid != me {
        return Err(format!(
            "the key file {shown} is owned by uid {uid}; it must be owned by {owner} (uid {me}), \
             mode 0600: chown {me} {shown}"
        ));
    }
    Ok(())
}

/// `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines; blank
/// lines and `#` comments are allowed, and so is `export ` before a name
/// (the file may be shared with a shell).
fn parse(text: &str) -> Result<S3Keys, String> {
    let (mut id, mut secret) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: not NAME=value", n + 1));
        };
        let value = value.trim().trim_matches('"').to_string();
        let slot = match name.trim() {
            "AWS_ACCESS_KEY_ID" => &mut id,
            "AWS_SECRET_ACCESS_KEY" => &mut secret,
            // Named without its value: the line may hold a secret.
            other => {
                return Err(format!(
                    "line {}: `{other}` is not AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY",
                    n + 1
                ));
            }
        };
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(format!("line {}: an empty or spaced value", n + 1));
        }
        *slot = Some(value);
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(S3Keys {
            access_key_id,
            secret_access_key,
        }),
        (None, _) => Err("no AWS_ACCESS_KEY_ID=... line".into()),
        (_, None) => Err("no AWS_SECRET_ACCESS_KEY=... line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn both_keys_are_read_and_never_shown() {
        let keys = parse(
            "# S3\nexport AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n\n",
        )
        .unwrap();
        assert_eq!(keys.access_key_id, "AKIDEXAMPLE");
        assert_eq!(keys.secret_access_key, "s3cr3t");
        assert!(!format!("{keys:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_missing_or_foreign_line_is_named_without_its_value() {
        assert_eq!(
            parse("AWS_ACCESS_KEY_ID=a\n").unwrap_err(),
            "no AWS_SECRET_ACCESS_KEY=... line"
        );
        let err = parse("AWS_SESSION_TOKEN=tok\n").unwrap_err();
        assert!(
            err.contains("AWS_SESSION_TOKEN") && !err.contains("tok\n"),
            "{err}"
        );
        assert!(parse("AWS_ACCESS_KEY_ID\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn only_mode_0600_owned_by_the_supervisors_user_is_taken() {
        let p = Path::new("/etc/phoenix/s3-keys");
        assert!(check_meta(p, true, 0o100600, 0, 0).is_ok());
        let err = check_meta(p, true, 0o100644, 0, 0).unwrap_err();
        assert!(
            err.contains("/etc/phoenix/s3-keys has mode 0644; it must be 0600, owned by root"),
            "{err}"
        );
        let err = check_meta(p, true, 0o100600, 1000, 0).unwrap_err();
        assert!(err.contains("owned by uid 1000"), "{err}");
        assert!(check_meta(p, false, 0o040600, 0, 0).is_err());
    }

    #[test]
    fn a_real_file_is_read_and_a_symbolic_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap().access_key_id, "a");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            read(&link)
                .unwrap_err()
                .contains("cannot read the key file")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&path).unwrap_err().contains("mode 0640"));
    }
}
