//! Reduction pipelines as data: what an agent runs on its process metrics
//! before pushing them, and the rules that make a pipeline valid.
//!
//! *Invariant:* no I/O, no HTTP or database types — only serde, regex and the
//! schema derive — so the API and its agents share these types.
//!
//! # The metrics a pipeline sees
//!
//! An agent samples every process and produces two gauges per process, each
//! labelled `process` (the process name) and `pid`:
//!
//! - [`PROCESS_CPU_METRIC`] `phoenix_process_cpu_percent`: CPU used since the
//!   previous sample, in percent of one CPU (as `top` shows it; a host total
//!   can exceed 100);
//! - [`PROCESS_MEMORY_METRIC`] `phoenix_process_memory_bytes`: resident memory.
//!
//! The control plane adds `job`, `agent`, `experiment` and `variant` (the
//! Pushgateway grouping key) when it forwards a push, and `instance`. A
//! pipeline cannot drop any of those, nor `process` ([`REQUIRED_LABELS`]).
//!
//! # Stages
//!
//! A pipeline is an ordered list of stages, applied to each sample in order;
//! an empty list is full fidelity. Whenever a stage makes two series equal in
//! name and labels, their values are **summed**, so host totals are kept:
//!
//! - `filter {include?, exclude?}`: keep the processes whose name matches
//!   `include` and does not match `exclude`. Both are regular expressions
//!   matched against the whole name (anchored, like PromQL's `=~`).
//! - `top_k {k, by: cpu|memory}`: keep the `k` processes with the highest CPU
//!   or memory (both metrics of each kept process); all others are summed
//!   into one process named [`OTHER_PROCESS`] without a `pid`.
//! - `aggregate_by_name`: sum processes that share a name; drops `pid`.
//! - `drop_labels {labels}`: remove these labels, summing series that then
//!   coincide.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// CPU of one process, in percent of one CPU; labels `process`, `pid`.
pub const PROCESS_CPU_METRIC: &str = "phoenix_process_cpu_percent";
/// Resident memory of one process, in bytes; labels `process`, `pid`.
pub const PROCESS_MEMORY_METRIC: &str = "phoenix_process_memory_bytes";
/// The label naming the process.
pub const PROCESS_LABEL: &str = "process";
/// The label holding the process id.
pub const PID_LABEL: &str = "pid";
/// The process name of the sum of everything `top_k` did not keep.
pub const OTHER_PROCESS: &str = "other";
/// Labels no pipeline may drop: the grouping labels, Prometheus' `instance`,
/// and `process`, which every stage keys on.
pub const REQUIRED_LABELS: [&str; 6] = [
    "job",
    "agent",
    "experiment",
    "variant",
    "instance",
    PROCESS_LABEL,
];

/// Most stages in one pipeline.
pub const MAX_STAGES: usize = 16;
/// Largest `k` of a `top_k` stage.
pub const MAX_TOP_K: u32 = 10_000;
/// Longest regular expression, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// Most memory one compiled regular expression may take.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// An ordered list of reduction stages; no stages means full fidelity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    #[serde(default)]
    pub stages: Vec<Stage>,
}

/// One step of a pipeline; `type` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage {
    /// Keep processes whose name matches `include` and not `exclude`.
    Filter {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        include: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exclude: Option<String>,
    },
    /// Keep the `k` busiest processes by `by`; sum the rest into `other`.
    TopK { k: u32, by: Resource },
    /// Sum processes of the same name (drops `pid`).
    AggregateByName,
    /// Remove labels, summing series that then coincide.
    DropLabels { labels: Vec<String> },
}

/// What `top_k` ranks processes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Cpu,
    Memory,
}

/// The `type` of every stage, as written in JSON.
pub const STAGE_TYPES: [&str; 4] = ["filter", "top_k", "aggregate_by_name", "drop_labels"];

/// Why a pipeline is refused: a stable `code` and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct SpecError {
    pub code: &'static str,
    pub detail: String,
}

