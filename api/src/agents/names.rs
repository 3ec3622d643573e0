//! The names an agent's series may carry: Prometheus's metric and label
//! name syntax, and what Phoenix keeps for itself.
//!
//! Architecture invariant: pure functions and constants; no I/O.

/// Labels the API sets on every series an agent writes.
pub const RESERVED_LABELS: [&str; 5] = ["agent", "experiment", "variant", "job", "instance"];

/// Metric names a Pushgateway adds to its groups, which the KPI and cost
/// queries leave out: an agent may not write them.
pub const RESERVED_METRICS: [&str; 2] = ["push_time_seconds", "push_failure_time_seconds"];

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_syntax() {
        for ok in ["a", "_x", "ns:sub_total", "A9"] {
            assert!(is_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        assert!(is_label_name("_pid") && is_label_name("process"));
        for bad in ["", "a:b", "1x", "a.b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
