//! The labels every series of an agent carries in Prometheus: `job`
//! ([`JOB`]), `agent`, `experiment` and `variant` ([`NONE`] outside an
//! experiment), which the API's relabelling of remote writes sets and KPI
//! and cost queries select series by.
//!
//! *Invariant:* a leaf: no I/O, and it uses no other module of the crate.

/// The `job` of every agent series.
pub const JOB: &str = "phoenix-agent";

/// The `experiment` and `variant` of series sent outside an experiment.
pub const NONE: &str = "none";

/// A Pushgateway's own series, which agents may not write and queries
/// never count.
pub const PUSHGATEWAY_META: &str = "push_time_seconds|push_failure_time_seconds";
