//! The one TOML file: parsing with located errors, defaults, and expansion of
//! the built-in sections into service specifications.
//!
//! Invariant: this module never touches the file system beyond reading the
//! config file, and never starts anything. `expand` is a pure function of the
//! file's text and [`LoadOptions`].

mod builtins;
pub mod file;
pub mod spec;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use builtins::{external_database, parse_cron, s3_keys_include};
pub use spec::*;

use file::{FileConfig, ProbeTable, RestartPolicyName, ServiceTable};
use phoenix_backoff::{Backoff, BackoffError};
pub use units::Machine;
use units::{CpuLimit, MemoryLimit};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/phoenix/phoenix.toml";

/// What a config error says: where (file, line, column, key) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `services.worker.restart.policy`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Facts about the environment that defaults depend on.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Dev mode: state in `./.phoenix-dev`, loopback listeners, unprivileged ports.
    pub dev: bool,
    /// Running as root: built-in services get their own users.
    pub root: bool,
    /// Directory relative dev paths are resolved against.
    pub cwd: PathBuf,
    /// Directory holding `phoenix-supervisor` and `phoenix-api`.
    pub exe_dir: PathBuf,
    /// Checks that the supervisor can run a service as a user (it exists,
    /// and is the supervisor's own unless that is root). Given by `run`, so
    /// that an unknown user is refused with the location of its key while
    /// `parse` stays a function of its inputs; `None` (check-config, first
    /// boot, a build sandbox without the users) skips the check.
    pub users: Option<UserCheck>,
    /// Reads the key file of `[backup.s3] credentials = "file"`, to refuse
    /// a missing, unreadable or too open one at its key. Set by
    /// [`LoadOptions::detect`]; `None` (unit tests) skips the check.
    pub key_files: Option<KeyFileCheck>,
    /// What limits written as shares (`"25%"`) are shares of.
    pub machine: Machine,
}

/// `Err` says what is wrong with an S3 key file (never its contents).
pub type KeyFileCheck = fn(&Path) -> Result<(), String>;

/// `Err` says why the supervisor cannot run a service as the named user.
pub type UserCheck = fn(&str) -> Result<(), String>;

impl LoadOptions {
    pub fn detect(dev: bool) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/bin"));
        LoadOptions {
            dev,
            root: nix::unistd::geteuid().is_root(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            exe_dir,
            users: None,
            key_files: Some(|path| crate::s3keys::read(path).map(drop)),
            machine: Machine::detect(),
        }
    }

    /// The same options, checking every `user` with `check`.
    pub fn checking_users(self, check: UserCheck) -> Self {
        LoadOptions {
            users: Some(check),
            ..self
        }
    }
}

/// Read and expand a config file. A missing file is an error unless it is
/// the default path, which then means "all defaults".
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    parse(&read(path)?, path, opts)
}

/// [`load`] for a reload of `running`: also refuses, at the key that
/// changed, what only a restart of the supervisor can apply.
pub fn reload(path: &Path, opts: &LoadOptions, running: &Config) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let new = parse(&text, path, opts)?;
    let located = Located {
        text: &text,
        file: path,
    };
    unchangeable(running, &new, &located)?;
    Ok(new)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path == Path::new(DEFAULT_CONFIG_PATH) =>
        {
            Ok(String::new())
        }
        Err(e) => Err(ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }),
    }
}

