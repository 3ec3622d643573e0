//! The expanded, validated form of the config: what the supervisor runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use phoenix_backoff::Backoff;

use crate::status::Level;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from (for messages and reload).
    pub source: PathBuf,
    pub dev: bool,
    pub supervisor: SupervisorSettings,
    pub health: HealthSettings,
    pub tls: TlsSettings,
    pub scaling: ScalingSettings,
    /// `None`: no managed PostgreSQL, or `[backup] enable = false`.
    pub backup: Option<BackupSettings>,
    /// `[postgres] url`: the API's database is elsewhere; /health checks
    /// that it answers instead of the built-in's services.
    pub external_database: Option<ExternalDatabase>,
    /// Secrets generated once on first start (random, mode 0600).
    pub secrets: Vec<SecretSpec>,
    /// Services in dependency order: each comes after everything it depends on.
    pub services: Vec<ServiceSpec>,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// An external PostgreSQL (`[postgres] url`), such as RDS.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalDatabase {
    /// The URL handed to the API, with its TLS parameters.
    pub api_url: String,
    pub host: String,
    pub port: u16,
    /// TLS with verify-full (off only for a database on this machine that
    /// asked for it).
    pub tls: bool,
    /// The CA bundle; `None`: the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorSettings {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub log_max_bytes: u64,
    pub log_keep: usize,
}

impl SupervisorSettings {
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generate (and regenerate before expiry) a self-signed certificate.
    pub self_signed: bool,
    pub hostnames: Vec<String>,
    /// User that must be able to read the key (the API's).
    pub key_owner: Option<String>,
    /// Certificates from an ACME CA (mode = "acme").
    pub acme: Option<AcmeSettings>,
    /// The plain-HTTP listener (challenges, redirect); None when neither
    /// the API nor ACME needs it.
    pub http_listen: Option<SocketAddr>,
    /// The HTTPS port that plain HTTP is redirected to.
    pub https_port: u16,
    /// Where the supervisor reaches the API to see which certificate it
    /// serves; None without the API.
    pub api_local: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    pub ca: Option<PathBuf>,
    /// The account's key and URL (0600).
    pub account_file: PathBuf,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub path: PathBuf,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are read from files at spawn time,
    /// so secrets never sit in the config, the logs or `status` output.
    pub secret_env: BTreeMap<String, PathBuf>,
    /// Run as this user; `None` runs as the supervisor's own user.
    pub user: Option<String>,
    pub working_dir: Option<PathBuf>,
    pub depends_on: Vec<String>,
    pub readiness: Option<Readiness>,
    pub liveness: Option<Liveness>,
    pub restart: RestartSpec,
    pub stop: StopSpec,
    pub limits: Limits,
    pub oneshot: bool,
    pub reload_signal: Option<Signal>,
    /// Directories created before start and owned by the service's user.
    pub dirs: Vec<PathBuf>,
    /// Files written before start (generated configuration).
    pub files: Vec<GeneratedFile>,
    /// TCP addresses the service will listen on, checked to be free before the first start.
    pub ports: Vec<SocketAddr>,
    /// Capabilities kept after switching to `user` (ambient capabilities).
    pub capabilities: Vec<Capability>,
    /// Serves the appliance's TLS certificate: sent `reload_signal` when it changes.
    pub tls_reload: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Listen on ports below 1024 without being root.
    NetBindService,
}

