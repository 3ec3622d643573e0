//! Experiment KPIs, measured in Prometheus — never estimated.
//!
//! Every series an agent sends reaches Prometheus labelled
//! `job="phoenix-agent"`, `agent`, `experiment` and `variant`: a remote
//! write is relabelled by the API, with each sample's own timestamp; a text
//! push goes through the Pushgateway (scraped with `honor_labels`), which
//! adds series of its own. For an experiment `E` whose measured window is
//! `[started_at, ends_at]` (`W` seconds), each query below is an instant
//! query evaluated at `ends_at`, so a measurement can be repeated and gives
//! the same answer. `SEL(v)` is
//! `{__name__!~"push_time_seconds|push_failure_time_seconds",job="phoenix-agent",experiment="E",variant="v"}`
//! — every series of the variant, without the Pushgateway's bookkeeping
//! series of pushes.
//!
//! | KPI | query | formula |
//! |---|---|---|
//! | series | `count by (agent) (last_over_time(SEL(v)[Ws]))` | distinct series with a sample in the window, per agent; summed. Every target agent must have at least one series of both variants in the window |
//! | metric names | `count by (__name__) (last_over_time(SEL(v)[Ws]))` | the metrics to count samples of |
//! | samples/s | for each name N: `sum by (agent) (count_over_time({__name__="N",job="phoenix-agent",experiment="E",variant="v"}[Ws]))` | samples Prometheus stored for the variant in the window, summed, ÷ W |
//! | host totals | `sum by (agent) (sum_over_time(M{job="phoenix-agent",experiment="E",variant="v"}[Ws])) / max by (agent) (count_over_time(M{…}[Ws]))` for M = CPU and memory metrics: the host's total averaged over the collections in the window | accuracy = 100 × (1 − \|cand − base\| ÷ base), floored at 0, per agent and metric; the KPI is the worst one |
//! | reduction | — | 100 × (1 − candidate series ÷ baseline series) |
//! | cost | — | series × price per series and month |
//!
//! Samples/s is counted from the stored samples themselves rather than
//! derived from the scrape interval: it is what the variant really costs in
//! ingestion, and it stays right if pushes stop part-way.
//!
//! Recommendation: `promote` when reduction ≥ the experiment's minimum and
//! accuracy ≥ its minimum, otherwise `rollback`, with the reasons.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::push_group::{JOB as AGENT_JOB, PUSHGATEWAY_META};
use phoenix_wire::pipeline::{PROCESS_CPU_METRIC, PROCESS_MEMORY_METRIC};

/// Longest one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The two pipelines of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Baseline,
    Candidate,
}

impl Variant {
    pub const BOTH: [Variant; 2] = [Variant::Baseline, Variant::Candidate];

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Candidate => "candidate",
        }
    }
}

/// Why measuring failed; both are retried until the analysis grace ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// Prometheus is not configured, not reachable, or refused a query.
    #[error("Prometheus: {0}")]
    Prometheus(String),
    /// Prometheus answered, but the data to measure is not there.
    #[error("no data: {0}")]
    NoData(String),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus HTTP API client for instant queries.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: url::Url,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct QueryResponse<T> {
    status: String,
    #[serde(default = "none")]
    data: Option<T>,
    #[serde(default)]
    error: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: Vec<VectorElement>,
}

#[derive(Deserialize)]
struct VectorElement {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeData {
    result_type: String,
    result: Vec<MatrixElement>,
}

#[derive(Deserialize)]
struct MatrixElement {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// One series of a range query: its labels and `(unix seconds, value)`
/// points, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

/// One connection pool for every query of this process.
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("a default HTTP client builds")
});

impl Prometheus {
    pub fn new(base: url::Url) -> Self {
        Prometheus {
            base,
            http: CLIENT.clone(),
        }
    }

    /// The client for the configured Prometheus.
    pub fn from_settings(settings: &crate::Settings) -> Result<Self, MeasureError> {
        settings
            .prometheus_url
            .clone()
            .map(Prometheus::new)
            .ok_or_else(|| {
                MeasureError::Prometheus(
                    "no Prometheus is configured (--prometheus-url / PHOENIX_PROMETHEUS_URL)"
                        .into(),
                )
            })
    }

