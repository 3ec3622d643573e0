//! /health (application/health+json), /livez, /readyz and /metrics, all
//! rendered from the published snapshot: no request ever probes a service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::net::IpAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::listen::Ends;
use crate::status::{
    ArchiverStatus, BackupStatus, CertificateStatus, Level, Snapshot, State, now_ms,
};

/// The loop is considered stuck when its heartbeat is older than this.
const LIVENESS_STALE_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// `phoenixctl health` exit code.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

pub fn service_status(state: State, wanted: bool) -> Status {
    match state {
        State::Ready | State::Exited => Status::Pass,
        State::Stopped if !wanted => Status::Warn,
        State::Failed => Status::Fail,
        _ => Status::Warn,
    }
}

/// The health document and its overall status.
pub fn health_document(s: &Snapshot) -> (Status, Value) {
    let now = now_ms();
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut overall = if s.shutting_down {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut checks = serde_json::Map::new();
    for svc in &s.services {
        let status = service_status(svc.state, svc.wanted);
        overall = overall.max(status);
        let mut check = json!({
            "componentId": svc.name,
            "componentType": "service",
            "observedValue": svc.state.as_str(),
            "status": status.as_str(),
            "time": time,
            "restarts": svc.restarts,
            "pid": svc.pid,
            "uptimeSeconds": svc.started_at_ms.map(|t| now.saturating_sub(t) / 1000),
        });
        if let Some(t) = svc.retry_at_ms {
            check["retryAt"] = json!(rfc3339(t));
        }
        let mut output = Vec::new();
        if let Some(e) = &svc.last_error {
            output.push(e.clone());
        }
        if !svc.depends_on.is_empty() {
            output.push(format!("waiting for {}", svc.depends_on.join(", ")));
        }
        if !output.is_empty() {
            check["output"] = json!(output.join("; "));
        }
        checks.insert(format!("{}:state", svc.name), json!([check]));
    }
    if let Some(cert) = &s.certificate {
        let (status, check) = certificate_check(cert, now);
        overall = overall.max(status);
        let mut check = check;
        check["time"] = json!(time);
        checks.insert("tls:certificate".into(), json!([check]));
    }
    if let Some(b) = &s.backup {
        for (name, status, mut check) in backup_checks(b, now) {
            overall = overall.max(status);
            check["time"] = json!(time);
            checks.insert(name.into(), json!([check]));
        }
    }
    let mut notes = Vec::new();
    if let Some(db) = &s.external_database {
        let (status, check) = external_database_check(db);
        overall = overall.max(status);
        let mut check = check;
        check["time"] = json!(time);
        checks.insert("postgres:external".into(), json!([check]));
        notes.push(format!(
            "the API's database is external ([postgres] url, {}{}): the built-in PostgreSQL, its \
             backups and their checks are off; back the database up with its provider (for RDS, \
             automated snapshots)",
            db.address,
            if db.tls {
                ", TLS verify-full"
            } else {
                ", no TLS: on this machine"
            }
        ));
    }
    for t in &s.scaling {
        // Capacity is a warning at most: failing health would take the
        // appliance out of a load balancer when it is busiest.
        let status = match t.level {
            Level::Ok => Status::Pass,
            Level::Warning | Level::Critical => Status::Warn,
        };
        overall = overall.max(status);
        let mut check = json!({
            "componentId": t.trigger,
            "componentType": "scaling",
            "observedValue": t.value,
            "observedUnit": t.unit,
            "status": status.as_str(),
            "level": t.level.as_str(),
            "warning": t.warning,
            "critical": t.critical,
            "time": time,
        });
        let output: Vec<&str> = [t.recommendation.as_deref(), t.error.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if !output.is_empty() {
            check["output"] = json!(output.join("; "));
        }
        checks.insert(format!("scaling:{}", t.trigger), json!([check]));
    }
    if let Some(r) = &s.resource_shortage {
        // The supervisor's own trouble, not a service's: a warning, and
        // nothing is stopped for it.
        overall = overall.max(Status::Warn);
        checks.insert(
            "supervisor:resources".into(),
            json!([{
                "componentType": "system",
                "status": Status::Warn.as_str(),
                "observedValue": r.count,
                "time": rfc3339(r.last_ms),
                "output": format!(
                    "the supervisor could not run {} check(s) or start(s) for want of its own \
                     resources (last: {}); services are not judged on them. Raise its open-files \
                     limit or find what holds its descriptors (ls /proc/<pid>/fd)",
                    r.count, r.error
                ),
            }]),
        );
    }
    let mut doc = json!({
        "status": overall.as_str(),
        "version": s.version,
        "description": "Phoenix appliance supervisor",
        "checks": checks,
    });
    if let Some(why) = &s.limits_unavailable {
        // Expected on dev machines; noted, not counted against health.
        notes.push(format!("resource limits are not applied: {why}"));
    }
    if !notes.is_empty() {
        doc["notes"] = json!(notes);
    }
    (overall, doc)
}

/// `postgres:external`: fails while the external database does not answer
/// (or its certificate does not verify): the API cannot work without it.
pub fn external_database_check(db: &crate::status::ExternalDatabaseStatus) -> (Status, Value) {
    let status = if db.error.is_some() {
        Status::Fail
    } else {
        Status::Pass
    };
    let mut check = json!({
        "componentId": db.address,
        "componentType": "datastore",
        "status": status.as_str(),
        "checkedAt": rfc3339(db.checked_ms),
    });
    if let Some(ms) = db.latency_ms {
        check["observedValue"] = json!(ms);
        check["observedUnit"] = json!("ms");
    }
    if let Some(e) = &db.error {
        check["output"] = json!(e);
    }
    (status, check)
}

/// Days left before health warns, and fails, about the certificate.
pub const CERT_WARN_DAYS: u64 = 14;
pub const CERT_FAIL_DAYS: u64 = 3;

/// The certificate's check: fail when it is unreadable or has less than 3
/// days left, warn under 14 days, or when ACME challenges cannot be
/// answered (the plain-HTTP listener is down).
/// A full backup older than this warns, and older than the next fails:
/// the daily full was missed once, then twice.
pub const BACKUP_WARN_HOURS: u64 = 26;
pub const BACKUP_FAIL_HOURS: u64 = 50;

/// Archiving that has failed this long fails health: WAL piles up in
/// pg_wal, and what is not archived is lost with the machine.
pub const ARCHIVE_FAIL_MINUTES: u64 = 5;

/// `backup:walArchive`: warn while PostgreSQL cannot archive WAL, fail
/// once it has not for `ARCHIVE_FAIL_MINUTES`.
fn archive_check(a: &ArchiverStatus, now_ms: u64) -> (&'static str, Status, Value) {
    let failing_for = a.failing_since_ms.map(|t| now_ms.saturating_sub(t));
    let status = match failing_for {
        None => Status::Pass,
        Some(d) if d >= ARCHIVE_FAIL_MINUTES * 60_000 => Status::Fail,
        Some(_) => Status::Warn,
    };
    let output = match failing_for {
        None => format!(
            "{} WAL segments archived{}",
            a.archived_count,
            a.last_archived_ms
                .map(|t| format!(", the last at {}", rfc3339(t)))
                .unwrap_or_default()
        ),
        Some(d) => format!(
            "archiving has failed for {} s (last failed segment {}); see PostgreSQL's log, \
             and /health backup checks; WAL piles up in pg_wal until it is archived",
            d / 1000,
            a.last_failed_wal.as_deref().unwrap_or("?")
        ),
    };
    (
        "backup:walArchive",
        status,
        json!({
            "componentType": "backup",
            "observedValue": a.failed_count,
            "observedUnit": "failures",
            "status": status.as_str(),
            "output": output,
        }),
    )
}

/// `backup:age` (of the newest full, or of the wait for the first) and
/// `backup:verified` (of the newest full).
pub fn backup_checks(b: &BackupStatus, now_ms: u64) -> Vec<(&'static str, Status, Value)> {
    const HOUR_MS: u64 = 3_600_000;
    let (since, what) = match &b.newest_full {
        Some(f) => (f.stopped_ms, format!("the newest full backup, {}", f.label)),
        None => (b.since_ms, "no full backup yet".to_string()),
    };
    let age_h = now_ms.saturating_sub(since) as f64 / HOUR_MS as f64;
    let age_status = if age_h > BACKUP_FAIL_HOURS as f64 {
        Status::Fail
    } else if age_h > BACKUP_WARN_HOURS as f64 {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut age = json!({
        "componentType": "backup",
        "observedValue": (age_h * 10.0).round() / 10.0,
        "observedUnit": "h",
        "status": age_status.as_str(),
    });
    let mut output = vec![if b.newest_full.is_some() {
        format!("{what} finished {age_h:.1} h ago")
    } else {
        format!("{what}; waiting for {age_h:.1} h")
    }];
    if let Some(run) = b.last.get("full").filter(|r| r.error.is_some()) {
        output.push(format!(
            "the last full backup failed: {}",
            run.error.as_deref().unwrap_or_default()
        ));
    }
    if let Some(next) = &b.next {
        output.push(format!("next: {} at {}", next.kind, rfc3339(next.at_ms)));
    }
    if age_status != Status::Pass {
        output.push(format!(
            "warns past {BACKUP_WARN_HOURS} h, fails past {BACKUP_FAIL_HOURS} h; take one with `phoenixctl backup now`"
        ));
    }
    age["output"] = json!(output.join("; "));
    let mut out = vec![("backup:age", age_status, age)];
    if let Some(a) = &b.archiver {
        out.push(archive_check(a, now_ms));
    }
    if let Some(f) = &b.newest_full {
        let verified = f.verified.as_deref().unwrap_or("not verified");
        let status = if verified.starts_with("failed") {
            Status::Warn
        } else {
            Status::Pass
        };
        out.push((
            "backup:verified",
            status,
            json!({
                "componentId": f.label,
                "componentType": "backup",
                "observedValue": verified.split(' ').next().unwrap_or_default(),
                "status": status.as_str(),
                "output": verified,
            }),
        ));
    }
    if let Some(o) = &b.offsite {
        let (status, check) = offsite_check(o, b.newest_full.as_ref());
        out.push(("backup:offsite", status, check));
    }
    out
}

/// `backup:offsite`: warns when the last copy to S3 failed, or when the
/// newest local full has no copy there yet and none is under way.
pub fn offsite_check(
    o: &crate::status::OffsiteStatus,
    newest_local: Option<&crate::status::NewestFull>,
) -> (Status, Value) {
    let copied = o.last_success.as_ref();
    let behind = newest_local.is_some_and(|f| copied.is_none_or(|c| c.at_ms < f.stopped_ms));
    let mut output = Vec::new();
    if let Some(c) = copied {
        output.push(format!(
            "the last copy: {} as {} at {}",
            c.local,
            c.remote,
            rfc3339(c.at_ms)
        ));
    }
    let status = if let Some(e) = &o.last_error {
        output.push(format!(
            "the last copy failed ({} in a row): {e}",
            o.failures
        ));
        if let Some(at) = o.retry_at_ms {
            output.push(format!("retried at {}", rfc3339(at)));
        }
        Status::Warn
    } else if o.running_since_ms.is_some() {
        output.push(format!(
            "copying {} since {}",
            o.pending.as_deref().unwrap_or("?"),
            rfc3339(o.running_since_ms.unwrap_or_default())
        ));
        Status::Pass
    } else if behind {
        output.push("the newest local full is not in S3 yet".into());
        Status::Warn
    } else {
        Status::Pass
    };
    if copied.is_none() && newest_local.is_none() {
        output.push("no full backup to copy yet".into());
    }
    let check = json!({
        "componentId": o.target,
        "componentType": "backup",
        "observedValue": copied.map(|c| c.remote.clone()),
        "status": status.as_str(),
        "output": output.join("; "),
    });
    (status, check)
}

pub fn certificate_check(c: &CertificateStatus, now_ms: u64) -> (Status, Value) {
    const DAY_MS: u64 = 86_400_000;
    let mut output = Vec::new();
    let status = match c.not_after_ms {
        None => Status::Fail,
        Some(t) if t < now_ms + CERT_FAIL_DAYS * DAY_MS => Status::Fail,
        Some(t) if t < now_ms + CERT_WARN_DAYS * DAY_MS => Status::Warn,
        Some(_) => Status::Pass,
    };
    if status != Status::Pass {
        output.push(match c.not_after_ms {
            Some(t) if t <= now_ms => "the certificate has expired".to_string(),
            Some(_) => format!(
                "the certificate expires within {} days",
                if status == Status::Fail {
                    CERT_FAIL_DAYS
                } else {
                    CERT_WARN_DAYS
                }
            ),
            None => "no readable certificate".to_string(),
        });
    }
    let mut status = status;
    if let Some(e) = &c.error {
        output.push(if c.failures > 0 {
            format!("ACME failed {} time(s) in a row: {e}", c.failures)
        } else {
            e.clone()
        });
    }
    if c.mode == "acme" && c.self_signed && c.failures > 0 {
        // The stand-in would pass on its expiry for a year while ACME fails.
        status = status.max(Status::Warn);
        output.push(
            "the self-signed stand-in is still serving: no certificate from the CA yet".into(),
        );
    }
    if let Some(e) = &c.served_error {
        status = status.max(Status::Warn);
        output.push(e.clone());
    }
    if let Some(e) = &c.http_error {
        if c.mode == "acme" {
            status = status.max(Status::Warn);
        }
        output.push(e.clone());
    }
    let mut check = json!({
        "componentId": c.path,
        "componentType": "certificate",
        "observedValue": c.not_after_ms.map(|t| (t.saturating_sub(now_ms)) as f64 / DAY_MS as f64),
        "observedUnit": "days",
        "status": status.as_str(),
        "mode": c.mode,
        "names": c.names,
        "issuer": c.issuer,
        "notAfter": c.not_after_ms.map(rfc3339),
        "renewAt": c.renew_at_ms.map(rfc3339),
    });
    if !output.is_empty() {
        check["output"] = json!(output.join("; "));
    }
    (status, check)
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn all_ready(s: &Snapshot) -> bool {
    !s.shutting_down
        && s.services
            .iter()
            .all(|svc| !svc.wanted || matches!(svc.state, State::Ready | State::Exited))
}

#[derive(Clone)]
struct Shared {
    snapshot: watch::Receiver<Snapshot>,
    heartbeat: Arc<AtomicU64>,
}

pub fn router(snapshot: watch::Receiver<Snapshot>, heartbeat: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Shared {
            snapshot,
            heartbeat,
        })
}

async fn health(AxState(sh): AxState<Shared>) -> Response {
    let (status, doc) = health_document(&sh.snapshot.borrow());
    let code = if status == Status::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/health+json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.to_string(),
    )
        .into_response()
}

async fn livez(AxState(sh): AxState<Shared>) -> Response {
    let age = now_ms().saturating_sub(sh.heartbeat.load(Ordering::Relaxed));
    if age < LIVENESS_STALE_MS {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop silent for {age} ms\n"),
        )
            .into_response()
    }
}

async fn readyz(AxState(sh): AxState<Shared>) -> Response {
    let s = sh.snapshot.borrow();
    if all_ready(&s) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let waiting: Vec<_> = s
            .services
            .iter()
            .filter(|svc| svc.wanted && !matches!(svc.state, State::Ready | State::Exited))
            .map(|svc| format!("{}={}", svc.name, svc.state.as_str()))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(" ")),
        )
            .into_response()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    service: String,
    state: String,
}