/// What the running supervisor keeps until it is restarted: its
/// directories, the health listener, and what the certificate task and
/// the plain-HTTP listener started with. Each refusal names its key.
fn unchangeable(running: &Config, new: &Config, loc: &Located<'_>) -> Result<(), ConfigError> {
    let refuse = |key: &[&str], was: String| {
        Err(loc.error(
            key,
            format!(
                "cannot change while running (running with {was}): restart phoenix-supervisor to apply it"
            ),
        ))
    };
    let (old, sup) = (&running.supervisor, &new.supervisor);
    for (key, was, now) in [
        ("state_dir", &old.state_dir, &sup.state_dir),
        ("run_dir", &old.run_dir, &sup.run_dir),
        ("log_dir", &old.log_dir, &sup.log_dir),
    ] {
        if was != now {
            return refuse(&["supervisor", key], was.display().to_string());
        }
    }
    if running.health != new.health {
        return refuse(&["health", "listen"], running.health.listen.to_string());
    }
    let (old, tls) = (&running.tls, &new.tls);
    let mode = |t: &TlsSettings| match (&t.acme, t.self_signed) {
        (Some(_), _) => "mode = \"acme\"",
        (None, true) => "mode = \"self-signed\"",
        (None, false) => "mode = \"files\"",
    };
    let shown = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    if mode(old) != mode(tls) {
        return refuse(&["tls", "mode"], mode(old).to_string());
    }
    if let (Some(a), Some(b)) = (&old.acme, &tls.acme) {
        if a.directory != b.directory {
            return refuse(&["tls", "acme_directory"], a.directory.clone());
        }
        if a.email != b.email {
            return refuse(&["tls", "acme_email"], shown(a.email.clone()));
        }
        if a.ca != b.ca {
            let ca = a.ca.as_ref().map(|p| p.display().to_string());
            return refuse(&["tls", "acme_ca"], shown(ca));
        }
        if old.hostnames != tls.hostnames {
            return refuse(&["tls", "hostnames"], format!("{:?}", old.hostnames));
        }
        if old.key_owner != tls.key_owner {
            // The certificate task hands new keys to the user it started with.
            return refuse(&["api", "user"], shown(old.key_owner.clone()));
        }
    }
    if old.http_listen != tls.http_listen {
        return refuse(
            &["tls", "http_listen"],
            shown(old.http_listen.map(|a| a.to_string())),
        );
    }
    Ok(())
}

pub fn parse(text: &str, path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    let located = Located { text, file: path };
    let deserializer = toml::Deserializer::new(text);
    let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
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
    expand(raw, &located, opts)
}

/// The text of the file, to turn key paths and byte offsets into line:column.
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
        let Ok(doc) = toml_edit::ImDocument::parse(self.text) else {
            return (1, 1);
        };
        let mut best = None;
        let mut table: Option<&dyn toml_edit::TableLike> = Some(doc.as_table());
        // An index (`["alertmanager", "webhook", "1", "url"]`) picks one
        // table of an array of tables.
        let mut array: Option<&toml_edit::ArrayOfTables> = None;
        for key in path {
            if let (Some(a), Ok(i)) = (array.take(), key.parse::<usize>()) {
                let Some(t) = a.get(i) else { break };
                best = t.span().or(best);
                table = Some(t);
                continue;
            }
            let Some(t) = table else { break };
            let Some((k, item)) = t.get_key_value(key) else {
                break;
            };
            best = k.span().or_else(|| item.span()).or(best);
            table = item.as_table_like();
            array = item.as_array_of_tables();
        }
        best.map_or((1, 1), |s| self.line_col(s.start))
    }

    /// Which of a key's names (`url`, or its old name `external_url`) the
    /// file uses in `table`, so that an error names what was written.
    pub(crate) fn written<'k>(&self, table: &str, names: &[&'k str]) -> &'k str {
        let doc = toml_edit::ImDocument::parse(self.text).ok();
        let t = doc
            .as_ref()
            .and_then(|d| d.get(table))
            .and_then(|i| i.as_table_like());
        names
            .iter()
            .find(|n| t.is_some_and(|t| t.contains_key(n)))
            .unwrap_or(&names[0])
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

