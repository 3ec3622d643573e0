//! The TOML file as written by the operator. Every table rejects unknown keys;
//! defaults are applied later (`expand`), because some depend on `--dev`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::{
    self, CountIn, DAY, DurationIn, GIB, HOUR, KIB, MINUTE, MS, SECOND, SignalName,
};

// Every duration, count and size carries its range in its type (see
// `units`); docs/configuration.md lists the same ranges.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub supervisor: SupervisorSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub prometheus: PrometheusSection,
    #[serde(default)]
    pub pushgateway: PushgatewaySection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub alertmanager: AlertmanagerSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub scaling: ScalingSection,
    #[serde(default)]
    pub backup: BackupSection,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceTable>,
}

/// `[backup]`: pgBackRest, run by the supervisor, for the managed PostgreSQL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    pub enable: Option<bool>,
    /// The pgBackRest program.
    #[serde(default, deserialize_with = "units::path")]
    pub pgbackrest: Option<PathBuf>,
    /// The local repository (repo1).
    #[serde(default, deserialize_with = "units::path")]
    pub repo: Option<PathBuf>,
    /// Cron expressions (five fields, UTC) of each backup type; "" turns
    /// one off.
    pub full: Option<String>,
    pub diff: Option<String>,
    pub incr: Option<String>,
    /// Days a full backup (and the WAL it needs) is kept in the local repository.
    pub retention_full_days: Option<CountIn<1, 3650>>,
    /// Instead of days: how many full backups are kept.
    pub retention_full_count: Option<CountIn<1, 1000>>,
    /// PostgreSQL's archive_timeout: the most committed data a lost
    /// machine can lose.
    pub archive_timeout: Option<DurationIn<SECOND, HOUR>>,
    /// Push WAL from a spool in the background (pgBackRest archive-async).
    pub archive_async: Option<bool>,
    /// Verify every full backup by `pgbackrest verify` and a test restore.
    pub verify: Option<bool>,
    /// zst, lz4, gz, bz2 or none.
    pub compress: Option<String>,
    /// Parallel processes for backup and restore.
    pub process_max: Option<CountIn<1, 64>>,
    /// The offsite copy: a second pgBackRest repository on S3, and the
    /// appliance's own state beside it.
    pub s3: Option<S3Table>,
}

/// `[backup.s3]`. No keys here: the instance profile, or a key file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Table {
    pub bucket: Option<String>,
    /// repo2-path: the folder in the bucket.
    pub prefix: Option<String>,
    pub region: Option<String>,
    /// `host[:port]` or `https://host[:port]`.
    pub endpoint: Option<String>,
    /// "host" or "path".
    pub uri_style: Option<String>,
    /// The storage class of the appliance-state objects.
    pub storage_class: Option<String>,
    /// SSE-KMS key of both the repository and the state objects.
    pub kms_key_id: Option<String>,
    /// "instance-profile" or "file".
    pub credentials: Option<String>,
    #[serde(default, deserialize_with = "units::path")]
    pub key_file: Option<PathBuf>,
    /// CA certificate (PEM) of a private CA that signed the endpoint's certificate.
    #[serde(default, deserialize_with = "units::path")]
    pub ca_file: Option<PathBuf>,
    /// Days a full backup is kept in the bucket; default: the local days.
    pub retention_full_days: Option<CountIn<1, 3650>>,
}

