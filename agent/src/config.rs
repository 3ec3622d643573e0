//! The agent's one TOML file, read into [`Config`], with errors that name
//! the file, line, column and key, as the supervisor's do.
//!
//! ```toml
//! [api]
//! url = "https://phoenix.example.com:8443"   # the agent listener
//! ca_file = "/etc/phoenix-agent/ca.pem"      # optional: system roots otherwise
//! enrollment_token_file = "/etc/phoenix-agent/enrollment-token"
//!
//! [agent]
//! state_dir = "/var/lib/phoenix-agent"
//! collect_interval = "15s"
//!
//! [queue]
//! max_bytes = "256 MiB"
//! max_age = "1h"
//! ```
//!
//! *Invariant:* a [`Config`] is valid: every duration and bound is in range
//! and every path is absolute (relative ones are resolved against the
//! file's folder).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What the file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    api: Option<ApiFile>,
    #[serde(default)]
    agent: AgentFile,
    #[serde(default)]
    queue: QueueFile,
    #[serde(default)]
    health: HealthFile,
    remote_write: Option<RemoteWriteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    url: url::Url,
    ca_file: Option<PathBuf>,
    enrollment_token_file: Option<PathBuf>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    state_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    collect_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueFile {
    max_bytes: Option<bytesize::ByteSize>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteWriteFile {
    url: url::Url,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<BasicAuthFile>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthFile {
    username: String,
    password_file: PathBuf,
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub api: Api,
    pub state_dir: PathBuf,
    pub collect_interval: Duration,
    pub queue: QueueBounds,
    /// Where `/metrics` is served; loopback only.
    pub health_listen: Option<SocketAddr>,
    pub remote_write: Option<RemoteWrite>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    /// The origin of the control plane's agent listener.
    pub url: url::Url,
    pub ca_file: Option<PathBuf>,
    pub enrollment_token_file: Option<PathBuf>,
    /// The name to enroll with: this host's name unless set.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueBounds {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// An external remote-write endpoint that receives the live pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWrite {
    pub url: url::Url,
    pub ca_file: Option<PathBuf>,
    pub auth: RemoteAuth,
    /// Added to every series sent there (after `job` and `instance`).
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RemoteAuth {
    None,
    Bearer {
        token_file: PathBuf,
    },
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/phoenix-agent";
pub const DEFAULT_COLLECT_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The appliance's Prometheus takes samples up to this old (its
/// out-of-order window); an older bound would only fill the queue with
/// batches it refuses.
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9465";

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}:{column}: {}{message}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read the configuration: {e}"),
    })?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    parse(&text, &cwd.join(path))
}