fn expand(raw: FileConfig, loc: &Located<'_>, opts: &LoadOptions) -> Result<Config, ConfigError> {
    let base_dir = opts.cwd.join(loc.file.parent().unwrap_or(Path::new("")));
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };
    let mut raw = raw;
    absolutize(&mut raw, &resolve);
    let dev_root = opts.cwd.join(".phoenix-dev");
    let dir_default = |name: &str, prod: &str| {
        if opts.dev {
            dev_root.join(name)
        } else {
            PathBuf::from(prod)
        }
    };

    let s = &raw.supervisor;
    let supervisor = SupervisorSettings {
        state_dir: s
            .state_dir
            .clone()
            .unwrap_or_else(|| dir_default("state", "/var/lib/phoenix")),
        run_dir: s
            .run_dir
            .clone()
            .unwrap_or_else(|| dir_default("run", "/run/phoenix")),
        log_dir: s
            .log_dir
            .clone()
            .unwrap_or_else(|| dir_default("log", "/var/log/phoenix")),
        shutdown_timeout: s.shutdown_timeout.map_or(Duration::from_secs(60), |d| d.0),
        log_max_bytes: s.log_max_size.map_or(10 << 20, |b| b.0),
        log_keep: s.log_keep.map_or(5, |n| n.0 as usize),
    };
    let health = HealthSettings {
        listen: raw.health.listen.unwrap_or_else(|| {
            if opts.dev {
                "127.0.0.1:8081"
            } else {
                "0.0.0.0:8081"
            }
            .parse()
            .expect("valid address")
        }),
    };

    let expanded = builtins::expand(&raw, &supervisor, opts, loc)?;
    let mut services = expanded.services;

    for (name, table) in &raw.services {
        validate_name(name).map_err(|m| loc.error(&["services", name], m))?;
        let existing = services.iter().position(|s| s.name == *name);
        match (existing, table.enable) {
            (Some(i), Some(false)) => {
                services.remove(i);
            }
            (None, Some(false)) => {}
            (Some(i), _) => apply_table(&mut services[i], name, table, opts, loc)?,
            (None, _) => {
                let Some(command) = &table.command else {
                    if let Some(section) = builtins::section_of(name) {
                        return Err(loc.error(
                            &["services", name],
                            format!(
                                "the built-in service `{name}` is off: turn it on with \
                                 `[{section}] enable = true`, or remove [services.{name}]"
                            ),
                        ));
                    }
                    return Err(loc.error(
                        &["services", name],
                        format!(
                            "a new service needs `command` (the built-in services are {})",
                            builtins::service_names().join(", ")
                        ),
                    ));
                };
                let mut spec = ServiceSpec::new(name.clone(), command.clone());
                if table.oneshot == Some(true) {
                    spec.restart.policy = RestartPolicy::OnFailure;
                }
                apply_table(&mut spec, name, table, opts, loc)?;
                services.push(spec);
            }
        }
    }

    let services = order_by_dependencies(services, loc)?;

    Ok(Config {
        source: loc.file.to_path_buf(),
        dev: opts.dev,
        supervisor,
        health,
        tls: expanded.tls,
        scaling: expanded.scaling,
        backup: expanded.backup,
        external_database: expanded.external_database,
        secrets: expanded.secrets,
        services,
    })
}

/// Relative paths in the file are relative to the file's directory; services
/// run in `/`, so every path is made absolute here.
fn absolutize(raw: &mut FileConfig, resolve: &impl Fn(PathBuf) -> PathBuf) {
    let fix = |p: &mut Option<PathBuf>| *p = p.take().map(resolve);
    let s = &mut raw.supervisor;
    for p in [&mut s.state_dir, &mut s.run_dir, &mut s.log_dir] {
        fix(p);
    }
    for p in [
        &mut raw.postgres.bin_dir,
        &mut raw.postgres.password_file,
        &mut raw.postgres.ca_file,
        &mut raw.prometheus.bin,
        &mut raw.pushgateway.bin,
        &mut raw.alertmanager.bin,
        &mut raw.api.bin,
        &mut raw.tls.cert,
        &mut raw.tls.key,
    ] {
        fix(p);
    }
    for rw in &mut raw.prometheus.remote_write {
        fix(&mut rw.bearer_token_file);
        fix(&mut rw.password_file);
        fix(&mut rw.ca_file);
    }
    for hook in &mut raw.alertmanager.webhook {
        fix(&mut hook.bearer_token_file);
    }
    if let Some(email) = &mut raw.alertmanager.email {
        fix(&mut email.password_file);
    }
    if let Some(s3) = &mut raw.backup.s3 {
        fix(&mut s3.key_file);
        fix(&mut s3.ca_file);
    }
    for table in raw.services.values_mut() {
        fix(&mut table.working_dir);
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "`{name}` is not a valid service name: use lowercase letters, digits, `-` and `_`, at most 64"
        ));
    }
    if name == "supervisor" {
        return Err("`supervisor` is reserved".into());
    }
    Ok(())
}

