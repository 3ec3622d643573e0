//! Running a reduction pipeline ([`PipelineSpec`]) on one collection of
//! process samples.
//!
//! A [`Row`] is one process as a pipeline sees it: its labels (`process`,
//! `pid`) and both gauges. Every stage works on rows, so the two metrics of
//! a process are always kept or dropped together, and whenever a stage makes
//! two rows' labels equal their values are summed: host totals are kept by
//! every stage but `filter`.
//!
//! *Invariant:* [`Compiled::run`] is pure: the same rows give the same
//! output, in the order of their labels.

use std::collections::BTreeMap;

use phoenix_wire::pipeline::{
    OTHER_PROCESS, PID_LABEL, PROCESS_CPU_METRIC, PROCESS_LABEL, PROCESS_MEMORY_METRIC,
    PipelineSpec, Resource, SpecError, Stage, compile_name_regex,
};
use phoenix_wire::remote_write::{Label, NAME_LABEL, Sample, TimeSeries};

/// One process: labels without the metric name, and both values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub labels: BTreeMap<String, String>,
    pub cpu_percent: f64,
    pub memory_bytes: f64,
}

impl Row {
    pub fn process(name: &str, pid: u32, cpu_percent: f64, memory_bytes: f64) -> Row {
        Row {
            labels: BTreeMap::from([
                (PROCESS_LABEL.to_owned(), name.to_owned()),
                (PID_LABEL.to_owned(), pid.to_string()),
            ]),
            cpu_percent,
            memory_bytes,
        }
    }

    fn name(&self) -> &str {
        self.labels.get(PROCESS_LABEL).map_or("", String::as_str)
    }

    fn value(&self, by: Resource) -> f64 {
        match by {
            Resource::Cpu => self.cpu_percent,
            Resource::Memory => self.memory_bytes,
        }
    }
}

/// A validated pipeline with its regular expressions compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    spec: PipelineSpec,
    stages: Vec<CompiledStage>,
}

#[derive(Debug, Clone)]
enum CompiledStage {
    Filter {
        include: Option<regex::Regex>,
        exclude: Option<regex::Regex>,
    },
    TopK {
        k: usize,
        by: Resource,
    },
    DropLabels(Vec<String>),
}

