//! The alert rules the managed Prometheus evaluates, generated from the
//! TOML file (`rules.yml` beside `prometheus.yml`): services down or
//! parked, Prometheus unable to scrape, the capacity thresholds of
//! `[scaling]`, the certificate, agents offline, the API's errors, and
//! backups and WAL archiving when `[backup]` is on.
//!
//! Every rule carries a `severity` label (`warning` or `critical`) and two
//! annotations: `summary`, what is wrong (with the value), and `action`,
//! the step to take, in the words of docs/operations.md. The rules are a
//! pure function of the settings; `phoenix-supervisor alert-rules` prints
//! them, and the test suite runs `promtool check rules` and
//! `promtool test rules` on them.

use std::fmt::Write as _;
use std::time::Duration;

use super::context::yaml_str;
use crate::config::spec::ScalingSettings;
use crate::health::{ARCHIVE_FAIL_MINUTES, BACKUP_FAIL_HOURS, BACKUP_WARN_HOURS};
use crate::health::{CERT_FAIL_DAYS, CERT_WARN_DAYS};
use crate::status::Level;

/// What the rules depend on.
#[derive(Debug, Clone)]
pub struct AlertInputs<'a> {
    /// How long a condition holds before its alert fires (`[alerts] pending`).
    pub pending: Duration,
    /// The capacity triggers; none when `[scaling] enable = false`.
    pub scaling: Option<&'a ScalingSettings>,
    /// Whether the API runs here (agents, API errors).
    pub api: bool,
    /// Whether backups are on, and with an offsite copy.
    pub backup: bool,
    pub offsite: bool,
}

