//! The supervisor's published state: what /health, /metrics and `phoenixctl`
//! show. Built by the event loop after every event (`Snapshot::of` its
//! `Parts`, sent with `publish`); readers never probe.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not running: not yet started, stopped by the operator, or waiting for dependencies.
    Stopped,
    /// Running, readiness not yet confirmed (for a oneshot: running to completion).
    Starting,
    Ready,
    /// Running but failing its liveness check; restarted at the failure threshold.
    Unhealthy,
    /// Exited unexpectedly; waiting out the restart delay.
    Backoff,
    /// Stop signal sent; waiting for exit (SIGKILL at the timeout).
    Stopping,
    /// Parked: start limit reached, or exited with restart = "never". Health fails.
    Failed,
    /// A oneshot service that ran to completion with exit code 0.
    Exited,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unhealthy => "unhealthy",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::Exited => "exited",
        }
    }

    pub const ALL: [State; 8] = [
        State::Stopped,
        State::Starting,
        State::Ready,
        State::Unhealthy,
        State::Backoff,
        State::Stopping,
        State::Failed,
        State::Exited,
    ];
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub pid: Option<i32>,
    /// Automatic restarts since the supervisor started.
    pub restarts: u64,
    pub oneshot: bool,
    /// False when the operator stopped it.
    pub wanted: bool,
    /// Unix milliseconds when the current process started.
    pub started_at_ms: Option<u64>,
    /// Unix milliseconds when the service entered its current state.
    pub since_ms: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub depends_on: Vec<String>,
    /// Unix milliseconds when a parked (`failed`) service is started again.
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub started_at_ms: u64,
    pub pid1: bool,
    pub config_file: String,
    /// Why resource limits are not applied, when they are not.
    pub limits_unavailable: Option<String>,
    pub shutting_down: bool,
    pub orphans_reaped: u64,
    /// Checks or starts the supervisor could not make for want of its own
    /// resources, in the last minute.
    #[serde(default)]
    pub resource_shortage: Option<ResourceShortage>,
    pub services: Vec<ServiceStatus>,
    /// The API's TLS certificate; None before the first look at it.
    #[serde(default)]
    pub certificate: Option<CertificateStatus>,
    /// The capacity triggers; empty when `[scaling]` is off or before the
    /// first sample.
    #[serde(default)]
    pub scaling: Vec<ScalingStatus>,
    /// The backup task's state; None when `[backup]` is off.
    #[serde(default)]
    pub backup: Option<BackupStatus>,
    /// `[postgres] url`: the external database's last look; None when
    /// the database is the built-in one.
    #[serde(default)]
    pub external_database: Option<ExternalDatabaseStatus>,
}

/// The supervisor ran short of file descriptors, memory or processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceShortage {
    /// Unix milliseconds of the last check or start it could not make.
    pub last_ms: u64,
    /// How many since the shortage began.
    pub count: u64,
    pub error: String,
}

/// How far a capacity trigger is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// One capacity trigger as last evaluated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScalingStatus {
    pub trigger: String,
    pub level: Level,
    /// The last value measured; None without data.
    pub value: Option<f64>,
    pub unit: String,
    pub warning: f64,
    pub critical: f64,
    /// Unix milliseconds when the trigger entered its level.
    pub since_ms: u64,
    /// Why the value could not be measured.
    pub error: Option<String>,
    /// What to do at this level.
    pub recommendation: Option<String>,
    /// Alerts sent since the supervisor started.
    pub alerts: u64,
    pub last_alert_ms: Option<u64>,
}

/// What the last look at the external database found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExternalDatabaseStatus {
    /// `host:port`.
    pub address: String,
    pub tls: bool,
    pub checked_ms: u64,
    /// Connect and handshake, in milliseconds, when it answered.
    pub latency_ms: Option<u64>,
    /// Why it did not answer as it must.
    pub error: Option<String>,
}

