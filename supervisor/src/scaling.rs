//! Capacity ("scaling") checks. Every `[scaling] interval` the supervisor
//! samples CPU, memory and disk (sysinfo, statvfs) and, from the managed
//! Prometheus, the API's p95 latency, the connected agents, the ingest rate
//! and the database size; each trigger moves between ok, warning and
//! critical only after its value stayed past a threshold for `sustain`, and
//! falls back only below the threshold less the hysteresis. Only a change of
//! level alerts (log, `/metrics`, optional webhook), repeated every
//! `[scaling] repeat` while raised. Levels survive restarts in
//! `state_dir/scaling-state.json`, so a restart neither forgets a raised
//! trigger nor alerts again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::{ScalingSettings, TriggerKind, TriggerSettings};
use crate::fsafe::write_atomic;
use crate::status::{Level, ScalingStatus, now_ms};

/// A value measured, `Ok(None)` when there is nothing to measure yet (no
/// API requests in the window), or why it could not be measured.
pub type Sample = Result<Option<f64>, String>;

pub trait Sampler {
    fn sample(&mut self) -> impl Future<Output = BTreeMap<TriggerKind, Sample>> + Send;
}

/// A trigger's level and what leads to the next, as persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    pub level: Level,
    pub since_ms: u64,
    /// Since when the value has pointed up (`true`) or down from `level`.
    pub pending: Option<(bool, u64)>,
    pub last_alert_ms: Option<u64>,
}

/// A change of level (or a reminder of one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub trigger: TriggerKind,
    pub from: Level,
    pub to: Level,
    pub value: f64,
    pub unit: &'static str,
    pub warning: f64,
    pub critical: f64,
    /// A reminder that the level still holds, not a change.
    pub repeated: bool,
    pub recommendation: String,
    pub at_ms: u64,
}

pub struct Trigger {
    pub settings: TriggerSettings,
    hysteresis: f64,
    repeat: Duration,
    pub state: TriggerState,
}

impl Trigger {
    pub fn new(settings: TriggerSettings, hysteresis: f64, repeat: Duration) -> Self {
        Trigger {
            settings,
            hysteresis,
            repeat,
            state: TriggerState::default(),
        }
    }

    /// The level `value` points to from the current one: up at a
    /// threshold, down only below a threshold less the hysteresis.
    pub fn target(&self, value: f64) -> Level {
        let s = &self.settings;
        let raw = if value >= s.critical {
            Level::Critical
        } else if value >= s.warning {
            Level::Warning
        } else {
            Level::Ok
        };
        if raw >= self.state.level {
            return raw;
        }
        let keep = 1.0 - self.hysteresis;
        match self.state.level {
            Level::Critical if value >= s.critical * keep => Level::Critical,
            Level::Critical | Level::Warning if value >= s.warning * keep => Level::Warning,
            _ => Level::Ok,
        }
    }

    /// Takes one sample at `now_ms`; an alert when the level changed after
    /// `sustain`, or a reminder when `repeat` has passed at a raised level.
    /// Without a value nothing moves.
    pub fn observe(&mut self, now_ms: u64, value: Option<f64>) -> Option<Alert> {
        let value = value.filter(|v| v.is_finite())?;
        let target = self.target(value);
        let st = &mut self.state;
        if target == st.level {
            st.pending = None;
            let due = st
                .last_alert_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= self.repeat.as_millis() as u64);
            if st.level == Level::Ok || !due {
                return None;
            }
            st.last_alert_ms = Some(now_ms);
            let level = st.level;
            return Some(self.alert(level, value, true, now_ms));
        }
        let up = target > st.level;
        let since = match st.pending {
            Some((was_up, since)) if was_up == up => since,
            _ => {
                st.pending = Some((up, now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) < self.settings.sustain.as_millis() as u64 {
            return None;
        }
        let from = st.level;
        *st = TriggerState {
            level: target,
            since_ms: now_ms,
            pending: None,
            last_alert_ms: Some(now_ms),
        };
        Some(self.alert(from, value, false, now_ms))
    }

    fn alert(&self, from: Level, value: f64, repeated: bool, at_ms: u64) -> Alert {
        let s = &self.settings;
        Alert {
            trigger: s.kind,
            from,
            to: self.state.level,
            value,
            unit: s.kind.unit(),
            warning: s.warning,
            critical: s.critical,
            repeated,
            recommendation: s.recommendation(self.state.level),
            at_ms,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    triggers: BTreeMap<TriggerKind, TriggerState>,
}

fn load(path: &Path) -> BTreeMap<TriggerKind, TriggerState> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
            Ok(p) => p.triggers,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable scaling state: starting from ok");
                BTreeMap::new()
            }
        },
        Err(_) => BTreeMap::new(),
    }
}