impl Capability {
    pub fn parse(name: &str) -> Result<Capability, String> {
        match name.trim().to_ascii_uppercase().trim_start_matches("CAP_") {
            "NET_BIND_SERVICE" => Ok(Capability::NetBindService),
            _ => Err(format!(
                "`{name}` is not supported; the one capability a service can keep is CAP_NET_BIND_SERVICE"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp(SocketAddr),
    Http(String),
    Exec(Vec<String>),
    /// A regular expression matched against each output line.
    Log(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    pub backoff: Backoff,
    /// After running this long, the backoff starts again from the initial delay.
    pub reset_after: Duration,
    pub start_limit: StartLimit,
}

/// At most `burst` starts within `interval`; one more parks the service as
/// failed. A parked service is started again after `cool_down`: its initial
/// delay after the first parking, doubled after each parking in a row, at
/// most its max (no jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartLimit {
    pub burst: u32,
    pub interval: Duration,
    pub cool_down: Backoff,
}

/// A parked service waits 5 min, then 10, 20, 40, and 1 h from then on:
/// a broken service is not started in a loop, and one whose cause went away
/// (a full disk, a late dependency) comes back without an operator.
pub const DEFAULT_COOL_DOWN: Backoff =
    match Backoff::try_new(Duration::from_secs(300), Duration::from_secs(3600), 0.0) {
        Ok(b) => b,
        Err(_) => panic!("valid cool-down"),
    };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSpec {
    pub signal: Signal,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_LIVENESS_FAILURES: u32 = 3;

impl ServiceSpec {
    /// A service with every default: restart always with backoff 500ms..30s,
    /// 5 starts per 60s, SIGTERM then SIGKILL after 10s.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            command,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            user: None,
            working_dir: None,
            depends_on: Vec::new(),
            readiness: None,
            liveness: None,
            restart: RestartSpec {
                policy: RestartPolicy::Always,
                backoff: Backoff::try_new(Duration::from_millis(500), Duration::from_secs(30), 0.2)
                    .expect("default backoff is valid"),
                reset_after: Duration::from_secs(60),
                start_limit: StartLimit {
                    burst: 5,
                    interval: Duration::from_secs(60),
                    cool_down: DEFAULT_COOL_DOWN,
                },
            },
            stop: StopSpec {
                signal: Signal::SIGTERM,
                timeout: Duration::from_secs(10),
            },
            limits: Limits::default(),
            oneshot: false,
            reload_signal: None,
            dirs: Vec::new(),
            files: Vec::new(),
            ports: Vec::new(),
            capabilities: Vec::new(),
            tls_reload: false,
        }
    }

    pub fn readiness(probe: Probe) -> Readiness {
        Readiness {
            probe,
            interval: DEFAULT_READINESS_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    pub fn liveness(probe: Probe) -> Liveness {
        Liveness {
            probe,
            interval: DEFAULT_LIVENESS_INTERVAL,
            timeout: DEFAULT_LIVENESS_TIMEOUT,
            failures: DEFAULT_LIVENESS_FAILURES,
        }
    }

    /// True when the two specs differ only in what a reload signal can apply
    /// (generated files), so the service can be signalled instead of restarted.
    pub fn differs_only_in_files(&self, other: &ServiceSpec) -> bool {
        let mut a = self.clone();
        a.files = other.files.clone();
        a == *other && self.files != other.files
    }
}

/// `[backup]`, resolved: what the supervisor needs to run pgBackRest for
/// the managed PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    pub pgbackrest: PathBuf,
    /// pgBackRest's stanza: the one cluster it backs up.
    pub stanza: String,
    /// The directory holding the generated `pgbackrest.conf` (`--config-path`).
    pub config_path: PathBuf,
    pub repo: PathBuf,
    /// Scratch space of the test restore.
    pub verify_dir: PathBuf,
    /// PostgreSQL's user, which pgBackRest runs as.
    pub user: Option<String>,
    pub pg_bin: PathBuf,
    pub pg_port: u16,
    pub pg_socket_dir: PathBuf,
    pub pg_data: PathBuf,
    pub superuser: String,
    pub superuser_password: PathBuf,
    /// The API's database, checked by the test restore.
    pub database: String,
    pub schedules: Vec<Schedule>,
    pub retention_full_days: u64,
    /// `retention_full_count`: fulls kept by number instead of by age.
    pub retention_full_count: Option<u64>,
    pub verify: bool,
    pub process_max: u64,
    /// `[backup.s3]`: the offsite copy; None when not configured.
    pub s3: Option<S3Settings>,
}

impl BackupSettings {
    /// pgBackRest's include file for the S3 keys (0600, PostgreSQL's user),
    /// written by the supervisor from `[backup.s3] key_file`; in `conf.d`
    /// beside `pgbackrest.conf`, where every pgBackRest started with
    /// `--config-path` reads it.
    pub fn keys_include(&self) -> PathBuf {
        self.config_path.join("conf.d/s3-keys.conf")
    }
}

/// `[backup.s3]`, resolved: pgBackRest's repo2 and where the appliance's
/// state goes beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Settings {
    pub bucket: String,
    /// repo2-path, starting with `/`; the state goes under `<prefix>/appliance/`.
    pub prefix: String,
    pub region: String,
    /// Host name or address of the endpoint, and its port when not 443.
    pub host: String,
    pub port: Option<u16>,
    pub path_style: bool,
    pub storage_class: Option<String>,
    pub kms_key_id: Option<String>,
    /// `credentials = "file"`: the key file; None: the default AWS chain
    /// (the instance profile on EC2).
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub retention_full_days: u64,
    /// What is copied to `<prefix>/appliance/`: the config file, and the
    /// directories and files of the appliance's state, each with the name
    /// it gets there.
    pub state: Vec<(String, PathBuf)>,
}

impl S3Settings {
    /// `https://host[:port]`, as the S3 client takes it.
    pub fn endpoint_url(&self) -> String {
        match self.port {
            Some(port) if self.host.contains(':') => format!("https://[{}]:{port}", self.host),
            Some(port) => format!("https://{}:{port}", self.host),
            None => format!("https://{}", self.host),
        }
    }
}

/// When a backup of one type is taken: a five-field cron expression, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub kind: BackupKind,
    pub cron: String,
}

/// pgBackRest's backup types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackupKind {
    Incr,
    Diff,
    Full,
}

impl BackupKind {
    pub const ALL: [BackupKind; 3] = [BackupKind::Full, BackupKind::Diff, BackupKind::Incr];

    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == text)
    }
}