/// Parses `text` as the file at `path` (absolute: relative paths in it are
/// resolved against its folder).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = Located { text, file: path };
    let raw: File =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| located.line_col(s.start))
                .unwrap_or((1, 1));
            ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: if key == "." { String::new() } else { key },
                message: inner.message().trim().to_string(),
            }
        })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

    let Some(api) = raw.api else {
        return Err(located.error(
            &["api"],
            "missing [api]: the agent needs `url`, the control plane's agent listener",
        ));
    };
    if !matches!(api.url.scheme(), "https" | "http") || api.url.host().is_none() {
        return Err(located.error(
            &["api", "url"],
            "must be an http(s) URL with a host, e.g. https://phoenix.example.com:8443",
        ));
    }
    if let Some(name) = &api.name
        && (name.trim().is_empty() || name.chars().count() > 128)
    {
        return Err(located.error(&["api", "name"], "must be 1 to 128 characters"));
    }
    let collect_interval = raw
        .agent
        .collect_interval
        .unwrap_or(DEFAULT_COLLECT_INTERVAL);
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&collect_interval) {
        return Err(located.error(&["agent", "collect_interval"], "must be between 1s and 1h"));
    }
    let max_bytes = raw
        .queue
        .max_bytes
        .map_or(DEFAULT_MAX_BYTES, |b| b.as_u64());
    if max_bytes < 1024 * 1024 {
        return Err(located.error(&["queue", "max_bytes"], "must be at least 1 MiB"));
    }
    let max_age = raw.queue.max_age.unwrap_or(DEFAULT_MAX_AGE);
    if max_age < collect_interval || max_age > MAX_AGE_LIMIT {
        return Err(located.error(
            &["queue", "max_age"],
            format!(
                "must be between the collect interval and {} (the out-of-order window of the appliance's Prometheus)",
                humantime::format_duration(MAX_AGE_LIMIT)
            ),
        ));
    }
    let health_listen = match raw
        .health
        .listen
        .as_deref()
        .unwrap_or(DEFAULT_HEALTH_LISTEN)
    {
        "off" | "" => None,
        text => {
            let addr: SocketAddr = text.parse().map_err(|_| {
                located.error(
                    &["health", "listen"],
                    "must be an address and port like 127.0.0.1:9465, or \"off\"",
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(located.error(
                    &["health", "listen"],
                    "must be a loopback address: the agent's metrics are for this host only",
                ));
            }
            Some(addr)
        }
    };
    let remote_write = match raw.remote_write {
        None => None,
        Some(rw) => {
            if !matches!(rw.url.scheme(), "https" | "http") || rw.url.host().is_none() {
                return Err(located.error(
                    &["remote_write", "url"],
                    "must be an http(s) URL with a host",
                ));
            }
            let auth = match (rw.bearer_token_file, rw.basic_auth) {
                (Some(_), Some(_)) => {
                    return Err(located.error(
                        &["remote_write", "basic_auth"],
                        "set bearer_token_file or basic_auth, not both",
                    ));
                }
                (Some(f), None) => RemoteAuth::Bearer { token_file: abs(f) },
                (None, Some(b)) => RemoteAuth::Basic {
                    username: b.username,
                    password_file: abs(b.password_file),
                },
                (None, None) => RemoteAuth::None,
            };
            for name in rw.labels.keys() {
                if !is_label_name(name) || matches!(name.as_str(), "job" | "instance") {
                    return Err(located.error(
                        &["remote_write", "labels", name],
                        "must be a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __) other than job and instance",
                    ));
                }
            }
            Some(RemoteWrite {
                url: rw.url,
                ca_file: rw.ca_file.map(abs),
                auth,
                labels: rw.labels,
            })
        }
    };
    Ok(Config {
        file: path.to_path_buf(),
        api: Api {
            url: api.url,
            ca_file: api.ca_file.map(abs),
            enrollment_token_file: api.enrollment_token_file.map(abs),
            name: api.name,
            labels: api.labels,
        },
        state_dir: abs(raw
            .agent
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))),
        collect_interval,
        queue: QueueBounds { max_bytes, max_age },
        health_listen,
        remote_write,
    })
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The text of the file, to turn key paths and offsets into line:column.
struct Located<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Located<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Position of the deepest existing key on `path`.
    fn position(&self, path: &[&str]) -> (usize, usize) {
        let Ok(doc) = self.text.parse::<toml_edit::ImDocument<String>>() else {
            return (1, 1);
        };
        let mut best = None;
        let mut table: Option<&dyn toml_edit::TableLike> = Some(doc.as_table());
        for key in path {
            let Some(t) = table else { break };
            let Some((k, item)) = t.get_key_value(key) else {
                break;
            };
            best = k.span().or_else(|| item.span()).or(best);
            table = item.as_table_like();
        }
        best.map_or((1, 1), |s| self.line_col(s.start))
    }

    fn error(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(path);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: path.join("."),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_at(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/phoenix-agent/agent.toml"))
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let c = parse_at("[api]\nurl = \"https://cp.example:8443\"\n").unwrap();
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.collect_interval, DEFAULT_COLLECT_INTERVAL);
        assert_eq!(c.queue.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(c.queue.max_age, DEFAULT_MAX_AGE);
        assert_eq!(
            c.health_listen,
            Some(DEFAULT_HEALTH_LISTEN.parse().unwrap())
        );
        assert_eq!(c.remote_write, None);
    }

    #[test]
    fn relative_paths_are_resolved_against_the_file() {
        let c = parse_at(
            "[api]\nurl = \"https://cp.example\"\nca_file = \"ca.pem\"\n[agent]\nstate_dir = \"state\"\n\
             [queue]\nmax_bytes = \"2 MiB\"\nmax_age = \"30m\"\n\
             [remote_write]\nurl = \"https://mimir.example/api/v1/push\"\n\
             basic_auth = { username = \"u\", password_file = \"pw\" }\nlabels = { cluster = \"eu\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.api.ca_file.unwrap(),
            Path::new("/etc/phoenix-agent/ca.pem")
        );
        assert_eq!(c.state_dir, Path::new("/etc/phoenix-agent/state"));
        assert_eq!(c.queue.max_bytes, 2 * 1024 * 1024);
        assert_eq!(c.queue.max_age, Duration::from_secs(1800));
        let rw = c.remote_write.unwrap();
        assert_eq!(
            rw.auth,
            RemoteAuth::Basic {
                username: "u".into(),
                password_file: "/etc/phoenix-agent/pw".into()
            }
        );
    }

    #[test]
    fn errors_name_the_line_column_and_key() {
        let err = parse_at("[api]\nurl = \"https://cp.example\"\n\n[queue]\nmax_age = \"9h\"\n")
            .unwrap_err();
        assert_eq!(
            (err.line, err.column, err.key.as_str()),
            (5, 1, "queue.max_age")
        );
        assert!(
            err.to_string()
                .starts_with("/etc/phoenix-agent/agent.toml:5:1: queue.max_age: must be between"),
            "{err}"
        );

        let err = parse_at("[api]\nurl = \"https://cp.example\"\nurll = 1\n").unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (3, "api.urll"), "{err}");
        assert!(err.message.contains("unknown field `urll`"), "{err}");

        let err = parse_at("[api]\nurl = \"not a url\"\n").unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (2, "api.url"), "{err}");

        let err = parse_at("[agent]\ncollect_interval = \"soon\"\n").unwrap_err();
        assert_eq!(err.key, "agent.collect_interval", "{err}");

        let err = parse_at("").unwrap_err();
        assert!(err.message.contains("missing [api]"), "{err}");
    }

    #[test]
    fn the_health_listener_stays_on_loopback() {
        let err =
            parse_at("[api]\nurl = \"https://cp.example\"\n[health]\nlisten = \"0.0.0.0:9465\"\n")
                .unwrap_err();
        assert_eq!(err.key, "health.listen");
        let c =
            parse_at("[api]\nurl = \"https://cp.example\"\n[health]\nlisten = \"off\"\n").unwrap();
        assert_eq!(c.health_listen, None);
    }

    #[test]
    fn remote_write_takes_one_kind_of_auth_and_no_reserved_labels() {
        let base = "[api]\nurl = \"https://cp.example\"\n[remote_write]\nurl = \"https://m.example/push\"\n";
        let err = parse_at(&format!(
            "{base}bearer_token_file = \"t\"\nbasic_auth = {{ username = \"u\", password_file = \"p\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.key, "remote_write.basic_auth");
        let err = parse_at(&format!("{base}labels = {{ job = \"x\" }}\n")).unwrap_err();
        assert_eq!(err.key, "remote_write.labels.job");
    }
}