fn save(path: &Path, triggers: &[Trigger]) -> anyhow::Result<()> {
    let p = Persisted {
        triggers: triggers
            .iter()
            .map(|t| (t.settings.kind, t.state))
            .collect(),
    };
    write_atomic(path, &serde_json::to_vec_pretty(&p)?, 0o644, None)
        .with_context(|| format!("writing {}", path.display()))
}

/// Samples and evaluates every interval until the process ends.
/// `report` is called with the triggers' statuses after each round.
pub async fn run<S: Sampler>(
    settings: ScalingSettings,
    mut sampler: S,
    report: impl Fn(Vec<ScalingStatus>),
) {
    let saved = load(&settings.state_file);
    let mut triggers: Vec<Trigger> = settings
        .triggers
        .iter()
        .map(|t| {
            let mut trigger = Trigger::new(*t, settings.hysteresis, settings.repeat);
            if let Some(state) = saved.get(&t.kind) {
                trigger.state = *state;
            }
            trigger
        })
        .collect();
    let mut alerts: BTreeMap<TriggerKind, u64> = BTreeMap::new();
    // Wall-clock time that advances with tokio's clock (virtual in tests).
    let (wall, start) = (now_ms(), tokio::time::Instant::now());
    let now = || wall + start.elapsed().as_millis() as u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    // The first sample waits a little, for the servers measured through
    // Prometheus to come up.
    let first = settings.interval.min(Duration::from_secs(10));
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + first, settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persisted: Vec<TriggerState> = triggers.iter().map(|t| t.state).collect();
    loop {
        ticker.tick().await;
        let samples = sampler.sample().await;
        let at = now();
        let mut statuses = Vec::with_capacity(triggers.len());
        for t in &mut triggers {
            let kind = t.settings.kind;
            let sample = samples
                .get(&kind)
                .cloned()
                .unwrap_or(Err("not measured".into()));
            let value = sample.clone().ok().flatten();
            if let Some(alert) = t.observe(at, value) {
                *alerts.entry(kind).or_default() += 1;
                announce(&alert, settings.webhook.as_deref(), &client);
            }
            statuses.push(ScalingStatus {
                trigger: kind.name().into(),
                level: t.state.level,
                value,
                unit: kind.unit().into(),
                warning: t.settings.warning,
                critical: t.settings.critical,
                since_ms: t.state.since_ms,
                error: sample.err(),
                recommendation: (t.state.level != Level::Ok)
                    .then(|| t.settings.recommendation(t.state.level)),
                alerts: alerts.get(&kind).copied().unwrap_or(0),
                last_alert_ms: t.state.last_alert_ms,
            });
        }
        let states: Vec<TriggerState> = triggers.iter().map(|t| t.state).collect();
        if states != persisted {
            match save(&settings.state_file, &triggers) {
                Ok(()) => persisted = states,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "could not save the scaling state")
                }
            }
        }
        report(statuses);
    }
}