impl Compiled {
    pub fn new(spec: &PipelineSpec) -> Result<Compiled, SpecError> {
        spec.validate()?;
        let compile = |p: &Option<String>| {
            p.as_deref()
                .map(|p| compile_name_regex(p).expect("a validated pipeline's expressions compile"))
        };
        let stages = spec
            .stages
            .iter()
            .map(|stage| match stage {
                Stage::Filter { include, exclude } => CompiledStage::Filter {
                    include: compile(include),
                    exclude: compile(exclude),
                },
                Stage::TopK { k, by } => CompiledStage::TopK {
                    k: *k as usize,
                    by: *by,
                },
                Stage::AggregateByName => CompiledStage::DropLabels(vec![PID_LABEL.to_owned()]),
                Stage::DropLabels { labels } => CompiledStage::DropLabels(labels.clone()),
            })
            .collect();
        Ok(Compiled {
            spec: spec.clone(),
            stages,
        })
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// Applies every stage in order.
    pub fn run(&self, rows: &[Row]) -> Vec<Row> {
        let mut rows = merge(rows.to_vec());
        for stage in &self.stages {
            rows = match stage {
                CompiledStage::Filter { include, exclude } => rows
                    .into_iter()
                    .filter(|r| {
                        include.as_ref().is_none_or(|re| re.is_match(r.name()))
                            && !exclude.as_ref().is_some_and(|re| re.is_match(r.name()))
                    })
                    .collect(),
                CompiledStage::TopK { k, by } => top_k(rows, *k, *by),
                CompiledStage::DropLabels(labels) => merge(
                    rows.into_iter()
                        .map(|mut r| {
                            for l in labels {
                                r.labels.remove(l);
                            }
                            r
                        })
                        .collect(),
                ),
            };
        }
        rows
    }
}

/// Keeps the `k` rows with the highest `by` (ties broken by labels, so the
/// choice is stable) and sums the others into one `other` row.
fn top_k(mut rows: Vec<Row>, k: usize, by: Resource) -> Vec<Row> {
    if rows.len() <= k {
        return rows;
    }
    rows.sort_by(|a, b| {
        b.value(by)
            .total_cmp(&a.value(by))
            .then_with(|| a.labels.cmp(&b.labels))
    });
    let rest = rows.split_off(k);
    let mut other = Row {
        labels: BTreeMap::from([(PROCESS_LABEL.to_owned(), OTHER_PROCESS.to_owned())]),
        cpu_percent: 0.0,
        memory_bytes: 0.0,
    };
    for r in rest {
        other.cpu_percent += r.cpu_percent;
        other.memory_bytes += r.memory_bytes;
    }
    rows.push(other);
    merge(rows)
}

/// Sums rows with equal labels; the result is ordered by labels.
fn merge(rows: Vec<Row>) -> Vec<Row> {
    let mut by_labels: BTreeMap<BTreeMap<String, String>, (f64, f64)> = BTreeMap::new();
    for r in rows {
        let e = by_labels.entry(r.labels).or_default();
        e.0 += r.cpu_percent;
        e.1 += r.memory_bytes;
    }
    by_labels
        .into_iter()
        .map(|(labels, (cpu_percent, memory_bytes))| Row {
            labels,
            cpu_percent,
            memory_bytes,
        })
        .collect()
}

/// The rows as remote-write series, each with one sample at `timestamp_ms`;
/// `extra` labels (e.g. `job`, `instance` for an external endpoint) are
/// added to every series. Labels are sorted by name, as the format wants.
pub fn to_series(
    rows: &[Row],
    timestamp_ms: i64,
    extra: &BTreeMap<String, String>,
) -> Vec<TimeSeries> {
    let mut out = Vec::with_capacity(rows.len() * 2);
    for r in rows {
        for (metric, value) in [
            (PROCESS_CPU_METRIC, r.cpu_percent),
            (PROCESS_MEMORY_METRIC, r.memory_bytes),
        ] {
            let mut labels: BTreeMap<&str, &str> = r
                .labels
                .iter()
                .chain(extra.iter())
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            labels.insert(NAME_LABEL, metric);
            out.push(TimeSeries {
                labels: labels.into_iter().map(|(k, v)| Label::new(k, v)).collect(),
                samples: vec![Sample {
                    value,
                    timestamp: timestamp_ms,
                }],
                ..Default::default()
            });
        }
    }
    out
}

/// Host totals of both gauges.
pub fn totals(rows: &[Row]) -> (f64, f64) {
    rows.iter().fold((0.0, 0.0), |(c, m), r| {
        (c + r.cpu_percent, m + r.memory_bytes)
    })
}

/// How close `candidate` is to `baseline`, in percent: 100 × (1 − |c − b| ÷
/// b), floored at 0; 100 when both are 0. The experiment KPIs' formula.
pub fn accuracy_pct(baseline: f64, candidate: f64) -> f64 {
    if baseline == 0.0 {
        return if candidate == 0.0 { 100.0 } else { 0.0 };
    }
    (100.0 * (1.0 - (candidate - baseline).abs() / baseline)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::pipeline::templates;
    use serde_json::json;

    fn host() -> Vec<Row> {
        vec![
            Row::process("nginx", 10, 5.0, 100.0),
            Row::process("nginx", 11, 3.0, 100.0),
            Row::process("postgres", 20, 20.0, 1000.0),
            Row::process("postgres", 21, 1.0, 500.0),
            Row::process("kworker/0:1", 30, 0.5, 0.0),
            Row::process("sshd", 40, 0.0, 50.0),
        ]
    }

    fn run(spec: serde_json::Value) -> Vec<Row> {
        let spec = PipelineSpec::from_json(&spec).unwrap();
        Compiled::new(&spec).unwrap().run(&host())
    }

    fn names(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|r| format!("{}:{}", r.name(), r.labels.get("pid").map_or("-", |s| s)))
            .collect()
    }

    #[test]
    fn full_fidelity_keeps_every_process() {
        assert_eq!(run(json!({})), merge(host()));
    }

    #[test]
    fn filter_is_anchored_on_both_ends() {
        let rows = run(
            json!({"stages": [{"type": "filter", "include": "nginx|post.*", "exclude": "postgres"}]}),
        );
        assert_eq!(names(&rows), ["nginx:10", "nginx:11"]);
        // "ngin" does not match "nginx": the expression is anchored.
        assert!(run(json!({"stages": [{"type": "filter", "include": "ngin"}]})).is_empty());
    }

    #[test]
    fn top_k_keeps_the_busiest_and_sums_the_rest_into_other() {
        let rows = run(json!({"stages": [{"type": "top_k", "k": 2, "by": "cpu"}]}));
        assert_eq!(names(&rows), ["nginx:10", "postgres:20", "other:-"]);
        let other = rows.iter().find(|r| r.name() == "other").unwrap();
        assert_eq!((other.cpu_percent, other.memory_bytes), (4.5, 650.0));
        assert_eq!(totals(&rows), totals(&host()), "top_k keeps host totals");

        let by_memory = run(json!({"stages": [{"type": "top_k", "k": 1, "by": "memory"}]}));
        assert_eq!(names(&by_memory), ["postgres:20", "other:-"]);
    }

    #[test]
    fn aggregation_and_dropped_labels_sum_what_coincides() {
        let rows = run(json!({"stages": [{"type": "aggregate_by_name"}]}));
        assert_eq!(
            names(&rows),
            ["kworker/0:1:-", "nginx:-", "postgres:-", "sshd:-"]
        );
        assert_eq!(rows[1].cpu_percent, 8.0);
        assert_eq!(totals(&rows), totals(&host()));
        let dropped = run(json!({"stages": [{"type": "drop_labels", "labels": ["pid"]}]}));
        assert_eq!(dropped, rows);
    }

    #[test]
    fn every_template_keeps_host_totals() {
        for t in templates() {
            let rows = Compiled::new(&t.spec).unwrap().run(&host());
            assert_eq!(totals(&rows), totals(&host()), "{}", t.name);
        }
    }

    #[test]
    fn series_carry_the_metric_name_sorted_labels_and_the_timestamp() {
        let extra = BTreeMap::from([("job".to_owned(), "phoenix-agent".to_owned())]);
        let series = to_series(&[Row::process("nginx", 10, 5.0, 100.0)], 1234, &extra);
        assert_eq!(series.len(), 2);
        let names: Vec<_> = series[0].labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "job", "pid", "process"]);
        assert_eq!(series[0].label("__name__"), Some(PROCESS_CPU_METRIC));
        assert_eq!(series[1].samples[0].value, 100.0);
        assert_eq!(series[1].samples[0].timestamp, 1234);
    }

    #[test]
    fn accuracy_is_the_kpi_formula() {
        assert_eq!(accuracy_pct(100.0, 99.0), 99.0);
        assert_eq!(accuracy_pct(100.0, 300.0), 0.0);
        assert_eq!(accuracy_pct(0.0, 0.0), 100.0);
    }
}