/// `[scaling]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSettings {
    pub enable: bool,
    pub interval: Duration,
    pub repeat: Duration,
    /// Fraction below a threshold that clears it (0.1 = 10 %).
    pub hysteresis: f64,
    pub webhook: Option<String>,
    pub triggers: Vec<TriggerSettings>,
    /// Where trigger states survive restarts.
    pub state_file: PathBuf,
    /// The managed Prometheus, for the API's and Prometheus's own figures.
    pub prometheus: Option<String>,
    /// The file system whose use the disk trigger watches.
    pub disk_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerSettings {
    pub kind: TriggerKind,
    pub warning: f64,
    pub critical: f64,
    pub sustain: Duration,
}

impl TriggerSettings {
    /// What to do at `level`, in the three phases of growth: a bigger machine
    /// (vertical), components moved out (separation), replicas (horizontal).
    pub fn recommendation(&self, level: Level) -> String {
        let (w, c) = (self.warning, self.critical);
        let sustain = humantime::format_duration(self.sustain);
        match (self.kind, level) {
            (_, Level::Ok) => "nothing to do".into(),
            (TriggerKind::Cpu, Level::Warning) => {
                format!("CPU above {w} % for {sustain}: plan a larger instance type (vertical)")
            }
            (TriggerKind::Cpu, Level::Critical) => format!(
                "CPU above {c} %: move to a larger instance type now; if it is already large, move PostgreSQL out \
             ([postgres] url, e.g. RDS) to give the API and Prometheus the CPUs (component separation)"
            ),
            (TriggerKind::Memory, Level::Warning) => format!(
                "memory above {w} % for {sustain}: plan an instance with more memory (vertical), or shorten \
             [prometheus] retention"
            ),
            (TriggerKind::Memory, Level::Critical) => format!(
                "memory above {c} %: services are close to the OOM killer; resize the instance now, or move \
             PostgreSQL out ([postgres] url) or Prometheus to remote_write (component separation)"
            ),
            (TriggerKind::Disk, Level::Warning) => format!(
                "the state disk is above {w} % full: grow the volume (it grows into the space at boot) or \
             shorten [prometheus] retention"
            ),
            (TriggerKind::Disk, Level::Critical) => format!(
                "the state disk is above {c} % full: grow the volume now; PostgreSQL and Prometheus stop \
             when it is full"
            ),
            (TriggerKind::ApiLatency, Level::Warning) => format!(
                "API p95 latency above {w} ms for {sustain}: give the API more CPU (vertical, [api] limits) \
             and look for slow routes in phoenix_api_http_request_duration_seconds"
            ),
            (TriggerKind::ApiLatency, Level::Critical) => format!(
                "API p95 latency above {c} ms: run API replicas behind a load balancer on one database \
             (horizontal); move PostgreSQL out first if it is the bottleneck (component separation)"
            ),
            (TriggerKind::Agents, Level::Warning) => format!(
                "{w} or more agents connected: one appliance is reviewed for {c}; prepare API replicas on \
             one database (horizontal)"
            ),
            (TriggerKind::Agents, Level::Critical) => format!(
                "{c} or more agents connected, the reviewed limit of one appliance: add API replicas \
             (horizontal) or split the agents across appliances"
            ),
            (TriggerKind::Metrics, Level::Warning) => format!(
                "Prometheus ingests more than {w} samples/s: shorten retention, or plan remote_write to \
             Mimir or Thanos (component separation)"
            ),
            (TriggerKind::Metrics, Level::Critical) => format!(
                "Prometheus ingests more than {c} samples/s: move long-term storage to Mimir or Thanos \
             with remote_write now (component separation)"
            ),
            (TriggerKind::DbSize, Level::Warning) => format!(
                "the database is larger than {w} GB: plan a managed PostgreSQL ([postgres] url, \
             e.g. RDS) or a larger volume"
            ),
            (TriggerKind::DbSize, Level::Critical) => format!(
                "the database is larger than {c} GB: move it to a managed PostgreSQL ([postgres] \
             url) (component separation)"
            ),
        }
    }
}