/// The log line, and the webhook in the background (three tries).
fn announce(alert: &Alert, webhook: Option<&str>, client: &reqwest::Client) {
    let name = alert.trigger.name();
    let text = format!(
        "{name} {} → {} at {:.1} {} (warning {}, critical {}): {}",
        alert.from.as_str(),
        alert.to.as_str(),
        alert.value,
        alert.unit,
        alert.warning,
        alert.critical,
        alert.recommendation
    );
    match (alert.to, alert.repeated) {
        (Level::Ok, _) => tracing::info!(trigger = name, "capacity back to normal: {text}"),
        (_, true) => tracing::warn!(trigger = name, "capacity still raised: {text}"),
        (Level::Warning, false) => tracing::warn!(trigger = name, "capacity warning: {text}"),
        (Level::Critical, false) => tracing::error!(trigger = name, "capacity critical: {text}"),
    }
    let Some(url) = webhook else {
        return;
    };
    let request = client.post(url).json(alert);
    let url = url.to_string();
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=3 {
            let Some(request) = request.try_clone() else {
                return;
            };
            match request.send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(%url, status = %r.status(), attempt, "scaling webhook refused the alert")
                }
                Err(e) => tracing::warn!(%url, error = %e, attempt, "scaling webhook unreachable"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    });
}

/// The real measurements.
pub struct SystemSampler {
    system: sysinfo::System,
    disk_path: std::path::PathBuf,
    prometheus: Option<String>,
    client: reqwest::Client,
}

/// PromQL for the figures that come from Prometheus. Long polls of agents
/// (`GET /api/v1/agent/tasks`, waiting up to 25 s by design) are not
/// latency.
const QUERIES: [(TriggerKind, &str); 4] = [
    (
        TriggerKind::ApiLatency,
        "1000 * histogram_quantile(0.95, sum by (le) (rate(phoenix_api_http_request_duration_seconds_bucket{route!=\"/api/v1/agent/tasks\"}[5m])))",
    ),
    (TriggerKind::Agents, "max(phoenix_api_agents_connected)"),
    (
        TriggerKind::Metrics,
        "sum(rate(prometheus_tsdb_head_samples_appended_total[5m]))",
    ),
    (
        TriggerKind::DbSize,
        "max(phoenix_api_database_size_bytes) / 1e9",
    ),
];

impl SystemSampler {
    pub fn new(settings: &ScalingSettings) -> Self {
        let mut system = sysinfo::System::new();
        // CPU use is measured between two refreshes: this is the first.
        system.refresh_cpu_usage();
        SystemSampler {
            system,
            disk_path: settings.disk_path.clone(),
            prometheus: settings.prometheus.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        }
    }

    async fn query(&self, promql: &str) -> Sample {
        let Some(base) = &self.prometheus else {
            return Err("no managed Prometheus ([prometheus] enable = false)".into());
        };
        let response = self
            .client
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| format!("Prometheus at {base}: {}", causes(&e.without_url())))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("Prometheus at {base}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "Prometheus at {base} answered {status}: {}",
                body["error"]
            ));
        }
        let Some(first) = body["data"]["result"].as_array().and_then(|r| r.first()) else {
            return Ok(None);
        };
        let value = first["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("Prometheus at {base}: unexpected answer {first}"))?;
        Ok(value.is_finite().then_some(value))
    }
}

/// An error with its causes, `a: b: c` (reqwest's own text says little).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent of the file system holding `path` in use, as `df` counts it.
pub fn disk_used_percent(path: &Path) -> Sample {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let used = s.blocks().saturating_sub(s.blocks_free()) as f64;
    let usable = used + s.blocks_available() as f64;
    Ok((usable > 0.0).then(|| 100.0 * used / usable))
}