/// Refuses, at `key`, a user the supervisor cannot run a service as; the
/// check is [`LoadOptions::users`]. `defaulted`: the user is the built-in
/// default, not written in the file.
fn check_user(
    opts: &LoadOptions,
    user: &str,
    defaulted: bool,
    loc: &Located<'_>,
    key: &[&str],
) -> Result<(), ConfigError> {
    match opts.users.map(|check| check(user)) {
        Some(Err(why)) if defaulted => Err(loc.error(
            key,
            format!(
                "{why} (`{user}` is the default as root; set `user` to another one, or \"\" for root)"
            ),
        )),
        Some(Err(why)) => Err(loc.error(key, why)),
        _ => Ok(()),
    }
}

fn apply_table(
    spec: &mut ServiceSpec,
    name: &str,
    t: &ServiceTable,
    opts: &LoadOptions,
    loc: &Located<'_>,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| loc.error(&["services", name, key], msg);
    // A key within one of the service's tables; "" for the table itself.
    let within = |table: &str, (key, msg): (&str, String)| {
        let path = ["services", name, table, key];
        loc.error(&path[..if key.is_empty() { 3 } else { 4 }], msg)
    };
    if let Some(command) = &t.command {
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(err(
                "command",
                "must name a program: command = [\"/path/to/program\", \"arg\"]".into(),
            ));
        }
        spec.command = command.clone();
    }
    if let Some(env) = &t.env {
        for key in env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(err(
                    "env",
                    format!("`{key}` is not a valid environment variable name"),
                ));
            }
        }
        spec.env.extend(env.clone());
    }
    if let Some(user) = &t.user {
        spec.user = if user.is_empty() {
            None
        } else {
            check_user(opts, user, false, loc, &["services", name, "user"])?;
            Some(user.clone())
        };
    }
    if let Some(dir) = &t.working_dir {
        spec.working_dir = Some(dir.clone());
    }
    if let Some(deps) = &t.depends_on {
        spec.depends_on = deps.clone();
    }
    if let Some(oneshot) = t.oneshot {
        spec.oneshot = oneshot;
    }
    if let Some(caps) = &t.capabilities {
        spec.capabilities = caps
            .iter()
            .map(|c| Capability::parse(c))
            .collect::<Result<_, _>>()
            .map_err(|m| err("capabilities", m))?;
    }
    if let Some(sig) = t.reload_signal {
        spec.reload_signal = Some(sig.0);
    }
    if let Some(probe) = &t.readiness {
        spec.readiness =
            Some(readiness(spec.readiness.take(), probe).map_err(|e| within("readiness", e))?);
    }
    if let Some(probe) = &t.liveness {
        spec.liveness =
            Some(liveness(spec.liveness.take(), probe).map_err(|e| within("liveness", e))?);
    }
    if let Some(r) = &t.restart {
        if let Some(p) = r.policy {
            spec.restart.policy = match p {
                RestartPolicyName::Always => RestartPolicy::Always,
                RestartPolicyName::OnFailure => RestartPolicy::OnFailure,
                RestartPolicyName::Never => RestartPolicy::Never,
            };
        }
        let b = spec.restart.backoff;
        let initial = r.initial_delay.map_or(b.initial(), |d| d.0);
        let max = r.max_delay.map_or(b.max().max(initial), |d| d.0);
        let jitter = r.jitter.unwrap_or(0.2);
        spec.restart.backoff =
            Backoff::try_new(initial, max, jitter).map_err(|e| err("restart", e.to_string()))?;
        if let Some(d) = r.reset_after {
            spec.restart.reset_after = d.0;
        }
        if let Some(l) = r.start_limit {
            let c = spec.restart.start_limit.cool_down;
            let cool_down = l.cool_down.map_or(c.initial(), |d| d.0);
            let cool_down_max = l.cool_down_max.map_or(c.max().max(cool_down), |d| d.0);
            let cool_down = Backoff::try_new(cool_down, cool_down_max, 0.0).map_err(|e| {
                let (k, message) = match e {
                    BackoffError::InitialAboveMax { .. } => (
                        "cool_down_max",
                        format!(
                            "must be at least cool_down ({})",
                            humantime::format_duration(cool_down)
                        ),
                    ),
                    _ => ("cool_down", "must be greater than zero".to_string()),
                };
                loc.error(&["services", name, "restart", "start_limit", k], message)
            })?;
            spec.restart.start_limit = StartLimit {
                // At most 1000, by its type.
                burst: l.burst.0 as u32,
                interval: l.interval.0,
                cool_down,
            };
        }
    }
    if let Some(s) = &t.stop {
        if let Some(sig) = s.signal {
            spec.stop.signal = sig.0;
        }
        if let Some(d) = s.timeout {
            spec.stop.timeout = d.0;
        }
    }
    if let Some(l) = &t.limits {
        spec.limits = limits(spec.limits, l, &opts.machine).map_err(|e| within("limits", e))?;
    }
    if !spec.capabilities.is_empty() && spec.user.is_none() {
        return Err(err(
            "capabilities",
            "only apply to a service that runs as its own `user` (root already has them)".into(),
        ));
    }
    if spec.oneshot && (spec.readiness.is_some() || spec.liveness.is_some()) {
        return Err(err(
            "oneshot",
            "a oneshot service is ready when it exits 0: readiness and liveness checks do not apply".into(),
        ));
    }
    Ok(())
}