    /// Runs an instant query at `at` (now when `None`); the result must be
    /// an instant vector.
    pub async fn query(
        &self,
        promql: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<Sample>, MeasureError> {
        let mut params = vec![("query", promql.to_owned())];
        if let Some(at) = at {
            params.push(("time", unix_seconds(at)));
        }
        let fail = |e: String| MeasureError::Prometheus(format!("query `{promql}`: {e}"));
        let data: QueryData = self.call("query", &params, &fail).await?;
        if data.result_type != "vector" {
            return Err(fail(format!(
                "expected an instant vector, got a {}",
                data.result_type
            )));
        }
        data.result
            .into_iter()
            .map(|e| {
                Ok(Sample {
                    labels: e.metric,
                    value: number(&e.value.1).map_err(&fail)?,
                })
            })
            .collect()
    }

    /// Runs a range query from `start` to `end` every `step`.
    pub async fn query_range(
        &self,
        promql: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, MeasureError> {
        let params = [
            ("query", promql.to_owned()),
            ("start", unix_seconds(start)),
            ("end", unix_seconds(end)),
            ("step", format!("{}", step.as_secs().max(1))),
        ];
        let fail = |e: String| MeasureError::Prometheus(format!("range query `{promql}`: {e}"));
        let data: RangeData = self.call("query_range", &params, &fail).await?;
        if data.result_type != "matrix" {
            return Err(fail(format!(
                "expected a range vector, got a {}",
                data.result_type
            )));
        }
        data.result
            .into_iter()
            .map(|e| {
                let points = e
                    .values
                    .iter()
                    .map(|(t, v)| Ok((*t, number(v).map_err(&fail)?)))
                    .collect::<Result<_, MeasureError>>()?;
                Ok(RangeSeries {
                    labels: e.metric,
                    points,
                })
            })
            .collect()
    }

    /// POSTs `params` to `/api/v1/<endpoint>`; the answer's `data`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        params: &[(&str, String)],
        fail: &impl Fn(String) -> MeasureError,
    ) -> Result<T, MeasureError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| MeasureError::Prometheus(format!("{} is not a base URL", self.base)))?
            .pop_if_empty()
            .extend(["api", "v1", endpoint]);
        let response = self
            .http
            .post(url)
            .form(params)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body: QueryResponse<T> = response
            .json()
            .await
            .map_err(|e| fail(format!("HTTP {status}, unreadable answer: {e}")))?;
        if body.status != "success" {
            return Err(fail(body.error.unwrap_or_else(|| format!("HTTP {status}"))));
        }
        body.data
            .ok_or_else(|| fail("no data in the answer".into()))
    }

    /// Runs a `... by (agent)` query and returns the value per agent id;
    /// elements without a valid `agent` label are ignored.
    pub async fn by_agent(
        &self,
        promql: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<BTreeMap<Uuid, f64>, MeasureError> {
        Ok(per_agent(self.query(promql, at).await?))
    }
}

fn unix_seconds(at: DateTime<Utc>) -> String {
    format!("{:.3}", at.timestamp_millis() as f64 / 1000.0)
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|_| format!("`{text}` is not a number"))
}

/// A valid Prometheus metric name, safe to put in a query.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn per_agent(samples: Vec<Sample>) -> BTreeMap<Uuid, f64> {
    samples
        .into_iter()
        .filter_map(|s| {
            let agent = s.labels.get("agent")?.parse().ok()?;
            Some((agent, s.value))
        })
        .collect()
}

/// The experiment to measure.
#[derive(Debug, Clone)]
pub struct Subject {
    pub experiment: Uuid,
    pub agents: Vec<Uuid>,
    pub started_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub min_reduction_pct: f64,
    pub min_accuracy_pct: f64,
    pub price_per_series_month: f64,
}

impl Subject {
    fn window_seconds(&self) -> i64 {
        (self.ends_at - self.started_at).num_seconds().max(1)
    }

    fn labels(&self, variant: Variant) -> String {
        format!(
            "job=\"{AGENT_JOB}\",experiment=\"{}\",variant=\"{}\"",
            self.experiment,
            variant.as_str()
        )
    }

    /// Every series of a variant, without the Pushgateway's own.
    fn selector(&self, variant: Variant) -> String {
        format!(
            "{{__name__!~\"{PUSHGATEWAY_META}\",{}}}",
            self.labels(variant)
        )
    }

    pub fn series_query(&self, variant: Variant) -> String {
        format!(
            "count by (agent) (last_over_time({}[{}s]))",
            self.selector(variant),
            self.window_seconds()
        )
    }