impl Sampler for SystemSampler {
    async fn sample(&mut self) -> BTreeMap<TriggerKind, Sample> {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let mut out = BTreeMap::new();
        out.insert(
            TriggerKind::Cpu,
            Ok(Some(f64::from(self.system.global_cpu_usage()))),
        );
        let total = self.system.total_memory();
        out.insert(
            TriggerKind::Memory,
            if total == 0 {
                Err("total memory unknown".into())
            } else {
                Ok(Some(
                    100.0 * self.system.used_memory() as f64 / total as f64,
                ))
            },
        );
        out.insert(TriggerKind::Disk, disk_used_percent(&self.disk_path));
        for (kind, promql) in QUERIES {
            out.insert(kind, self.query(promql).await);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const MIN: u64 = 60_000;

    fn cpu(sustain_min: u64) -> TriggerSettings {
        TriggerSettings {
            kind: TriggerKind::Cpu,
            warning: 70.0,
            critical: 85.0,
            sustain: Duration::from_secs(60 * sustain_min),
        }
    }

    /// Feeds one value a minute; the alerts' (minute, from, to, repeated).
    fn feed(t: &mut Trigger, values: &[f64]) -> Vec<(usize, Level, Level, bool)> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                t.observe(i as u64 * MIN, Some(*v))
                    .map(|a| (i, a.from, a.to, a.repeated))
            })
            .collect()
    }

    #[test]
    fn a_level_changes_only_after_its_value_is_sustained() {
        use Level::*;
        let mut t = Trigger::new(cpu(5), 0.1, Duration::from_secs(3600));
        // A 4-minute spike alerts nothing; 6 minutes above 70 % do, once.
        let mut values = vec![20.0, 90.0, 90.0, 90.0, 90.0, 20.0];
        values.extend([75.0; 7]);
        assert_eq!(feed(&mut t, &values), [(11, Ok, Warning, false)]);
        assert_eq!(t.state.level, Warning);
        assert_eq!(t.state.since_ms, 11 * MIN);
    }

    #[test]
    fn hysteresis_keeps_a_level_until_the_value_is_well_below() {
        use Level::*;
        let mut t = Trigger::new(cpu(0), 0.1, Duration::from_secs(3600));
        // 0.9 × 85 = 76.5 and 0.9 × 70 = 63: values between do not clear.
        let alerts = feed(&mut t, &[86.0, 84.0, 77.0, 76.0, 69.0, 64.0, 62.0, 71.0]);
        assert_eq!(
            alerts,
            [
                (0, Ok, Critical, false),
                (3, Critical, Warning, false),
                (6, Warning, Ok, false),
                (7, Ok, Warning, false)
            ]
        );
    }

    #[test]
    fn flapping_around_a_threshold_does_not_alert() {
        let mut t = Trigger::new(cpu(5), 0.1, Duration::from_secs(3600));
        let values: Vec<f64> = (0..120)
            .map(|i| if i % 4 < 2 { 72.0 } else { 60.0 })
            .collect();
        assert_eq!(feed(&mut t, &values), []);
        assert_eq!(t.state.level, Level::Ok);
    }

    #[test]
    fn a_raised_level_is_repeated_every_interval_and_no_data_moves_nothing() {
        use Level::*;
        let mut t = Trigger::new(cpu(0), 0.1, Duration::from_secs(3600));
        let alerts = feed(&mut t, &[90.0; 150]);
        assert_eq!(
            alerts,
            [
                (0, Ok, Critical, false),
                (60, Critical, Critical, true),
                (120, Critical, Critical, true)
            ]
        );
        assert_eq!(t.observe(200 * MIN, None), None);
        assert_eq!(t.observe(201 * MIN, Some(f64::NAN)), None);
        assert_eq!(t.state.level, Critical);
        // Going up during a downward wait restarts the wait.
        let mut t = Trigger::new(cpu(5), 0.1, Duration::from_secs(3600));
        t.state.level = Warning;
        t.state.last_alert_ms = Some(0);
        let alerts = feed(
            &mut t,
            &[10.0, 10.0, 10.0, 80.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
        );
        assert_eq!(alerts, [(9, Warning, Ok, false)]);
    }

    #[test]
    fn every_level_of_every_trigger_has_a_recommendation() {
        for kind in TriggerKind::ALL {
            let (warning, critical) = kind.defaults();
            let s = TriggerSettings {
                kind,
                warning,
                critical,
                sustain: Duration::from_secs(300),
            };
            for level in [Level::Warning, Level::Critical] {
                let r = s.recommendation(level);
                assert!(
                    r.contains("vertical")
                        || r.contains("separation")
                        || r.contains("horizontal")
                        || r.contains("volume")
                        || r.contains("retention"),
                    "{kind:?} {level:?}: {r}"
                );
            }
        }
    }

    struct Scripted(Vec<f64>);

    impl Sampler for Scripted {
        async fn sample(&mut self) -> BTreeMap<TriggerKind, Sample> {
            let v = if self.0.is_empty() {
                0.0
            } else {
                self.0.remove(0)
            };
            BTreeMap::from([
                (TriggerKind::Cpu, Ok(Some(v))),
                (TriggerKind::Disk, Err("statvfs: gone".to_string())),
            ])
        }
    }

    fn settings(dir: &Path) -> ScalingSettings {
        ScalingSettings {
            enable: true,
            interval: Duration::from_secs(60),
            repeat: Duration::from_secs(3600),
            hysteresis: 0.1,
            webhook: None,
            triggers: vec![
                cpu(5),
                TriggerSettings {
                    kind: TriggerKind::Disk,
                    warning: 80.0,
                    critical: 90.0,
                    sustain: Duration::ZERO,
                },
            ],
            state_file: dir.join("scaling-state.json"),
            prometheus: None,
            disk_path: dir.to_path_buf(),
        }
    }

    /// Keeps the statuses of the last round.
    fn keep_last(last: Arc<Mutex<Vec<ScalingStatus>>>) -> impl Fn(Vec<ScalingStatus>) {
        move |statuses| *last.lock().unwrap() = statuses
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_evaluates_every_interval_and_its_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let last = Arc::new(Mutex::new(Vec::new()));
        // 10 minutes at 90 %: critical after the 5-minute sustain.
        let task = tokio::spawn(run(
            settings(dir.path()),
            Scripted(vec![90.0; 10]),
            keep_last(last.clone()),
        ));
        tokio::time::sleep(Duration::from_secs(9 * 60 + 30)).await;
        task.abort();
        let s = last.lock().unwrap().clone();
        let cpu_status = s.iter().find(|s| s.trigger == "cpu").unwrap();
        assert_eq!(cpu_status.level, Level::Critical);
        assert_eq!(cpu_status.alerts, 1);
        assert_eq!(cpu_status.value, Some(90.0));
        assert!(
            cpu_status
                .recommendation
                .as_deref()
                .unwrap()
                .contains("larger instance")
        );
        let disk = s.iter().find(|s| s.trigger == "disk").unwrap();
        assert_eq!(
            (disk.level, disk.error.as_deref()),
            (Level::Ok, Some("statvfs: gone"))
        );

        // After a restart at 90 % still: critical at once, no new alert.
        let last = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            settings(dir.path()),
            Scripted(vec![90.0; 3]),
            keep_last(last.clone()),
        ));
        tokio::time::sleep(Duration::from_secs(150)).await;
        task.abort();
        let s = last.lock().unwrap().clone();
        let cpu_status = s.iter().find(|s| s.trigger == "cpu").unwrap();
        assert_eq!((cpu_status.level, cpu_status.alerts), (Level::Critical, 0));
    }

    #[test]
    fn disk_use_is_measured_like_df() {
        let used = disk_used_percent(Path::new("/")).unwrap().unwrap();
        assert!((0.0..=100.0).contains(&used), "{used}");
        assert!(disk_used_percent(Path::new("/nonexistent/dir")).is_err());
    }
}