/// Errors name the key within the `limits` table. Shares are resolved
/// against `machine`.
pub(crate) fn limits(
    mut base: Limits,
    l: &file::LimitsTable,
    machine: &Machine,
) -> Result<Limits, (&'static str, String)> {
    match l.memory {
        Some(MemoryLimit::Size(m)) => base.memory = Some(m.0),
        Some(MemoryLimit::Share(s)) => base.memory = Some(machine.memory_share(s)),
        None => {}
    }
    if let Some(c) = l.cpus {
        let c = match c {
            CpuLimit::Cpus(c) => c,
            CpuLimit::Share(s) => machine.cpu_share(s),
        };
        // cpu.max takes a quota of at least 1ms per 100ms period.
        if !(0.01..=1024.0).contains(&c) {
            return Err((
                "cpus",
                format!(
                    "{c} is out of range: give a number of CPUs from 0.01 to 1024, or a share such as \"50%\""
                ),
            ));
        }
        base.cpus = Some(c);
    }
    if let Some(p) = l.pids {
        base.pids = Some(p.0);
    }
    Ok(base)
}

fn probe_kind(t: &ProbeTable, previous: Option<Probe>) -> Result<Probe, String> {
    let mut kinds = Vec::new();
    if let Some(a) = t.tcp {
        kinds.push(Probe::Tcp(a));
    }
    if let Some(url) = &t.http {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "http = \"{url}\": must be an http:// or https:// URL"
            ));
        }
        kinds.push(Probe::Http(url.clone()));
    }
    if let Some(cmd) = &t.exec {
        if cmd.is_empty() {
            return Err("exec needs a command: exec = [\"/bin/check\", \"arg\"]".into());
        }
        kinds.push(Probe::Exec(cmd.clone()));
    }
    if let Some(re) = &t.log {
        regex::Regex::new(re)
            .map_err(|e| format!("log = \"{re}\" is not a valid regular expression: {e}"))?;
        kinds.push(Probe::Log(re.clone()));
    }
    match (kinds.len(), previous) {
        (1, _) => Ok(kinds.remove(0)),
        (0, Some(p)) => Ok(p),
        (0, None) => Err("needs one of tcp, http, exec or log".into()),
        _ => Err("give only one of tcp, http, exec or log".into()),
    }
}