    /// The metric names of a variant. `last_over_time` keeps the names,
    /// unlike the other `*_over_time` functions.
    pub fn names_query(&self, variant: Variant) -> String {
        format!(
            "count by (__name__) (last_over_time({}[{}s]))",
            self.selector(variant),
            self.window_seconds()
        )
    }

    /// Samples of one metric of a variant. Per metric, because
    /// `count_over_time` drops the name, and two metrics' series with the
    /// same labels would collide.
    pub fn samples_query(&self, variant: Variant, metric: &str) -> String {
        format!(
            "sum by (agent) (count_over_time({{__name__=\"{metric}\",{}}}[{}s]))",
            self.labels(variant),
            self.window_seconds()
        )
    }

    /// A host total of one metric, averaged over the collections in the
    /// window: every sample summed, divided by the number of collections (the
    /// samples of the series seen most often). Averaging each series over its
    /// own samples instead would give a process that lived for one collection
    /// the same weight as one that lived through all of them.
    pub fn total_query(&self, variant: Variant, metric: &str) -> String {
        let selector = format!(
            "{metric}{{{}}}[{}s]",
            self.labels(variant),
            self.window_seconds()
        );
        format!(
            "sum by (agent) (sum_over_time({selector})) \
             / max by (agent) (count_over_time({selector}))"
        )
    }
}

/// What was measured for one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantKpis {
    /// Distinct series with a sample in the window, all agents.
    pub series: u64,
    /// The same, per agent id.
    pub series_by_agent: BTreeMap<Uuid, u64>,
    /// Samples stored per second over the window, all agents.
    pub samples_per_second: f64,
    /// `series` × price per series and month, in dollars.
    pub cost_per_month: f64,
}

/// How well the candidate keeps one host total of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TotalAccuracy {
    pub agent: Uuid,
    /// The metric summed over all of the agent's series.
    pub metric: String,
    /// The total's average over the window, baseline.
    pub baseline: f64,
    /// The same, candidate.
    pub candidate: f64,
    /// 100 × (1 − |candidate − baseline| ÷ baseline), at least 0.
    pub accuracy_pct: f64,
}

/// `promote` or `rollback`, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    /// `promote` or `rollback`.
    pub action: String,
    pub reasons: Vec<String>,
}

/// A PromQL query a KPI came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiQuery {
    pub name: String,
    pub promql: String,
}

/// Everything measured for an experiment, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Kpis {
    /// When the queries ran.
    pub measured_at: DateTime<Utc>,
    /// Start of the measured window.
    pub window_start: DateTime<Utc>,
    /// End of the window; every query is evaluated at this time.
    pub window_end: DateTime<Utc>,
    pub window_seconds: i64,
    pub price_per_series_month: f64,
    pub baseline: VariantKpis,
    pub candidate: VariantKpis,
    /// 100 × (1 − candidate series ÷ baseline series).
    pub reduction_pct: f64,
    /// The worst of `totals`.
    pub accuracy_pct: f64,
    pub totals: Vec<TotalAccuracy>,
    /// Baseline cost − candidate cost, in dollars per month.
    pub savings_per_month: f64,
    pub recommendation: Recommendation,
    pub queries: Vec<KpiQuery>,
}

/// Runs queries at one time and keeps each query with its name.
struct Recorder<'a> {
    prometheus: &'a Prometheus,
    at: Option<DateTime<Utc>>,
    queries: Vec<KpiQuery>,
}

impl Recorder<'_> {
    async fn query(&mut self, name: String, promql: String) -> Result<Vec<Sample>, MeasureError> {
        let result = self.prometheus.query(&promql, self.at).await;
        self.queries.push(KpiQuery { name, promql });
        result
    }

    async fn by_agent(
        &mut self,
        name: String,
        promql: String,
    ) -> Result<BTreeMap<Uuid, f64>, MeasureError> {
        Ok(per_agent(self.query(name, promql).await?))
    }
}