/// What is measured, in which unit, and the reviewed deployment's limits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Cpu,
    Memory,
    Disk,
    ApiLatency,
    Agents,
    Metrics,
    DbSize,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 7] = [
        TriggerKind::Cpu,
        TriggerKind::Memory,
        TriggerKind::Disk,
        TriggerKind::ApiLatency,
        TriggerKind::Agents,
        TriggerKind::Metrics,
        TriggerKind::DbSize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TriggerKind::Cpu => "cpu",
            TriggerKind::Memory => "memory",
            TriggerKind::Disk => "disk",
            TriggerKind::ApiLatency => "api_latency",
            TriggerKind::Agents => "agents",
            TriggerKind::Metrics => "metrics",
            TriggerKind::DbSize => "db_size",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            TriggerKind::Cpu | TriggerKind::Memory | TriggerKind::Disk => "%",
            TriggerKind::ApiLatency => "ms",
            TriggerKind::Agents => "agents",
            TriggerKind::Metrics => "samples/s",
            TriggerKind::DbSize => "GB",
        }
    }

    /// (warning, critical) of the reviewed deployment.
    pub fn defaults(self) -> (f64, f64) {
        match self {
            TriggerKind::Cpu => (70.0, 85.0),
            TriggerKind::Memory => (80.0, 90.0),
            TriggerKind::Disk => (80.0, 90.0),
            TriggerKind::ApiLatency => (200.0, 500.0),
            TriggerKind::Agents => (150.0, 200.0),
            TriggerKind::Metrics => (800_000.0, 1_000_000.0),
            TriggerKind::DbSize => (20.0, 25.0),
        }
    }
}