pub fn render_metrics(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("phoenix_supervisor");
    let state = Family::<StateLabel, Gauge>::default();
    let restarts = Family::<ServiceLabel, Gauge>::default();
    let uptime = Family::<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let now = now_ms();
    for svc in &s.services {
        for st in State::ALL {
            state
                .get_or_create(&StateLabel {
                    service: svc.name.clone(),
                    state: st.as_str().into(),
                })
                .set(i64::from(svc.state == st));
        }
        restarts
            .get_or_create(&ServiceLabel {
                service: svc.name.clone(),
            })
            .set(svc.restarts as i64);
        uptime
            .get_or_create(&ServiceLabel {
                service: svc.name.clone(),
            })
            .set(
                svc.started_at_ms
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
            );
    }
    registry.register("service_state", "1 for the state each service is in", state);
    registry.register(
        "service_restarts",
        "Automatic restarts of each service",
        restarts,
    );
    registry.register(
        "service_uptime_seconds",
        "Seconds since the service's process started",
        uptime,
    );
    if let Some(not_after) = s.certificate.as_ref().and_then(|c| c.not_after_ms) {
        let expiry = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        expiry.set(not_after as f64 / 1000.0);
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the API's TLS certificate expires (Unix seconds)",
            expiry,
        );
    }
    if let Some(c) = &s.certificate {
        let failures = Gauge::<i64>::default();
        failures.set(i64::from(c.failures));
        registry.register(
            "certificate_renewal_failures",
            "ACME attempts failed in a row",
            failures,
        );
    }
    if !s.scaling.is_empty() {
        let level = Family::<TriggerLabel, Gauge>::default();
        let value = Family::<TriggerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let alerts = Family::<TriggerLabel, Counter>::default();
        for t in &s.scaling {
            let label = TriggerLabel {
                trigger: t.trigger.clone(),
            };
            level.get_or_create(&label).set(t.level as i64);
            if let Some(v) = t.value {
                value.get_or_create(&label).set(v);
            }
            alerts.get_or_create(&label).inc_by(t.alerts);
        }
        registry.register(
            "scaling_level",
            "Capacity trigger level: 0 ok, 1 warning, 2 critical",
            level,
        );
        registry.register(
            "scaling_value",
            "The value each capacity trigger last measured, in its unit",
            value,
        );
        registry.register(
            "scaling_alerts",
            "Capacity alerts sent (changes of level and reminders)",
            alerts,
        );
    }
    if let Some(b) = &s.backup {
        register_backup_metrics(&mut registry, b, now);
    }
    let orphans = Gauge::<i64>::default();
    orphans.set(s.orphans_reaped as i64);
    registry.register("orphans_reaped", "Orphaned processes reaped", orphans);
    let (status, _) = health_document(s);
    let health = Gauge::<i64>::default();
    health.set(status as i64);
    registry.register(
        "health_status",
        "Overall health: 0 pass, 1 warn, 2 fail",
        health,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

fn register_backup_metrics(registry: &mut Registry, b: &BackupStatus, now_ms: u64) {
    type F64 = Gauge<f64, std::sync::atomic::AtomicU64>;
    let success = Family::<TypeLabel, F64>::default();
    let duration = Family::<TypeLabel, F64>::default();
    for (kind, run) in &b.last_success {
        let label = TypeLabel {
            r#type: kind.clone(),
        };
        success
            .get_or_create(&label)
            .set((run.started_ms + run.duration_ms) as f64 / 1000.0);
        duration
            .get_or_create(&label)
            .set(run.duration_ms as f64 / 1000.0);
    }
    registry.register(
        "backup_last_success_timestamp_seconds",
        "When the last successful backup of each type ended (Unix seconds), since the supervisor started",
        success,
    );
    registry.register(
        "backup_last_duration_seconds",
        "How long the last successful backup of each type took, its verification included",
        duration,
    );
    if let Some(f) = &b.newest_full {
        let at = F64::default();
        at.set(f.stopped_ms as f64 / 1000.0);
        registry.register(
            "backup_newest_full_timestamp_seconds",
            "When the newest full backup in the repositories ended (Unix seconds)",
            at,
        );
        let verified = Gauge::<i64>::default();
        verified.set(i64::from(
            f.verified.as_deref().is_some_and(|v| v.starts_with("ok")),
        ));
        registry.register(
            "backup_newest_full_verified",
            "1 when the newest full backup passed its test restore",
            verified,
        );
    }
    let failures = Gauge::<i64>::default();
    failures.set(i64::from(b.failures));
    registry.register("backup_failures", "Backups failed in a row", failures);
    if let Some(a) = &b.archiver {
        let failing = F64::default();
        failing.set(
            a.failing_since_ms
                .map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0),
        );
        registry.register(
            "backup_wal_archive_failing_seconds",
            "How long PostgreSQL has failed to archive WAL; 0 while archiving works",
            failing,
        );
    }
    if let Some(o) = &b.offsite {
        register_offsite_metrics(registry, o);
    }
    let skipped = Counter::<u64>::default();
    skipped.inc_by(b.skipped);
    registry.register(
        "backup_skipped",
        "Scheduled backups not started because another was still running",
        skipped,
    );
}