/// Errors name the key within the probe table (empty: the table itself).
fn readiness(
    previous: Option<Readiness>,
    t: &ProbeTable,
) -> Result<Readiness, (&'static str, String)> {
    if t.failures.is_some() {
        return Err((
            "failures",
            "belongs to liveness; readiness uses start_timeout".into(),
        ));
    }
    let probe = probe_kind(t, previous.as_ref().map(|p| p.probe.clone())).map_err(|m| ("", m))?;
    let mut r = previous.unwrap_or_else(|| ServiceSpec::readiness(probe.clone()));
    r.probe = probe;
    r.interval = t.interval.map_or(r.interval, |d| d.0);
    r.timeout = t.timeout.map_or(r.timeout, |d| d.0);
    r.start_timeout = t.start_timeout.map_or(r.start_timeout, |d| d.0);
    Ok(r)
}

fn liveness(
    previous: Option<Liveness>,
    t: &ProbeTable,
) -> Result<Liveness, (&'static str, String)> {
    if t.start_timeout.is_some() {
        return Err(("start_timeout", "belongs to readiness".into()));
    }
    let probe = probe_kind(t, previous.as_ref().map(|p| p.probe.clone())).map_err(|m| ("", m))?;
    if matches!(probe, Probe::Log(_)) {
        return Err((
            "log",
            "a log line cannot tell that a service is alive; use tcp, http or exec".into(),
        ));
    }
    let mut l = previous.unwrap_or_else(|| ServiceSpec::liveness(probe.clone()));
    l.probe = probe;
    l.interval = t.interval.map_or(l.interval, |d| d.0);
    l.timeout = t.timeout.map_or(l.timeout, |d| d.0);
    if let Some(f) = t.failures {
        // At most 100, by its type.
        l.failures = f.0 as u32;
    }
    Ok(l)
}

/// Topological order (Kahn), stable by declaration order; names unknown
/// dependencies and cycles.
fn order_by_dependencies(
    services: Vec<ServiceSpec>,
    loc: &Located<'_>,
) -> Result<Vec<ServiceSpec>, ConfigError> {
    let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
    for s in &services {
        for d in &s.depends_on {
            if !names.contains(d) {
                let known: Vec<_> = names.iter().map(String::as_str).collect();
                return Err(loc.error(
                    &["services", &s.name, "depends_on"],
                    format!("unknown service `{d}` (services: {}); a disabled built-in cannot be depended on", known.join(", ")),
                ));
            }
            if *d == s.name {
                return Err(loc.error(
                    &["services", &s.name, "depends_on"],
                    "a service cannot depend on itself",
                ));
            }
        }
    }
    let mut remaining: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    let declared: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    for s in services {
        remaining.insert(s.name.clone(), s);
    }
    let mut ordered: Vec<ServiceSpec> = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    while !remaining.is_empty() {
        let next = declared
            .iter()
            .find(|n| {
                remaining
                    .get(*n)
                    .is_some_and(|s| s.depends_on.iter().all(|d| done.contains(d)))
            })
            .cloned();
        match next {
            Some(n) => {
                let s = remaining.remove(&n).expect("present");
                done.insert(n);
                ordered.push(s);
            }
            None => {
                let cycle: Vec<_> = remaining.keys().map(String::as_str).collect();
                let first = cycle[0].to_string();
                return Err(loc.error(
                    &["services", &first, "depends_on"],
                    format!("dependency cycle among: {}", cycle.join(", ")),
                ));
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests;