/// Runs every KPI query for `subject` and computes the KPIs.
pub async fn measure(prometheus: &Prometheus, subject: &Subject) -> Result<Kpis, MeasureError> {
    let mut recorder = Recorder {
        prometheus,
        at: Some(subject.ends_at),
        queries: Vec::new(),
    };
    let mut measured = BTreeMap::new();
    for variant in Variant::BOTH {
        let v = variant.as_str();
        let series = recorder
            .by_agent(format!("{v}_series"), subject.series_query(variant))
            .await?;
        let names: Vec<String> = recorder
            .query(format!("{v}_metric_names"), subject.names_query(variant))
            .await?
            .into_iter()
            .filter_map(|sample| sample.labels.get("__name__").cloned())
            .filter(|name| is_metric_name(name))
            .collect();
        let mut samples: BTreeMap<Uuid, f64> = BTreeMap::new();
        for metric in names {
            let query = subject.samples_query(variant, &metric);
            for (agent, n) in recorder
                .by_agent(format!("{v}_samples_{metric}"), query)
                .await?
            {
                *samples.entry(agent).or_default() += n;
            }
        }
        let mut totals = BTreeMap::new();
        for metric in [PROCESS_CPU_METRIC, PROCESS_MEMORY_METRIC] {
            let query = subject.total_query(variant, metric);
            let total = recorder
                .by_agent(format!("{v}_total_{metric}"), query)
                .await?;
            totals.insert(metric, total);
        }
        measured.insert(
            v,
            Measured {
                series,
                samples,
                totals,
            },
        );
    }
    compute(
        subject,
        &measured["baseline"],
        &measured["candidate"],
        recorder.queries,
    )
}

/// The raw answers for one variant, per agent.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub series: BTreeMap<Uuid, f64>,
    pub samples: BTreeMap<Uuid, f64>,
    pub totals: BTreeMap<&'static str, BTreeMap<Uuid, f64>>,
}

/// The KPIs from the raw answers. Data is missing — and nothing is
/// computed — when a target agent has no series of a variant in the window
/// (it sent none, or they did not reach Prometheus), or no baseline host
/// totals.
pub fn compute(
    subject: &Subject,
    baseline: &Measured,
    candidate: &Measured,
    queries: Vec<KpiQuery>,
) -> Result<Kpis, MeasureError> {
    for (variant, m) in [("baseline", baseline), ("candidate", candidate)] {
        let silent: Vec<String> = subject
            .agents
            .iter()
            .filter(|a| m.series.get(a).is_none_or(|n| *n < 1.0))
            .map(Uuid::to_string)
            .collect();
        if !silent.is_empty() {
            return Err(MeasureError::NoData(format!(
                "agents {} have no {variant} series between {} and {}",
                silent.join(", "),
                subject.started_at.to_rfc3339(),
                subject.ends_at.to_rfc3339()
            )));
        }
    }
    let price = subject.price_per_series_month;
    let window = subject.window_seconds();
    let variant = |m: &Measured| {
        let series_by_agent: BTreeMap<Uuid, u64> = subject
            .agents
            .iter()
            .map(|a| (*a, m.series.get(a).copied().unwrap_or(0.0).round() as u64))
            .collect();
        let series = series_by_agent.values().sum::<u64>();
        let samples: f64 = subject.agents.iter().filter_map(|a| m.samples.get(a)).sum();
        VariantKpis {
            series,
            series_by_agent,
            samples_per_second: samples / window as f64,
            cost_per_month: series as f64 * price,
        }
    };
    let base = variant(baseline);
    let cand = variant(candidate);
    let mut totals = Vec::new();
    for metric in [PROCESS_CPU_METRIC, PROCESS_MEMORY_METRIC] {
        for agent in &subject.agents {
            let Some(b) = baseline.totals.get(metric).and_then(|t| t.get(agent)) else {
                return Err(MeasureError::NoData(format!(
                    "agent {agent} sent no baseline {metric} in the window"
                )));
            };
            let c = candidate
                .totals
                .get(metric)
                .and_then(|t| t.get(agent))
                .copied()
                .unwrap_or(0.0);
            totals.push(TotalAccuracy {
                agent: *agent,
                metric: metric.to_owned(),
                baseline: *b,
                candidate: c,
                accuracy_pct: accuracy_pct(*b, c),
            });
        }
    }
    let accuracy = totals
        .iter()
        .map(|t| t.accuracy_pct)
        .fold(100.0_f64, f64::min);
    let reduction = reduction_pct(base.series, cand.series);
    let recommendation = recommend(
        reduction,
        accuracy,
        subject.min_reduction_pct,
        subject.min_accuracy_pct,
    );
    Ok(Kpis {
        measured_at: Utc::now(),
        window_start: subject.started_at,
        window_end: subject.ends_at,
        window_seconds: window,
        price_per_series_month: price,
        savings_per_month: base.cost_per_month - cand.cost_per_month,
        baseline: base,
        candidate: cand,
        reduction_pct: reduction,
        accuracy_pct: accuracy,
        totals,
        recommendation,
        queries,
    })
}