/// What the certificate task last saw and did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CertificateStatus {
    /// `self-signed`, `files` or `acme`.
    pub mode: String,
    pub path: String,
    /// The names the certificate is valid for.
    pub names: Vec<String>,
    pub issuer: Option<String>,
    /// Issued by itself: generated here (or, in ACME mode, the stand-in).
    #[serde(default)]
    pub self_signed: bool,
    /// Unix milliseconds.
    pub not_after_ms: Option<u64>,
    /// When the next ACME order is due (Unix milliseconds).
    pub renew_at_ms: Option<u64>,
    /// Unix milliseconds of the last certificate obtained over ACME.
    pub renewed_at_ms: Option<u64>,
    /// The certificate cannot be read, or the last ACME attempt failed.
    pub error: Option<String>,
    /// ACME attempts failed in a row.
    pub failures: u32,
    /// Plain-HTTP listener (challenges, redirect): address, or why not.
    pub http_listen: Option<String>,
    pub http_error: Option<String>,
    /// The API serves another certificate than the file's.
    #[serde(default)]
    pub served_error: Option<String>,
}

/// The plain-HTTP listener (ACME challenges, redirect to HTTPS) as its task
/// last reported it; shown as part of the certificate's status.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainHttpStatus {
    /// The address it listens on, or tries to.
    pub listen: String,
    /// Why it cannot listen.
    pub error: Option<String>,
}

/// The certificate's status as shown: the certificate task's last look with
/// the plain-HTTP listener's state; None before the task's first look.
pub fn certificate_shown(
    certificate: Option<&CertificateStatus>,
    plain_http: Option<&PlainHttpStatus>,
) -> Option<CertificateStatus> {
    let mut shown = certificate.filter(|c| !c.mode.is_empty())?.clone();
    if let Some(listener) = plain_http {
        shown.http_listen = Some(listener.listen.clone());
        shown.http_error = listener.error.clone();
    }
    Some(shown)
}

/// What the event loop holds, as a snapshot reads it.
pub struct Parts<'a> {
    pub started_at: SystemTime,
    pub pid1: bool,
    pub config_file: &'a Path,
    /// Why resource limits are not applied, when they are not.
    pub limits_unavailable: Option<&'a str>,
    pub shutting_down: bool,
    pub orphans_reaped: u64,
    /// A shortage of the supervisor's own resources still shown.
    pub resource_shortage: Option<ResourceShortage>,
    pub services: Vec<ServiceStatus>,
    /// The certificate task's last report.
    pub certificate: Option<&'a CertificateStatus>,
    /// The plain-HTTP listener's last report.
    pub plain_http: Option<&'a PlainHttpStatus>,
    pub scaling: &'a [ScalingStatus],
    /// The backup task's last report.
    pub backup: Option<&'a BackupStatus>,
    pub external_database: Option<&'a ExternalDatabaseStatus>,
}

impl Snapshot {
    pub fn of(parts: Parts<'_>) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: unix_ms(parts.started_at),
            pid1: parts.pid1,
            config_file: parts.config_file.display().to_string(),
            limits_unavailable: parts.limits_unavailable.map(String::from),
            shutting_down: parts.shutting_down,
            orphans_reaped: parts.orphans_reaped,
            resource_shortage: parts.resource_shortage,
            services: parts.services,
            certificate: certificate_shown(parts.certificate, parts.plain_http),
            scaling: parts.scaling.to_vec(),
            backup: parts.backup.cloned(),
            external_database: parts.external_database.cloned(),
        }
    }

    /// Before the loop has looked at anything.
    pub fn empty(config_file: &Path) -> Snapshot {
        Snapshot::of(Parts {
            started_at: SystemTime::now(),
            pid1: false,
            config_file,
            limits_unavailable: None,
            shutting_down: false,
            orphans_reaped: 0,
            resource_shortage: None,
            services: Vec::new(),
            certificate: None,
            plain_http: None,
            scaling: &[],
            backup: None,
            external_database: None,
        })
    }
}