impl SpecError {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        SpecError {
            code,
            detail: detail.into(),
        }
    }

    fn at(stage: usize, code: &'static str, detail: impl std::fmt::Display) -> Self {
        SpecError::new(code, format!("stage {stage}: {detail}"))
    }
}

impl PipelineSpec {
    /// Reads and validates a pipeline from JSON, naming the stage at fault
    /// (counted from 0) in every error.
    pub fn from_json(value: &serde_json::Value) -> Result<PipelineSpec, SpecError> {
        let Some(object) = value.as_object() else {
            return Err(SpecError::new(
                "invalid_pipeline",
                "a pipeline is an object like {\"stages\": [...]}",
            ));
        };
        if let Some(key) = object.keys().find(|k| k.as_str() != "stages") {
            return Err(SpecError::new(
                "invalid_pipeline",
                format!("unknown field `{key}`; a pipeline has only `stages`"),
            ));
        }
        let stages = match object.get("stages") {
            None | Some(serde_json::Value::Null) => &Vec::new(),
            Some(serde_json::Value::Array(stages)) => stages,
            Some(_) => {
                return Err(SpecError::new(
                    "invalid_pipeline",
                    "`stages` must be a list",
                ));
            }
        };
        if stages.len() > MAX_STAGES {
            return Err(SpecError::new(
                "too_many_stages",
                format!(
                    "a pipeline has at most {MAX_STAGES} stages; this one has {}",
                    stages.len()
                ),
            ));
        }
        let mut parsed = Vec::with_capacity(stages.len());
        for (i, stage) in stages.iter().enumerate() {
            let kind = stage.get("type").and_then(serde_json::Value::as_str);
            match kind {
                None => {
                    return Err(SpecError::at(
                        i,
                        "invalid_stage",
                        format!("needs a `type`, one of {}", STAGE_TYPES.join(", ")),
                    ));
                }
                Some(kind) if !STAGE_TYPES.contains(&kind) => {
                    return Err(SpecError::at(
                        i,
                        "unknown_stage",
                        format!(
                            "unknown type `{kind}`; the types are {}",
                            STAGE_TYPES.join(", ")
                        ),
                    ));
                }
                Some(_) => {}
            }
            let stage: Stage = serde_json::from_value(stage.clone())
                .map_err(|e| SpecError::at(i, "invalid_stage", e))?;
            parsed.push(stage);
        }
        let spec = PipelineSpec { stages: parsed };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every rule that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.stages.len() > MAX_STAGES {
            return Err(SpecError::new(
                "too_many_stages",
                format!("a pipeline has at most {MAX_STAGES} stages"),
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            match stage {
                Stage::Filter { include, exclude } => {
                    if include.is_none() && exclude.is_none() {
                        return Err(SpecError::at(
                            i,
                            "empty_filter",
                            "a filter needs `include`, `exclude` or both",
                        ));
                    }
                    for (field, pattern) in [("include", include), ("exclude", exclude)] {
                        if let Some(pattern) = pattern {
                            compile_name_regex(pattern).map_err(|e| {
                                SpecError::at(i, "invalid_regex", format!("`{field}`: {e}"))
                            })?;
                        }
                    }
                }
                Stage::TopK { k, .. } => {
                    if !(1..=MAX_TOP_K).contains(k) {
                        return Err(SpecError::at(
                            i,
                            "invalid_k",
                            format!("`k` must be between 1 and {MAX_TOP_K}; it is {k}"),
                        ));
                    }
                }
                Stage::AggregateByName => {}
                Stage::DropLabels { labels } => {
                    if labels.is_empty() {
                        return Err(SpecError::at(
                            i,
                            "empty_drop_labels",
                            "`labels` must name at least one label",
                        ));
                    }
                    for label in labels {
                        if !is_label_name(label) {
                            return Err(SpecError::at(
                                i,
                                "invalid_label",
                                format!(
                                    "`{label}` is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
                                ),
                            ));
                        }
                        if REQUIRED_LABELS.contains(&label.as_str()) {
                            return Err(SpecError::at(
                                i,
                                "required_label",
                                format!(
                                    "`{label}` cannot be dropped; these labels are required: {}",
                                    REQUIRED_LABELS.join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Compiles a process-name pattern as the agent applies it: anchored at both
/// ends, within [`MAX_REGEX_LEN`] and [`REGEX_SIZE_LIMIT`].
pub fn compile_name_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!(
            "the expression is {} bytes; at most {MAX_REGEX_LEN} are allowed",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                "the expression is too complex (it compiles to more than 1 MiB)".to_owned()
            }
            other => format!("not a valid regular expression: {other}"),
        })
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Task kinds the control plane sends to agents for experiments.
pub mod task {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use super::PipelineSpec;

    /// Run both pipelines side by side and push each as its variant of the
    /// experiment (`?experiment=<id>&variant=baseline|candidate`) for
    /// `duration_seconds` from when the task is received. Succeed once both
    /// run; fail if either cannot.
    pub const RUN_EXPERIMENT: &str = "run_experiment";
    /// Stop running the experiment's pipelines at once.
    pub const STOP_EXPERIMENT: &str = "stop_experiment";
    /// Make `spec` the live pipeline (pushed without experiment and variant).
    pub const APPLY_PIPELINE: &str = "apply_pipeline";

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RunExperiment {
        pub experiment_id: Uuid,
        pub baseline: PipelineSpec,
        pub candidate: PipelineSpec,
        pub duration_seconds: u64,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StopExperiment {
        pub experiment_id: Uuid,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApplyPipeline {
        /// The experiment whose decision this applies.
        pub experiment_id: Uuid,
        /// `candidate` on promote, `baseline` on rollback.
        pub variant: String,
        pub spec: PipelineSpec,
    }
}

/// A ready-made pipeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub spec: PipelineSpec,
}

/// The templates, full fidelity first.
pub fn templates() -> Vec<Template> {
    let top_k = |by| PipelineSpec {
        stages: vec![Stage::TopK { k: 10, by }],
    };
    vec![
        Template {
            name: "full_fidelity",
            description: "Every process with every label: the usual baseline.",
            spec: PipelineSpec::default(),
        },
        Template {
            name: "top_k_cpu_10",
            description: "The 10 processes using the most CPU; the rest summed into `other`.",
            spec: top_k(Resource::Cpu),
        },
        Template {
            name: "top_k_memory_10",
            description: "The 10 processes using the most memory; the rest summed into `other`.",
            spec: top_k(Resource::Memory),
        },
        Template {
            name: "aggregate_by_name",
            description: "One series per process name and metric, summed over its instances.",
            spec: PipelineSpec {
                stages: vec![Stage::AggregateByName],
            },
        },
        Template {
            name: "drop_pid",
            description: "Drops the `pid` label, summing processes of the same name.",
            spec: PipelineSpec {
                stages: vec![Stage::DropLabels {
                    labels: vec![PID_LABEL.to_owned()],
                }],
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code_of(value: serde_json::Value) -> String {
        PipelineSpec::from_json(&value).unwrap_err().code.to_owned()
    }

    #[test]
    fn a_full_pipeline_round_trips() {
        let value = json!({"stages": [
            {"type": "filter", "include": "nginx|postgres.*", "exclude": "kworker/.*"},
            {"type": "top_k", "k": 10, "by": "cpu"},
            {"type": "aggregate_by_name"},
            {"type": "drop_labels", "labels": ["pid"]},
        ]});
        let spec = PipelineSpec::from_json(&value).unwrap();
        assert_eq!(spec.stages.len(), 4);
        assert_eq!(
            spec.stages[1],
            Stage::TopK {
                k: 10,
                by: Resource::Cpu
            }
        );
        assert_eq!(serde_json::to_value(&spec).unwrap(), value);
    }

    #[test]
    fn no_stages_is_full_fidelity() {
        assert_eq!(
            PipelineSpec::from_json(&json!({})).unwrap(),
            PipelineSpec::default()
        );
        assert_eq!(
            PipelineSpec::from_json(&json!({"stages": []})).unwrap(),
            PipelineSpec::default()
        );
    }

    #[test]
    fn each_mistake_has_its_code() {
        let cases = [
            (json!([]), "invalid_pipeline"),
            (json!({"stages": {}}), "invalid_pipeline"),
            (json!({"stages": [], "extra": 1}), "invalid_pipeline"),
            (json!({"stages": [{}]}), "invalid_stage"),
            (json!({"stages": [{"type": "sample"}]}), "unknown_stage"),
            (json!({"stages": [{"type": 3}]}), "invalid_stage"),
            (
                json!({"stages": [{"type": "top_k", "k": 10, "by": "disk"}]}),
                "invalid_stage",
            ),
            (
                json!({"stages": [{"type": "top_k", "k": -1, "by": "cpu"}]}),
                "invalid_stage",
            ),
            (
                json!({"stages": [{"type": "top_k", "k": 10, "by": "cpu", "x": 1}]}),
                "invalid_stage",
            ),
            (
                json!({"stages": [{"type": "top_k", "by": "cpu"}]}),
                "invalid_stage",
            ),
            (
                json!({"stages": [{"type": "top_k", "k": 0, "by": "cpu"}]}),
                "invalid_k",
            ),
            (
                json!({"stages": [{"type": "top_k", "k": MAX_TOP_K + 1, "by": "memory"}]}),
                "invalid_k",
            ),
            (json!({"stages": [{"type": "filter"}]}), "empty_filter"),
            (
                json!({"stages": [{"type": "filter", "include": "(unclosed"}]}),
                "invalid_regex",
            ),
            (
                json!({"stages": [{"type": "filter", "exclude": "a{1000}{1000}"}]}),
                "invalid_regex",
            ),
            (
                json!({"stages": [{"type": "filter", "include": "a".repeat(MAX_REGEX_LEN + 1)}]}),
                "invalid_regex",
            ),
            (
                json!({"stages": [{"type": "drop_labels", "labels": []}]}),
                "empty_drop_labels",
            ),
            (
                json!({"stages": [{"type": "drop_labels", "labels": ["bad-name"]}]}),
                "invalid_label",
            ),
            (
                json!({"stages": [{"type": "drop_labels", "labels": ["__name__"]}]}),
                "invalid_label",
            ),
            (
                json!({"stages": [{"type": "drop_labels", "labels": ["pid", "process"]}]}),
                "required_label",
            ),
            (
                json!({"stages": [{"type": "drop_labels", "labels": ["agent"]}]}),
                "required_label",
            ),
            (
                json!({"stages": vec![json!({"type": "aggregate_by_name"}); MAX_STAGES + 1]}),
                "too_many_stages",
            ),
        ];
        for (value, code) in cases {
            assert_eq!(code_of(value.clone()), code, "{value}");
        }
    }

    #[test]
    fn errors_name_the_stage() {
        let e = PipelineSpec::from_json(&json!({"stages": [
            {"type": "aggregate_by_name"},
            {"type": "top_k", "k": 0, "by": "cpu"},
        ]}))
        .unwrap_err();
        assert!(e.detail.starts_with("stage 1: "), "{}", e.detail);
        let e = PipelineSpec::from_json(&json!({"stages": [{"type": "sample"}]})).unwrap_err();
        assert!(e.detail.contains("filter, top_k"), "{}", e.detail);
    }

    #[test]
    fn name_patterns_are_anchored() {
        let re = compile_name_regex("nginx|postgres").unwrap();
        assert!(re.is_match("nginx"));
        assert!(!re.is_match("nginx-worker"));
        assert!(!re.is_match("my-postgres"));
    }

    #[test]
    fn every_template_is_valid_and_named_once() {
        let templates = templates();
        let mut names: Vec<_> = templates.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), templates.len());
        assert_eq!(templates[0].name, "full_fidelity");
        for t in templates {
            t.spec.validate().unwrap();
            let json = serde_json::to_value(&t.spec).unwrap();
            assert_eq!(PipelineSpec::from_json(&json).unwrap(), t.spec);
        }
    }
}