/// One alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub alert: &'static str,
    pub expr: String,
    pub for_: Duration,
    /// Labels besides `severity`.
    pub labels: Vec<(&'static str, String)>,
    pub severity: Severity,
    pub summary: String,
    pub action: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

fn rule(
    alert: &'static str,
    severity: Severity,
    for_: Duration,
    expr: impl Into<String>,
    summary: impl Into<String>,
    action: impl Into<String>,
) -> Rule {
    Rule {
        alert,
        expr: expr.into(),
        for_,
        labels: Vec::new(),
        severity,
        summary: summary.into(),
        action: action.into(),
    }
}

/// The rule groups, in order: `(group name, rules)`.
pub fn rules(inputs: &AlertInputs<'_>) -> Vec<(&'static str, Vec<Rule>)> {
    use Severity::*;
    let pending = inputs.pending;
    let mut groups = Vec::new();

    // A one-shot service (postgres-init, ...) is done when it has exited.
    let services = vec![
        rule(
            "PhoenixServiceDown",
            Critical,
            pending,
            "phoenix_supervisor_service_state{state=\"ready\"} == 0 \
             unless on (service) phoenix_supervisor_service_state{state=\"exited\"} == 1",
            "{{ $labels.service }} is not running (not ready)",
            "`phoenixctl status` shows its state: `stopped`: `phoenixctl start {{ $labels.service }}`; \
             `backoff`: wait one backoff, `output` has the last error; `failed`: see \
             PhoenixServiceParked; its log is /var/log/phoenix/{{ $labels.service }}.log",
        ),
        rule(
            "PhoenixServiceParked",
            Critical,
            Duration::ZERO,
            "phoenix_supervisor_service_state{state=\"failed\"} == 1",
            "{{ $labels.service }} failed too often and is parked; it is started again \
             after the cool-down",
            "read /var/log/phoenix/{{ $labels.service }}.log (the last lines are the reason), \
             fix, then `phoenixctl start {{ $labels.service }}` (starts it at once and resets \
             the limit)",
        ),
        rule(
            "PhoenixServiceRestarting",
            Warning,
            Duration::ZERO,
            "increase(phoenix_supervisor_service_restarts[15m]) >= 3",
            "{{ $labels.service }} restarted {{ $value | humanize }} times in 15 minutes",
            "read /var/log/phoenix/{{ $labels.service }}.log for why it stops; \
             `phoenixctl status` shows its last exit",
        ),
        rule(
            "PhoenixScrapeFailing",
            Warning,
            pending,
            "up == 0",
            "Prometheus cannot scrape {{ $labels.job }} at {{ $labels.instance }}",
            "`phoenixctl status` shows whether the service runs; if it does, its log says \
             why /metrics does not answer",
        ),
    ];
    groups.push(("phoenix-services", services));

    if let Some(scaling) = inputs.scaling.filter(|s| s.enable) {
        let mut capacity = Vec::new();
        for t in &scaling.triggers {
            for (severity, level, threshold) in [
                (Warning, Level::Warning, t.warning),
                (Critical, Level::Critical, t.critical),
            ] {
                let mut r = rule(
                    "PhoenixCapacity",
                    severity,
                    t.sustain,
                    format!(
                        "phoenix_supervisor_scaling_value{{trigger=\"{}\"}} >= {}",
                        t.kind.name(),
                        number(threshold)
                    ),
                    format!(
                        "capacity trigger {}: {{{{ $value | humanize }}}} {}, at or above its {} \
                         threshold of {} {} for {}",
                        t.kind.name(),
                        t.kind.unit(),
                        severity.as_str(),
                        number(threshold),
                        t.kind.unit(),
                        humantime::format_duration(t.sustain)
                    ),
                    t.recommendation(level),
                );
                r.labels.push(("trigger", t.kind.name().to_owned()));
                capacity.push(r);
            }
        }
        groups.push(("phoenix-capacity", capacity));
    }

    let expiry = "phoenix_supervisor_certificate_expiry_timestamp_seconds - time()";
    let certificate_action = "an ACME certificate: check the DNS record of every name in \
                              [tls] hostnames and that port 80 is open to the CA, then \
                              `phoenixctl certs renew`; certificate files: put the new \
                              certificate and key in place";
    groups.push((
        "phoenix-certificate",
        vec![
            rule(
                "PhoenixCertificateExpiring",
                Warning,
                Duration::ZERO,
                format!("{expiry} < {}", CERT_WARN_DAYS * 86_400),
                "the TLS certificate expires in {{ $value | humanizeDuration }}",
                certificate_action,
            ),
            rule(
                "PhoenixCertificateExpiring",
                Critical,
                Duration::ZERO,
                format!("{expiry} < {}", CERT_FAIL_DAYS * 86_400),
                "the TLS certificate expires in {{ $value | humanizeDuration }}",
                certificate_action,
            ),
            rule(
                "PhoenixCertificateRenewalFailing",
                Warning,
                Duration::ZERO,
                "phoenix_supervisor_certificate_renewal_failures > 0",
                "{{ $value }} certificate renewals failed in a row",
                "the supervisor's log says why; `phoenixctl certs` shows the certificate, \
                 `phoenixctl certs renew` tries at once",
            ),
        ],
    ));

    if inputs.api {
        let requests = "phoenix_api_http_request_duration_seconds_count";
        groups.push((
            "phoenix-api",
            vec![
                rule(
                    "PhoenixAgentOffline",
                    Warning,
                    pending.max(Duration::from_secs(300)),
                    "phoenix_api_agents_offline > 0",
                    "{{ $value }} agents have not been seen for more than 45 seconds",
                    "`GET /api/v1/agents?status=offline` lists them; on each host \
                     `phoenix-agent status` and `journalctl -u phoenix-agent` say why; revoke \
                     an agent whose host is gone for good (`DELETE /api/v1/agents/<id>`)",
                ),
                rule(
                    "PhoenixApiErrors",
                    Warning,
                    pending,
                    format!(
                        "sum(rate({requests}{{status=~\"5..\"}}[5m])) \
                         / sum(rate({requests}[5m])) > 0.05"
                    ),
                    "{{ $value | humanizePercentage }} of API requests failed with 5xx \
                     over 5 minutes",
                    "the API's log (/var/log/phoenix/api.log) has the reference of each 500; \
                     502 on writes means Prometheus is down or failing (`phoenixctl status`, \
                     its log); 503 means the database is away, or on writes \
                     (`remote_write_busy`) that Prometheus is far behind: the capacity checks \
                     (`phoenixctl health`) say what to grow",
                ),
                rule(
                    "PhoenixApiDatabaseDown",
                    Critical,
                    pending,
                    "phoenix_api_database_up == 0",
                    "the API cannot reach its database",
                    "`phoenixctl status postgres`; `tail /var/log/phoenix/postgres.log`; a full \
                     disk stops PostgreSQL: grow the volume",
                ),
            ],
        ));
    }

    if inputs.backup {
        let age = "time() - phoenix_supervisor_backup_newest_full_timestamp_seconds";
        let stale_action = "`phoenixctl health` shows the last runs and their errors, \
                            `phoenixctl backup list` what the repositories hold; take one \
                            with `phoenixctl backup now`";
        let mut backups = vec![
            rule(
                "PhoenixBackupStale",
                Warning,
                Duration::ZERO,
                format!("{age} > {}", BACKUP_WARN_HOURS * 3600),
                "the newest full backup is {{ $value | humanizeDuration }} old",
                stale_action,
            ),
            rule(
                "PhoenixBackupStale",
                Critical,
                Duration::ZERO,
                format!("{age} > {}", BACKUP_FAIL_HOURS * 3600),
                "the newest full backup is {{ $value | humanizeDuration }} old",
                stale_action,
            ),
            rule(
                "PhoenixBackupFailing",
                Warning,
                Duration::ZERO,
                "phoenix_supervisor_backup_failures >= 2",
                "{{ $value }} backups failed in a row",
                stale_action,
            ),
            rule(
                "PhoenixWalArchiveFailing",
                Warning,
                Duration::ZERO,
                "phoenix_supervisor_backup_wal_archive_failing_seconds > 0",
                "PostgreSQL has failed to archive WAL for {{ $value | humanizeDuration }}",
                "pgBackRest's error is in PostgreSQL's log (/var/log/phoenix/postgres.log); \
                 WAL piles up in pg_wal until it is archived, and what is not archived is \
                 lost with the machine",
            ),
            rule(
                "PhoenixWalArchiveFailing",
                Critical,
                Duration::ZERO,
                format!(
                    "phoenix_supervisor_backup_wal_archive_failing_seconds >= {}",
                    ARCHIVE_FAIL_MINUTES * 60
                ),
                "PostgreSQL has failed to archive WAL for {{ $value | humanizeDuration }}",
                "pgBackRest's error is in PostgreSQL's log (/var/log/phoenix/postgres.log); \
                 WAL piles up in pg_wal until it is archived, and what is not archived is \
                 lost with the machine",
            ),
        ];
        if inputs.offsite {
            backups.push(rule(
                "PhoenixOffsiteCopyFailing",
                Warning,
                Duration::ZERO,
                "phoenix_supervisor_backup_offsite_failures > 0",
                "{{ $value }} copies to S3 failed in a row",
                "`phoenixctl health` shows the error and the next try; check the bucket, \
                 the credentials and the network to S3",
            ));
        }
        groups.push(("phoenix-backups", backups));
    }
    groups
}

/// The rules as a Prometheus rule file.
pub fn rules_yml(inputs: &AlertInputs<'_>) -> String {
    let q = yaml_str;
    let mut y = String::from(
        "# Generated by phoenix-supervisor from phoenix.toml; edits here are overwritten.\ngroups:\n",
    );
    for (group, rules) in rules(inputs) {
        let _ = writeln!(y, "  - name: {}\n    rules:", q(group));
        for r in rules {
            let _ = writeln!(y, "      - alert: {}", r.alert);
            let _ = writeln!(y, "        expr: {}", q(&r.expr));
            if !r.for_.is_zero() {
                let _ = writeln!(y, "        for: {}s", r.for_.as_secs().max(1));
            }
            let _ = writeln!(
                y,
                "        labels:\n          severity: {}",
                r.severity.as_str()
            );
            for (name, value) in &r.labels {
                let _ = writeln!(y, "          {name}: {}", q(value));
            }
            let _ = writeln!(
                y,
                "        annotations:\n          summary: {}\n          action: {}",
                q(&r.summary),
                q(&r.action)
            );
        }
    }
    y
}

/// A threshold as PromQL reads it: no exponent, no trailing `.0`.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::{TriggerKind, TriggerSettings};

    fn scaling() -> ScalingSettings {
        ScalingSettings {
            enable: true,
            interval: Duration::from_secs(60),
            repeat: Duration::from_secs(3600),
            hysteresis: 0.1,
            webhook: None,
            triggers: vec![TriggerSettings {
                kind: TriggerKind::Cpu,
                warning: 70.5,
                critical: 85.0,
                sustain: Duration::from_secs(300),
            }],
            state_file: "/tmp/x".into(),
            prometheus: None,
            disk_path: "/tmp".into(),
        }
    }

    #[test]
    fn capacity_rules_carry_the_tomls_thresholds_and_sustain() {
        let s = scaling();
        let groups = rules(&AlertInputs {
            pending: Duration::from_secs(120),
            scaling: Some(&s),
            api: true,
            backup: false,
            offsite: false,
        });
        let capacity = &groups
            .iter()
            .find(|(g, _)| *g == "phoenix-capacity")
            .unwrap()
            .1;
        let exprs: Vec<(&str, &str, Duration)> = capacity
            .iter()
            .map(|r| (r.expr.as_str(), r.severity.as_str(), r.for_))
            .collect();
        assert_eq!(
            exprs,
            [
                (
                    "phoenix_supervisor_scaling_value{trigger=\"cpu\"} >= 70.5",
                    "warning",
                    Duration::from_secs(300)
                ),
                (
                    "phoenix_supervisor_scaling_value{trigger=\"cpu\"} >= 85",
                    "critical",
                    Duration::from_secs(300)
                ),
            ]
        );
        assert!(capacity[1].action.contains("larger instance type now"));
        assert!(!groups.iter().any(|(g, _)| *g == "phoenix-backups"));
    }

    #[test]
    fn no_scaling_and_no_api_leave_their_groups_out() {
        let groups = rules(&AlertInputs {
            pending: Duration::from_secs(120),
            scaling: None,
            api: false,
            backup: true,
            offsite: true,
        });
        let names: Vec<&str> = groups.iter().map(|(g, _)| *g).collect();
        assert_eq!(
            names,
            ["phoenix-services", "phoenix-certificate", "phoenix-backups"]
        );
        let backups = &groups[2].1;
        assert!(
            backups
                .iter()
                .any(|r| r.alert == "PhoenixOffsiteCopyFailing")
        );
    }

    #[test]
    fn texts_are_quoted_so_that_yaml_reads_them_back() {
        let yml = rules_yml(&AlertInputs {
            pending: Duration::from_secs(120),
            scaling: None,
            api: true,
            backup: false,
            offsite: false,
        });
        assert!(yml.contains(
            "        expr: \"phoenix_supervisor_service_state{state=\\\"failed\\\"} == 1\"\n"
        ));
        assert!(yml.contains("        for: 120s\n"));
        assert_eq!(number(1_000_000.0), "1000000");
        assert_eq!(number(0.5), "0.5");
    }
}