fn register_offsite_metrics(registry: &mut Registry, o: &crate::status::OffsiteStatus) {
    type F64 = Gauge<f64, std::sync::atomic::AtomicU64>;
    if let Some(c) = &o.last_success {
        let at = F64::default();
        at.set(c.at_ms as f64 / 1000.0);
        registry.register(
            "backup_offsite_last_success_timestamp_seconds",
            "When the last copy to S3 (repo2 full and the appliance's state) ended (Unix seconds)",
            at,
        );
    }
    let failures = Gauge::<i64>::default();
    failures.set(i64::from(o.failures));
    registry.register(
        "backup_offsite_failures",
        "Copies to S3 failed in a row",
        failures,
    );
    let total = Counter::<u64>::default();
    total.inc_by(o.failures_total);
    registry.register(
        "backup_offsite_failed_attempts",
        "Failed attempts to copy to S3 since the supervisor started",
        total,
    );
}

/// Whether `/metrics` is served on a connection from `peer` to `local` (the
/// address the client connected to): only from this machine, where
/// Prometheus scrapes it. A loopback peer is local; so is a peer with the
/// very address it connected to (Prometheus scraping a listener bound to
/// one address of the machine), since Linux drops a packet from outside
/// whose source is one of its own addresses and a forged source cannot
/// complete a TCP handshake: only a process of this machine, which could
/// ask over loopback anyway, has it. It names every service, its state and
/// restarts, and the certificate's renewal failures: nothing for strangers
/// on a public port.
pub fn metrics_allowed(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || (!peer.is_unspecified() && peer == local.to_canonical())
}