/// 100 × (1 − candidate ÷ baseline); 0 without a baseline.
pub fn reduction_pct(baseline: u64, candidate: u64) -> f64 {
    if baseline == 0 {
        return 0.0;
    }
    // Written so that whole numbers of series give exact percentages.
    100.0 * (baseline as f64 - candidate as f64) / baseline as f64
}

/// 100 × (1 − |candidate − baseline| ÷ baseline), floored at 0; a zero
/// baseline is matched only by a zero candidate.
pub fn accuracy_pct(baseline: f64, candidate: f64) -> f64 {
    if baseline == 0.0 {
        return if candidate == 0.0 { 100.0 } else { 0.0 };
    }
    (100.0 * (baseline.abs() - (candidate - baseline).abs()) / baseline.abs()).max(0.0)
}

/// The verdict of the success criteria.
pub fn recommend(
    reduction: f64,
    accuracy: f64,
    min_reduction: f64,
    min_accuracy: f64,
) -> Recommendation {
    let mut reasons = Vec::new();
    let reduction_ok = reduction >= min_reduction;
    let accuracy_ok = accuracy >= min_accuracy;
    reasons.push(format!(
        "series reduced by {reduction:.2}% ({} the required {min_reduction}%)",
        if reduction_ok { "meets" } else { "below" }
    ));
    reasons.push(format!(
        "host totals kept with {accuracy:.2}% accuracy ({} the required {min_accuracy}%)",
        if accuracy_ok { "meets" } else { "below" }
    ));
    Recommendation {
        action: if reduction_ok && accuracy_ok {
            "promote"
        } else {
            "rollback"
        }
        .to_owned(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(agents: Vec<Uuid>) -> Subject {
        let started_at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        Subject {
            experiment: Uuid::nil(),
            agents,
            started_at,
            ends_at: started_at + chrono::Duration::seconds(600),
            min_reduction_pct: 70.0,
            min_accuracy_pct: 98.0,
            price_per_series_month: 0.05,
        }
    }

    #[test]
    fn queries_select_the_variant_without_pushgateway_series() {
        let s = subject(vec![]);
        assert_eq!(
            s.series_query(Variant::Baseline),
            "count by (agent) (last_over_time({__name__!~\"push_time_seconds|push_failure_time_seconds\",\
             job=\"phoenix-agent\",experiment=\"00000000-0000-0000-0000-000000000000\",variant=\"baseline\"}[600s]))"
        );
        assert_eq!(
            s.total_query(Variant::Candidate, PROCESS_CPU_METRIC),
            "sum by (agent) (sum_over_time(phoenix_process_cpu_percent{job=\"phoenix-agent\",\
             experiment=\"00000000-0000-0000-0000-000000000000\",variant=\"candidate\"}[600s])) \
             / max by (agent) (count_over_time(phoenix_process_cpu_percent{job=\"phoenix-agent\",\
             experiment=\"00000000-0000-0000-0000-000000000000\",variant=\"candidate\"}[600s]))"
        );
        assert_eq!(
            s.samples_query(Variant::Candidate, PROCESS_MEMORY_METRIC),
            "sum by (agent) (count_over_time({__name__=\"phoenix_process_memory_bytes\",job=\"phoenix-agent\",\
             experiment=\"00000000-0000-0000-0000-000000000000\",variant=\"candidate\"}[600s]))"
        );
        assert!(
            s.names_query(Variant::Baseline)
                .starts_with("count by (__name__) (last_over_time({__name__!~")
        );
        assert!(is_metric_name("phoenix_process_cpu_percent") && is_metric_name("a:b"));
        assert!(!is_metric_name("a\"}") && !is_metric_name("1a") && !is_metric_name(""));
    }

    fn measured(agent: Uuid, series: f64, cpu: f64, memory: f64) -> Measured {
        let one = |v: f64| BTreeMap::from([(agent, v)]);
        Measured {
            series: one(series),
            samples: one(series * 600.0),
            totals: BTreeMap::from([
                (PROCESS_CPU_METRIC, one(cpu)),
                (PROCESS_MEMORY_METRIC, one(memory)),
            ]),
        }
    }

    #[test]
    fn kpis_follow_the_formulas() {
        let agent = Uuid::new_v4();
        let s = subject(vec![agent]);
        let k = compute(
            &s,
            &measured(agent, 200.0, 5050.0, 5.05e9),
            &measured(agent, 22.0, 4949.0, 5.05e9),
            vec![],
        )
        .unwrap();
        assert_eq!(k.baseline.series, 200);
        assert_eq!(k.candidate.series, 22);
        assert!((k.reduction_pct - 89.0).abs() < 1e-9);
        assert!((k.baseline.samples_per_second - 200.0).abs() < 1e-9);
        assert!((k.baseline.cost_per_month - 10.0).abs() < 1e-9);
        assert!((k.savings_per_month - 8.9).abs() < 1e-9);
        // CPU is off by 101 of 5050 = 2 %; memory exact; the KPI is the worst.
        assert!((k.accuracy_pct - 98.0).abs() < 1e-9);
        assert_eq!(k.recommendation.action, "promote");
    }

    #[test]
    fn missing_data_is_no_data_not_zero() {
        let agent = Uuid::new_v4();
        let s = subject(vec![agent]);
        let silent = Measured::default();
        let e = compute(&s, &measured(agent, 200.0, 1.0, 1.0), &silent, vec![]).unwrap_err();
        assert!(
            matches!(e, MeasureError::NoData(ref m) if m.contains("no candidate series")),
            "{e}"
        );
        // Series of the variant are what says an agent sent it: host totals
        // without a series counted are no data either.
        let mut no_series = measured(agent, 200.0, 1.0, 1.0);
        no_series.series.clear();
        let e = compute(&s, &no_series, &measured(agent, 20.0, 1.0, 1.0), vec![]).unwrap_err();
        assert!(
            matches!(e, MeasureError::NoData(ref m) if m.contains("no baseline series")),
            "{e}"
        );
        let other = Uuid::new_v4();
        let two = subject(vec![agent, other]);
        let e = compute(
            &two,
            &measured(agent, 200.0, 1.0, 1.0),
            &measured(agent, 20.0, 1.0, 1.0),
            vec![],
        )
        .unwrap_err();
        assert!(
            matches!(e, MeasureError::NoData(ref m) if m.contains(&other.to_string()) && !m.contains(&agent.to_string())),
            "only the silent agent is named: {e}"
        );
        let mut no_totals = measured(agent, 200.0, 1.0, 1.0);
        no_totals.totals.clear();
        let e = compute(&s, &no_totals, &measured(agent, 20.0, 1.0, 1.0), vec![]).unwrap_err();
        assert!(matches!(e, MeasureError::NoData(_)), "{e}");
    }

    #[test]
    fn accuracy_and_reduction_edges() {
        assert_eq!(accuracy_pct(100.0, 100.0), 100.0);
        assert_eq!(accuracy_pct(100.0, 97.0), 97.0);
        assert_eq!(accuracy_pct(100.0, 103.0), 97.0);
        assert_eq!(accuracy_pct(100.0, 500.0), 0.0);
        assert_eq!(accuracy_pct(0.0, 0.0), 100.0);
        assert_eq!(accuracy_pct(0.0, 1.0), 0.0);
        assert_eq!(reduction_pct(0, 0), 0.0);
        assert_eq!(reduction_pct(100, 30), 70.0);
        assert_eq!(reduction_pct(100, 130), -30.0);
    }

    #[test]
    fn the_recommendation_needs_both_criteria() {
        assert_eq!(recommend(70.0, 98.0, 70.0, 98.0).action, "promote");
        let r = recommend(69.9, 99.0, 70.0, 98.0);
        assert_eq!(r.action, "rollback");
        assert!(r.reasons[0].contains("below"), "{:?}", r.reasons);
        assert_eq!(recommend(90.0, 97.9, 70.0, 98.0).action, "rollback");
    }

    #[test]
    fn vectors_are_read_per_agent() {
        let agent = Uuid::new_v4();
        let samples = vec![
            Sample {
                labels: BTreeMap::from([("agent".to_owned(), agent.to_string())]),
                value: 3.0,
            },
            Sample {
                labels: BTreeMap::from([("agent".to_owned(), "not-a-uuid".to_owned())]),
                value: 4.0,
            },
            Sample {
                labels: BTreeMap::new(),
                value: 5.0,
            },
        ];
        assert_eq!(per_agent(samples), BTreeMap::from([(agent, 3.0)]));
    }
}