/// Sends `snapshot` to the readers when it differs from the last one.
pub fn publish(to: &watch::Sender<Snapshot>, snapshot: Snapshot) {
    to.send_if_modified(|old| {
        if *old == snapshot {
            false
        } else {
            *old = snapshot;
            true
        }
    });
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The task's state, as `phoenixctl status` and /health show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The last backup of each type: full, diff, incr.
    pub last: BTreeMap<String, Run>,
    /// The last successful one of each type.
    pub last_success: BTreeMap<String, Run>,
    pub running: Option<Running>,
    /// The next scheduled one.
    pub next: Option<Next>,
    /// Failures in a row.
    pub failures: u32,
    /// Scheduled backups skipped because one was still running.
    pub skipped: u64,
    /// The newest full backup in the repositories, as pgBackRest lists it.
    pub newest_full: Option<NewestFull>,
    /// When the task started (Unix ms): the age of "no full backup yet".
    pub since_ms: u64,
    /// The copy to S3 (`[backup.s3]`); None without it.
    #[serde(default)]
    pub offsite: Option<OffsiteStatus>,
    /// PostgreSQL's WAL archiving (pg_stat_archiver), last looked at.
    #[serde(default)]
    pub archiver: Option<ArchiverStatus>,
}

/// The offsite task's state: the copy of each new local full to S3
/// (pgBackRest's repo2) and of the appliance's state beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffsiteStatus {
    /// `s3://bucket/prefix`.
    pub target: String,
    /// The local full being copied, or waiting to be.
    pub pending: Option<String>,
    /// When the copy under way started (Unix ms).
    pub running_since_ms: Option<u64>,
    pub last_success: Option<OffsiteCopy>,
    /// The last attempt's error, cleared by a success.
    pub last_error: Option<String>,
    /// Failures in a row, and since the supervisor started.
    pub failures: u32,
    pub failures_total: u64,
    /// When the next attempt is due (Unix ms), after a failure.
    pub retry_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffsiteCopy {
    /// The local full copied, and the full it became in repo2.
    pub local: String,
    pub remote: String,
    /// When the copy ended (Unix ms).
    pub at_ms: u64,
    /// Objects of the appliance's state uploaded; None when the state was
    /// not (yet) part of this copy (after a restart: read from repo2).
    pub state_objects: Option<u64>,
}

/// What `pg_stat_archiver` said, with when it was asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiverStatus {
    pub checked_ms: u64,
    pub archived_count: u64,
    pub failed_count: u64,
    pub last_archived_ms: Option<u64>,
    pub last_failed_ms: Option<u64>,
    pub last_failed_wal: Option<String>,
    /// When archiving was first seen failing, while it still is.
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
}

impl ArchiverStatus {
    /// Failing: the last attempt failed (a failure after the last success).
    pub fn failing(&self) -> bool {
        match (self.last_failed_ms, self.last_archived_ms) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewestFull {
    pub label: String,
    pub stopped_ms: u64,
    pub verified: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub label: Option<String>,
    pub trigger: String,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// A full's verification: "ok at …", "failed at …: why", "skipped at …: why".
    pub verified: Option<String>,
}

impl Running {
    /// "full backup", "restore", "verification".
    pub fn what(&self) -> String {
        match self.kind.as_str() {
            "restore" => "restore".into(),
            "verify" => "verification".into(),
            "migrate" => "database migration".into(),
            kind => format!("{kind} backup"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    #[serde(rename = "type")]
    pub kind: String,
    pub trigger: String,
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Next {
    #[serde(rename = "type")]
    pub kind: String,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_shown_after_the_first_look_with_the_listener_merged_in() {
        let listener = |error: Option<&str>| PlainHttpStatus {
            listen: "0.0.0.0:80".into(),
            error: error.map(String::from),
        };
        let busy = listener(Some("cannot listen on 0.0.0.0:80"));
        assert_eq!(certificate_shown(None, Some(&busy)), None);
        let unseen = CertificateStatus::default();
        assert_eq!(certificate_shown(Some(&unseen), Some(&busy)), None);

        let looked = CertificateStatus {
            mode: "acme".into(),
            error: Some("the CA is down".into()),
            ..CertificateStatus::default()
        };
        assert_eq!(certificate_shown(Some(&looked), None), Some(looked.clone()));
        let shown = certificate_shown(Some(&looked), Some(&busy)).unwrap();
        assert_eq!(shown.http_listen.as_deref(), Some("0.0.0.0:80"));
        assert_eq!(shown.http_error, busy.error);
        assert_eq!(shown.error, looked.error);
        let shown = certificate_shown(Some(&looked), Some(&listener(None))).unwrap();
        assert_eq!(
            (shown.http_listen.as_deref(), shown.http_error),
            (Some("0.0.0.0:80"), None)
        );
    }
}