async fn metrics(AxState(sh): AxState<Shared>, ConnectInfo(ends): ConnectInfo<Ends>) -> Response {
    if !metrics_allowed(ends.peer.ip(), ends.local.ip()) {
        tracing::debug!(peer = %ends.peer, "refused /metrics to a client of another machine");
        return (
            StatusCode::FORBIDDEN,
            "/metrics is served to this machine only (Prometheus scrapes it over loopback); \
             /health, /livez and /readyz answer everyone\n",
        )
            .into_response();
    }
    let body = render_metrics(&sh.snapshot.borrow());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ServiceStatus;

    fn svc(name: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            pid: Some(42),
            restarts: 3,
            oneshot: false,
            wanted: true,
            started_at_ms: Some(now_ms() - 5_000),
            since_ms: now_ms(),
            last_exit: None,
            last_error: None,
            depends_on: vec![],
            retry_at_ms: None,
        }
    }

    fn snap(services: Vec<ServiceStatus>) -> Snapshot {
        Snapshot {
            version: "1.2.3".into(),
            started_at_ms: 0,
            pid1: false,
            config_file: "x".into(),
            limits_unavailable: None,
            shutting_down: false,
            orphans_reaped: 0,
            resource_shortage: None,
            services,
            certificate: None,
            scaling: Vec::new(),
            backup: None,
            external_database: None,
        }
    }

    #[test]
    fn an_external_database_is_checked_and_noted() {
        let mut s = snap(vec![svc("api", State::Ready)]);
        s.external_database = Some(crate::status::ExternalDatabaseStatus {
            address: "db.example:5432".into(),
            tls: true,
            checked_ms: 1,
            latency_ms: Some(7),
            error: None,
        });
        let (status, doc) = health_document(&s);
        assert_eq!(status, Status::Pass);
        let check = &doc["checks"]["postgres:external"][0];
        assert_eq!(check["status"], "pass");
        assert_eq!(check["observedValue"], 7);
        let notes = doc["notes"][0].as_str().unwrap();
        assert!(
            notes.contains("db.example:5432, TLS verify-full"),
            "{notes}"
        );
        s.external_database.as_mut().unwrap().error = Some("cannot connect".into());
        let (status, doc) = health_document(&s);
        assert_eq!(status, Status::Fail, "the API cannot work without it");
        assert_eq!(
            doc["checks"]["postgres:external"][0]["output"],
            "cannot connect"
        );
    }

    #[test]
    fn certificate_expiry_warns_at_14_days_and_fails_at_3() {
        const DAY: u64 = 86_400_000;
        let now = 1_000 * DAY;
        let cert = |days_left: f64| CertificateStatus {
            mode: "acme".into(),
            path: "/var/lib/phoenix/tls/cert.pem".into(),
            not_after_ms: Some((now as f64 + days_left * DAY as f64) as u64),
            ..Default::default()
        };
        let status = |c: &CertificateStatus| certificate_check(c, now).0;
        assert_eq!(status(&cert(60.0)), Status::Pass);
        assert_eq!(status(&cert(14.1)), Status::Pass);
        assert_eq!(status(&cert(13.9)), Status::Warn);
        assert_eq!(status(&cert(3.1)), Status::Warn);
        assert_eq!(status(&cert(2.9)), Status::Fail);
        let (_, check) = certificate_check(&cert(-1.0), now);
        assert_eq!(check["status"], "fail");
        assert_eq!(check["output"], "the certificate has expired");
        assert_eq!(status(&CertificateStatus::default()), Status::Fail);

        // A failing renewal shows, and counts only once the expiry nears.
        let failing = CertificateStatus {
            error: Some("connection refused".into()),
            failures: 2,
            ..cert(50.0)
        };
        let (st, check) = certificate_check(&failing, now);
        assert_eq!(st, Status::Pass);
        assert_eq!(
            check["output"],
            "ACME failed 2 time(s) in a row: connection refused"
        );
        // No port 80, no HTTP-01: a warning in ACME mode only.
        let no_http = CertificateStatus {
            http_error: Some("cannot listen on 0.0.0.0:80".into()),
            ..cert(50.0)
        };
        assert_eq!(status(&no_http), Status::Warn);
        let self_signed = CertificateStatus {
            mode: "self-signed".into(),
            ..no_http
        };
        assert_eq!(status(&self_signed), Status::Pass);

        // ACME failing behind the self-signed stand-in is a warning.
        let stand_in = CertificateStatus {
            self_signed: true,
            failures: 1,
            error: Some("connection refused".into()),
            ..cert(397.0)
        };
        let (st, check) = certificate_check(&stand_in, now);
        assert_eq!(st, Status::Warn);
        assert!(check["output"].as_str().unwrap().contains("stand-in"));

        // In the health document, the worst check decides.
        let mut s = snap(vec![svc("a", State::Ready)]);
        s.certificate = Some(cert(2.0));
        let (overall, doc) = health_document(&s);
        assert_eq!(overall, Status::Fail);
        assert_eq!(doc["checks"]["tls:certificate"][0]["status"], "fail");
    }

    #[test]
    fn worst_service_decides_overall_status() {
        let (s, doc) =
            health_document(&snap(vec![svc("a", State::Ready), svc("b", State::Exited)]));
        assert_eq!(s, Status::Pass);
        assert_eq!(doc["status"], "pass");
        assert_eq!(doc["checks"]["a:state"][0]["restarts"], 3);
        assert!(
            doc["checks"]["a:state"][0]["uptimeSeconds"]
                .as_u64()
                .unwrap()
                >= 4
        );
        assert_eq!(
            health_document(&snap(vec![
                svc("a", State::Ready),
                svc("b", State::Backoff)
            ]))
            .0,
            Status::Warn
        );
        assert_eq!(
            health_document(&snap(vec![
                svc("a", State::Failed),
                svc("b", State::Backoff)
            ]))
            .0,
            Status::Fail
        );
    }

    #[test]
    fn metrics_are_served_to_this_machine_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let public = ip("203.0.113.7");
        assert!(metrics_allowed(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(metrics_allowed(ip("127.0.0.53"), public));
        assert!(metrics_allowed(ip("::1"), ip("::1")));
        assert!(metrics_allowed(ip("::ffff:127.0.0.1"), ip("::")));
        // Prometheus scraping the address the listener is bound to.
        assert!(metrics_allowed(public, public));
        assert!(metrics_allowed(ip("::ffff:203.0.113.7"), public));
        assert!(!metrics_allowed(ip("198.51.100.1"), public));
        assert!(!metrics_allowed(ip("10.0.0.2"), ip("10.0.0.1")));
        assert!(!metrics_allowed(ip("2001:db8::2"), ip("2001:db8::1")));
        assert!(!metrics_allowed(ip("0.0.0.0"), ip("0.0.0.0")));
    }

    /// The real router, asked as each kind of client: `/metrics` is refused
    /// to another machine, and `/health`, `/livez` and `/readyz` are not.
    #[tokio::test]
    async fn metrics_route_refuses_other_machines_and_health_answers_everyone() {
        use tower::ServiceExt as _;
        let (_tx, snapshot) = watch::channel(snap(vec![svc("api", State::Ready)]));
        let app = router(snapshot, Arc::new(AtomicU64::new(now_ms())));
        let get = |path: &str, peer: &str| {
            let mut request = axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            request.extensions_mut().insert(ConnectInfo(Ends {
                peer: peer.parse().unwrap(),
                local: "192.0.2.10:8081".parse().unwrap(),
            }));
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let code = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (code, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (code, body) = get("/metrics", "198.51.100.1:40000").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(!body.contains("phoenix_supervisor"), "{body}");
        let (code, body) = get("/metrics", "127.0.0.1:40000").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("phoenix_supervisor_service_state"), "{body}");
        let (code, _) = get("/metrics", "192.0.2.10:40000").await;
        assert_eq!(code, StatusCode::OK, "from the machine's own address");
        for path in ["/health", "/livez", "/readyz"] {
            let (code, body) = get(path, "198.51.100.1:40000").await;
            assert_eq!(code, StatusCode::OK, "{path}: {body}");
        }
    }

    #[test]
    fn metrics_expose_state_and_restarts() {
        let text = render_metrics(&snap(vec![svc("api", State::Ready)]));
        assert!(
            text.contains(r#"phoenix_supervisor_service_state{service="api",state="ready"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"phoenix_supervisor_service_state{service="api",state="failed"} 0"#)
        );
        assert!(text.contains(r#"phoenix_supervisor_service_restarts{service="api"} 3"#));
        assert!(text.contains("phoenix_supervisor_health_status 0"));
    }

    #[test]
    fn offsite_warns_on_a_failed_copy_and_on_a_local_full_not_yet_in_s3() {
        use crate::status::{NewestFull, OffsiteCopy, OffsiteStatus};
        let local = NewestFull {
            label: "L2".into(),
            stopped_ms: 2_000,
            verified: None,
        };
        let copied = OffsiteStatus {
            target: "s3://b/phoenix".into(),
            last_success: Some(OffsiteCopy {
                local: "L2".into(),
                remote: "R2".into(),
                at_ms: 3_000,
                state_objects: Some(8),
            }),
            ..OffsiteStatus::default()
        };
        assert_eq!(offsite_check(&copied, Some(&local)).0, Status::Pass);
        let newer = NewestFull {
            stopped_ms: 4_000,
            ..local.clone()
        };
        let (status, check) = offsite_check(&copied, Some(&newer));
        assert_eq!(status, Status::Warn);
        assert!(
            check["output"].as_str().unwrap().contains("not in S3 yet"),
            "{check}"
        );
        let copying = OffsiteStatus {
            running_since_ms: Some(4_500),
            pending: Some("L3".into()),
            ..copied.clone()
        };
        assert_eq!(offsite_check(&copying, Some(&newer)).0, Status::Pass);
        let failed = OffsiteStatus {
            last_error: Some("connection refused".into()),
            failures: 2,
            retry_at_ms: Some(60_000),
            ..copied
        };
        let (status, check) = offsite_check(&failed, Some(&local));
        assert_eq!(status, Status::Warn);
        assert!(
            check["output"]
                .as_str()
                .unwrap()
                .contains("failed (2 in a row): connection refused"),
            "{check}"
        );
        let fresh = OffsiteStatus::default();
        assert_eq!(offsite_check(&fresh, None).0, Status::Pass);
    }

    #[test]
    fn backup_age_warns_past_26_hours_and_fails_past_50_and_a_failed_verification_warns() {
        use crate::status::{BackupStatus, NewestFull};
        const H: u64 = 3_600_000;
        let now = 1_000 * H;
        let fresh = BackupStatus {
            since_ms: now - 100 * H,
            newest_full: Some(NewestFull {
                label: "20261201-020000F".into(),
                stopped_ms: now - 25 * H,
                verified: Some("ok at 2026-12-01T02:03:00Z: users 1".into()),
            }),
            ..BackupStatus::default()
        };
        let checks = backup_checks(&fresh, now);
        let by_name = |c: &[(&str, Status, Value)], n: &str| {
            c.iter()
                .find(|(name, ..)| *name == n)
                .map(|(_, s, v)| (*s, v.clone()))
                .unwrap()
        };
        assert_eq!(by_name(&checks, "backup:age").0, Status::Pass);
        assert_eq!(by_name(&checks, "backup:verified").0, Status::Pass);
        let mut late = fresh.clone();
        late.newest_full.as_mut().unwrap().stopped_ms = now - 27 * H;
        let (status, check) = by_name(&backup_checks(&late, now), "backup:age");
        assert_eq!(
            (status, check["observedValue"].as_f64()),
            (Status::Warn, Some(27.0))
        );
        late.newest_full.as_mut().unwrap().stopped_ms = now - 51 * H;
        assert_eq!(
            by_name(&backup_checks(&late, now), "backup:age").0,
            Status::Fail
        );
        late.newest_full.as_mut().unwrap().verified =
            Some("failed at …: the restored database does not answer".into());
        assert_eq!(
            by_name(&backup_checks(&late, now), "backup:verified").0,
            Status::Warn
        );
        // None yet: measured from the task's start, and no verification check.
        let first = BackupStatus {
            since_ms: now - 2 * H,
            ..BackupStatus::default()
        };
        let checks = backup_checks(&first, now);
        assert_eq!(checks.len(), 1);
        let (status, check) = by_name(&checks, "backup:age");
        assert_eq!(status, Status::Pass);
        assert!(
            check["output"]
                .as_str()
                .unwrap()
                .starts_with("no full backup yet"),
            "{check}"
        );
        let stale = BackupStatus {
            since_ms: now - 60 * H,
            ..BackupStatus::default()
        };
        assert_eq!(
            by_name(&backup_checks(&stale, now), "backup:age").0,
            Status::Fail
        );
    }

    #[test]
    fn wal_archiving_failing_warns_then_fails_after_five_minutes() {
        use crate::status::{ArchiverStatus, BackupStatus};
        let now = 10_000_000;
        let mut b = BackupStatus {
            since_ms: now,
            archiver: Some(ArchiverStatus {
                checked_ms: now,
                archived_count: 4,
                ..ArchiverStatus::default()
            }),
            ..BackupStatus::default()
        };
        let status = |b: &BackupStatus| {
            backup_checks(b, now)
                .into_iter()
                .find(|(n, ..)| *n == "backup:walArchive")
                .map(|(_, s, _)| s)
        };
        assert_eq!(status(&b), Some(Status::Pass));
        b.archiver.as_mut().unwrap().failing_since_ms = Some(now - 60_000);
        assert_eq!(status(&b), Some(Status::Warn));
        b.archiver.as_mut().unwrap().failing_since_ms = Some(now - 5 * 60_000);
        assert_eq!(status(&b), Some(Status::Fail));
    }
}