/// `[scaling]`: capacity checks against the reviewed deployment's triggers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSection {
    pub enable: Option<bool>,
    pub interval: Option<DurationIn<SECOND, HOUR>>,
    /// How often an alert is repeated while a trigger stays raised.
    pub repeat: Option<DurationIn<MINUTE, { 7 * DAY }>>,
    /// Percent below a threshold that a value must fall to clear it.
    pub hysteresis: Option<f64>,
    /// URL that each alert is POSTed to as JSON.
    pub webhook: Option<String>,
    pub cpu: Option<TriggerTable>,
    pub memory: Option<TriggerTable>,
    pub disk: Option<TriggerTable>,
    pub api_latency: Option<TriggerTable>,
    pub agents: Option<TriggerTable>,
    pub metrics: Option<TriggerTable>,
    pub db_size: Option<TriggerTable>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerTable {
    pub enable: Option<bool>,
    pub warning: Option<f64>,
    pub critical: Option<f64>,
    /// How long a value must stay past a threshold (or back below it).
    pub sustain: Option<DurationIn<0, DAY>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSection {
    #[serde(default, deserialize_with = "units::path")]
    pub state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::path")]
    pub run_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::path")]
    pub log_dir: Option<PathBuf>,
    pub shutdown_timeout: Option<DurationIn<SECOND, HOUR>>,
    pub log_max_size: Option<units::SizeIn<{ 4 * KIB }, GIB>>,
    pub log_keep: Option<CountIn<1, 1000>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    #[serde(default, deserialize_with = "units::listen")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "units::path")]
    pub bin_dir: Option<PathBuf>,
    pub port: Option<CountIn<1, 65535>>,
    pub user: Option<String>,
    pub limits: Option<LimitsTable>,
    /// Extra `postgresql.conf` parameters, passed as `-c key=value`.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// An external database for the API (RDS, ...): the built-in
    /// PostgreSQL steps aside. No password in the URL.
    #[serde(alias = "external_url")]
    pub url: Option<String>,
    /// File holding the password for `url`.
    #[serde(
        default,
        deserialize_with = "units::path",
        alias = "external_password_file"
    )]
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) that the external database's certificate must chain
    /// to (TLS verify-full); default: the public web roots.
    #[serde(default, deserialize_with = "units::path")]
    pub ca_file: Option<PathBuf>,
}

impl PostgresSection {
    /// The built-in PostgreSQL runs here: `enable`, by default unless an
    /// external `url` is given.
    pub fn managed(&self) -> bool {
        self.enable.unwrap_or(self.url.is_none())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSection {
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "units::path")]
    pub bin: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::listen")]
    pub listen: Option<SocketAddr>,
    pub retention: Option<String>,
    pub scrape_interval: Option<DurationIn<SECOND, HOUR>>,
    /// How old a sample Prometheus still stores (remote writes from agents'
    /// queues); the API refuses older ones.
    pub out_of_order_window: Option<DurationIn<MINUTE, { 30 * DAY }>>,
    pub user: Option<String>,
    pub limits: Option<LimitsTable>,
    /// Stores that Prometheus sends every sample on to (Mimir,
    /// VictoriaMetrics, another Prometheus), agents' samples included.
    #[serde(default)]
    pub remote_write: Vec<RemoteWriteTable>,
    /// Where the API reads KPIs, charts and costs from, when that is not
    /// this Prometheus (a store that `remote_write` fills).
    pub query_url: Option<String>,
    /// With `enable = false`: the store's remote-write receiver that the
    /// API forwards agents' samples to.
    pub write_url: Option<String>,
}

/// One of `[[prometheus.remote_write]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteTable {
    pub url: Option<String>,
    /// A file holding a bearer token (readable by Prometheus's user).
    #[serde(default, deserialize_with = "units::path")]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth: the user name, with `password_file`.
    pub username: Option<String>,
    #[serde(default, deserialize_with = "units::path")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) of a private CA that signed the store's certificate.
    #[serde(default, deserialize_with = "units::path")]
    pub ca_file: Option<PathBuf>,
}

/// `[alerts]`: the alert rules the managed Prometheus evaluates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    pub enable: Option<bool>,
    /// How long a condition holds before its alert fires.
    pub pending: Option<DurationIn<0, DAY>>,
}

/// `[alertmanager]`: an optional Alertmanager that delivers the alerts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSection {
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "units::path")]
    pub bin: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::listen")]
    pub listen: Option<SocketAddr>,
    pub user: Option<String>,
    pub limits: Option<LimitsTable>,
    /// How long to wait before the first notification of a new group.
    pub group_wait: Option<DurationIn<0, HOUR>>,
    /// How long to wait before notifying of changes to a group.
    pub group_interval: Option<DurationIn<SECOND, DAY>>,
    /// How long to wait before repeating a notification still firing.
    pub repeat_interval: Option<DurationIn<MINUTE, { 30 * DAY }>>,
    #[serde(default)]
    pub webhook: Vec<WebhookTable>,
    pub email: Option<EmailTable>,
}

/// `[[alertmanager.webhook]]`: where alerts are posted as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTable {
    pub url: String,
    /// A file holding a bearer token sent with each post.
    #[serde(default, deserialize_with = "units::path")]
    pub bearer_token_file: Option<PathBuf>,
}

/// `[alertmanager.email]`: alerts by email through an SMTP server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTable {
    pub to: String,
    pub from: String,
    /// `host:port` of the SMTP server.
    pub smarthost: String,
    pub username: Option<String>,
    #[serde(default, deserialize_with = "units::path")]
    pub password_file: Option<PathBuf>,
    pub require_tls: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushgatewaySection {
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "units::path")]
    pub bin: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::listen")]
    pub listen: Option<SocketAddr>,
    pub user: Option<String>,
    pub limits: Option<LimitsTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "units::path")]
    pub bin: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::listen")]
    pub listen: Option<SocketAddr>,
    /// The agents-only listener.
    #[serde(default, deserialize_with = "units::listen")]
    pub agent_listen: Option<SocketAddr>,
    /// Dollars per active series per month, for cost figures.
    pub price_per_series_month: Option<f64>,
    pub user: Option<String>,
    pub limits: Option<LimitsTable>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    SelfSigned,
    Files,
    Acme,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default)]
    pub mode: TlsMode,
    #[serde(default, deserialize_with = "units::path")]
    pub cert: Option<PathBuf>,
    #[serde(default, deserialize_with = "units::path")]
    pub key: Option<PathBuf>,
    /// Names put in the self-signed certificate besides localhost and
    /// 127.0.0.1; with mode = "acme", the names to get a certificate for.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Plain-HTTP listener: ACME HTTP-01 challenges, and a redirect of
    /// everything else to the API's HTTPS address.
    /// An address, or "off".
    pub http_listen: Option<String>,
    /// The ACME directory URL (default: Let's Encrypt).
    pub acme_directory: Option<String>,
    /// Contact address for the ACME account.
    pub acme_email: Option<String>,
    /// PEM file with the root certificate that the ACME directory's HTTPS
    /// certificate chains to, for a private CA; default: the system roots.
    #[serde(default, deserialize_with = "units::path")]
    pub acme_ca: Option<PathBuf>,
}

/// `[services.<name>]`: a new service, or fields that override a built-in one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTable {
    pub enable: Option<bool>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub user: Option<String>,
    #[serde(default, deserialize_with = "units::path")]
    pub working_dir: Option<PathBuf>,
    pub depends_on: Option<Vec<String>>,
    pub readiness: Option<ProbeTable>,
    pub liveness: Option<ProbeTable>,
    pub restart: Option<RestartTable>,
    pub stop: Option<StopTable>,
    pub limits: Option<LimitsTable>,
    pub oneshot: Option<bool>,
    pub reload_signal: Option<SignalName>,
    /// Capabilities kept after dropping to `user`: only "CAP_NET_BIND_SERVICE".
    pub capabilities: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeTable {
    #[serde(default, deserialize_with = "units::listen")]
    pub tcp: Option<SocketAddr>,
    pub http: Option<String>,
    pub exec: Option<Vec<String>>,
    pub log: Option<String>,
    pub interval: Option<DurationIn<{ 10 * MS }, HOUR>>,
    pub timeout: Option<DurationIn<{ 10 * MS }, { 10 * MINUTE }>>,
    /// Liveness: consecutive failures before a restart.
    pub failures: Option<CountIn<1, 100>>,
    /// Readiness: how long a start may take before it counts as failed.
    pub start_timeout: Option<DurationIn<{ 100 * MS }, DAY>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartTable {
    pub policy: Option<RestartPolicyName>,
    pub initial_delay: Option<DurationIn<{ 10 * MS }, HOUR>>,
    pub max_delay: Option<DurationIn<{ 10 * MS }, HOUR>>,
    pub jitter: Option<f64>,
    pub reset_after: Option<DurationIn<SECOND, DAY>>,
    pub start_limit: Option<StartLimitTable>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartLimitTable {
    pub burst: CountIn<1, 1000>,
    pub interval: DurationIn<SECOND, DAY>,
    /// How long a parked service waits before it is started again; doubles
    /// with each parking in a row, up to `cool_down_max`.
    pub cool_down: Option<DurationIn<SECOND, DAY>>,
    pub cool_down_max: Option<DurationIn<SECOND, DAY>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopTable {
    pub signal: Option<SignalName>,
    pub timeout: Option<DurationIn<{ 100 * MS }, HOUR>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsTable {
    pub memory: Option<units::MemoryLimit>,
    pub cpus: Option<units::CpuLimit>,
    /// The kernel's largest pid_max.
    pub pids: Option<CountIn<1, 4_194_304>>,
}
