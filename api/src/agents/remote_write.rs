//! Validation and relabelling of a Prometheus remote-write request, the body
//! of an agent's write (the messages are `phoenix_wire::remote_write`).
//!
//! Architecture invariant: pure functions over a decoded request; no I/O and
//! no clock (the caller says which timestamps are acceptable). The rules
//! ([`super::names`]): metric and label name syntax, label names starting
//! with `__` (other than `__name__`) and the labels Phoenix sets itself
//! (`agent`, `experiment`, `variant`, `job`, `instance`) refused, a
//! Pushgateway's metric names refused, an empty label value counting as no label, no label or series
//! twice, the series bounded. Timestamped samples add their own: in
//! timestamp order within a series, none older than the receiver's
//! out-of-order window, none from the future. Exemplars, native histograms
//! and metadata are refused: agents collect float samples only.
//!
//! A valid request is also put in the form a receiver expects: empty label
//! values dropped and labels sorted by name.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat};
use phoenix_wire::remote_write::{Label, NAME_LABEL, Shape, TimeSeries, WriteRequest};

use super::names::{RESERVED_LABELS, RESERVED_METRICS, is_label_name, is_metric_name};

/// What one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_series: usize,
    pub max_samples: usize,
    /// The oldest sample timestamp accepted, in milliseconds since the epoch.
    pub oldest_ms: i64,
    /// The newest one.
    pub newest_ms: i64,
}

/// What a valid request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub series: usize,
    pub samples: usize,
    /// The oldest and the newest sample timestamp (ms); `None` without series.
    pub span: Option<(i64, i64)>,
}

/// Why a request is invalid: a stable code, the series it is about (0-based,
/// in the request's order; `None` for the request as a whole) and an
/// explanation for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{detail}", match .index { Some(i) => format!("series {i}: "), None => String::new() })]
pub struct Invalid {
    pub code: &'static str,
    pub index: Option<usize>,
    pub detail: String,
}

/// Labels a request may hold, for each series it may hold.
pub const MAX_LABELS_PER_SERIES: usize = 32;

fn whole(code: &'static str, detail: String) -> Invalid {
    Invalid {
        code,
        index: None,
        detail,
    }
}

/// Checks the counts of a request before it is decoded ([`Shape::of`]):
/// what [`validate`] would refuse for its size, and more labels than
/// [`MAX_LABELS_PER_SERIES`] times the series it may hold.
pub fn check_shape(shape: &Shape, limits: &Limits) -> Result<(), Invalid> {
    check_counts(shape.series, shape.samples, limits)?;
    let max_labels = limits.max_series * MAX_LABELS_PER_SERIES;
    if shape.labels > max_labels {
        return Err(whole(
            "too_many_labels",
            format!(
                "a batch may hold at most {max_labels} labels, this one holds {}; \
                 send smaller batches or fewer labels",
                shape.labels
            ),
        ));
    }
    Ok(())
}

fn check_counts(series: usize, samples: usize, limits: &Limits) -> Result<(), Invalid> {
    if series > limits.max_series {
        return Err(whole(
            "too_many_series",
            format!(
                "a batch may hold at most {} series, this one holds {series}; \
                 send smaller batches or reduce cardinality",
                limits.max_series
            ),
        ));
    }
    if samples > limits.max_samples {
        return Err(whole(
            "too_many_samples",
            format!(
                "a batch may hold at most {} samples, this one holds {samples}; send smaller batches",
                limits.max_samples
            ),
        ));
    }
    Ok(())
}

/// Checks `request` against the rules and `limits`, and puts each series'
/// labels in canonical form (empty values dropped, sorted by name).
pub fn validate(request: &mut WriteRequest, limits: &Limits) -> Result<Summary, Invalid> {
    if !request.metadata.is_empty() {
        return Err(whole(
            "unsupported_sample_type",
            "metric metadata is not accepted; send float samples only".into(),
        ));
    }
    let (series, samples) = (request.timeseries.len(), request.sample_count());
    check_counts(series, samples, limits)?;
    let mut span: Option<(i64, i64)> = None;
    for (index, series) in request.timeseries.iter_mut().enumerate() {
        let (first, last) = check_series(series, limits).map_err(|(code, detail)| Invalid {
            code,
            index: Some(index),
            detail,
        })?;
        span = Some(span.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
    }
    // Labels are canonical now, so equal label sets are the same series.
    let mut seen: HashSet<&[Label]> = HashSet::with_capacity(series);
    for (index, series) in request.timeseries.iter().enumerate() {
        if !seen.insert(&series.labels) {
            return Err(Invalid {
                code: "duplicate_series",
                index: Some(index),
                detail: format!(
                    "{} appears twice with the same labels; send each series once per batch, \
                     with all its samples",
                    series.label(NAME_LABEL).unwrap_or_default()
                ),
            });
        }
    }
    Ok(Summary {
        series,
        samples,
        span,
    })
}

/// One series' checks; its first and last timestamps.
fn check_series(
    series: &mut TimeSeries,
    limits: &Limits,
) -> Result<(i64, i64), (&'static str, String)> {
    let name = series.label(NAME_LABEL).unwrap_or_default().to_owned();
    if !series.exemplars.is_empty() || !series.histograms.is_empty() {
        return Err((
            "unsupported_sample_type",
            format!(
                "{name}: exemplars and native histograms are not accepted; send float samples only"
            ),
        ));
    }
    for label in &series.labels {
        if label.name == NAME_LABEL {
            if !label.value.is_empty() && !is_metric_name(&label.value) {
                let shown: String = label.value.chars().take(64).collect();
                return Err((
                    "invalid_metric_name",
                    format!("{shown:?} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
                ));
            }
            continue;
        }
        if !is_label_name(&label.name) {
            let shown: String = label.name.chars().take(32).collect();
            return Err((
                "invalid_label_name",
                format!("{name}: {shown:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
            ));
        }
        if label.name.starts_with("__") {
            return Err((
                "invalid_label_name",
                format!(
                    "{name}: the label {} starts with __, which is reserved for Prometheus",
                    label.name
                ),
            ));
        }
        if RESERVED_LABELS.contains(&label.name.as_str()) {
            return Err((
                "reserved_label",
                format!(
                    "{name}: the label {} is set by Phoenix (agent, experiment, variant, job, instance); remove it",
                    label.name
                ),
            ));
        }
    }
    series.labels.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = series.labels.windows(2).find(|w| w[0].name == w[1].name) {
        return Err((
            "duplicate_label",
            format!("{name}: the label {} appears twice", pair[0].name),
        ));
    }
    // Series identity as Prometheus sees it: an empty label is no label.
    series.labels.retain(|l| !l.value.is_empty());
    if name.is_empty() {
        return Err((
            "invalid_metric_name",
            "the series has no __name__ label (its metric name)".into(),
        ));
    }
    if RESERVED_METRICS.contains(&name.as_str()) {
        return Err((
            "reserved_metric_name",
            format!("{name} is a metric name the Pushgateway sets itself"),
        ));
    }
    let (Some(first), Some(last)) = (series.samples.first(), series.samples.last()) else {
        return Err(("invalid_write_request", format!("{name} has no samples")));
    };
    let (first, last) = (first.timestamp, last.timestamp);
    let mut previous: Option<i64> = None;
    for sample in &series.samples {
        let t = sample.timestamp;
        if previous.is_some_and(|p| t <= p) {
            return Err((
                "samples_out_of_order",
                format!(
                    "{name}: the sample at {} follows one at {}; send a series' samples \
                     oldest first, each timestamp once",
                    time(t),
                    time(previous.unwrap_or_default())
                ),
            ));
        }
        if t < limits.oldest_ms {
            return Err((
                "sample_too_old",
                format!(
                    "{name}: the sample at {} is older than {}, the start of the receiver's \
                     out-of-order window; it cannot be stored, drop the batch",
                    time(t),
                    time(limits.oldest_ms)
                ),
            ));
        }
        if t > limits.newest_ms {
            return Err((
                "sample_in_future",
                format!(
                    "{name}: the sample at {} is later than {}, ahead of the API's clock by more \
                     than it allows; check the agent's clock",
                    time(t),
                    time(limits.newest_ms)
                ),
            ));
        }
        previous = Some(t);
    }
    Ok((first, last))
}

/// Adds `labels` (names the validator refuses in a request, so never there
/// already) to every series, keeping each series' labels sorted by name.
pub fn relabel(request: &mut WriteRequest, labels: &[(&str, &str)]) {
    for series in &mut request.timeseries {
        series
            .labels
            .extend(labels.iter().map(|(name, value)| Label::new(*name, *value)));
        series.labels.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// A timestamp in milliseconds as RFC 3339, for messages.
pub fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::remote_write::Sample;

    const NOW: i64 = 1_800_000_000_000;
    const LIMITS: Limits = Limits {
        max_series: 3,
        max_samples: 5,
        oldest_ms: NOW - 6 * 3600 * 1000,
        newest_ms: NOW + 5 * 60 * 1000,
    };

    #[test]
    fn a_shape_past_the_counts_is_refused_before_decoding() {
        let shape = |series, labels, samples| Shape {
            series,
            labels,
            samples,
        };
        let code = |s: Shape| check_shape(&s, &LIMITS).err().map(|e| e.code);
        assert_eq!(code(shape(3, 3 * MAX_LABELS_PER_SERIES, 5)), None);
        assert_eq!(code(shape(4, 4, 4)), Some("too_many_series"));
        assert_eq!(code(shape(3, 3, 6)), Some("too_many_samples"));
        assert_eq!(
            code(shape(1, 3 * MAX_LABELS_PER_SERIES + 1, 1)),
            Some("too_many_labels")
        );
    }

    fn series(labels: &[(&str, &str)], timestamps: &[i64]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            samples: timestamps
                .iter()
                .map(|&timestamp| Sample {
                    value: 1.5,
                    timestamp,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(series: Vec<TimeSeries>) -> WriteRequest {
        WriteRequest {
            timeseries: series,
            ..Default::default()
        }
    }

    fn err(series: Vec<TimeSeries>) -> Invalid {
        validate(&mut request(series), &LIMITS).expect_err("refused")
    }

    #[test]
    fn a_valid_request_is_summed_up_and_made_canonical() {
        let mut r = request(vec![
            series(
                &[("process", "nginx"), ("empty", ""), ("__name__", "cpu")],
                &[NOW - 600_000, NOW - 300_000],
            ),
            series(&[("__name__", "cpu"), ("process", "other")], &[NOW]),
        ]);
        let summary = validate(&mut r, &LIMITS).unwrap();
        assert_eq!(
            summary,
            Summary {
                series: 2,
                samples: 3,
                span: Some((NOW - 600_000, NOW))
            }
        );
        let names: Vec<&str> = r.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["__name__", "process"],
            "sorted, empty value dropped"
        );
        assert_eq!(
            validate(&mut request(vec![]), &LIMITS).unwrap(),
            Summary {
                series: 0,
                samples: 0,
                span: None
            }
        );
    }

    #[test]
    fn names_follow_the_text_push_rules() {
        let e = err(vec![
            series(&[("__name__", "ok")], &[NOW]),
            series(&[("__name__", "1bad")], &[NOW]),
        ]);
        assert_eq!((e.code, e.index), ("invalid_metric_name", Some(1)), "{e}");
        assert!(e.to_string().starts_with("series 1: "), "{e}");
        assert_eq!(
            err(vec![series(&[("a", "b")], &[NOW])]).code,
            "invalid_metric_name"
        );
        assert_eq!(
            err(vec![series(&[("__name__", "m"), ("a-b", "x")], &[NOW])]).code,
            "invalid_label_name"
        );
        let e = err(vec![series(&[("__name__", "m"), ("__meta", "x")], &[NOW])]);
        assert_eq!(e.code, "invalid_label_name");
        assert!(e.detail.contains("__meta"), "{e}");
        for label in RESERVED_LABELS {
            let e = err(vec![series(&[("__name__", "m"), (label, "x")], &[NOW])]);
            assert_eq!(e.code, "reserved_label", "{label}");
        }
        assert_eq!(
            err(vec![series(&[("__name__", "push_time_seconds")], &[NOW])]).code,
            "reserved_metric_name"
        );
        assert_eq!(
            err(vec![series(
                &[("__name__", "m"), ("a", "1"), ("a", "2")],
                &[NOW]
            )])
            .code,
            "duplicate_label"
        );
    }

    #[test]
    fn the_same_series_twice_is_refused_empty_labels_counting_as_none() {
        let e = err(vec![
            series(&[("__name__", "m"), ("a", "1")], &[NOW]),
            series(&[("__name__", "m")], &[NOW]),
            series(&[("a", "1"), ("__name__", "m"), ("b", "")], &[NOW - 1]),
        ]);
        assert_eq!((e.code, e.index), ("duplicate_series", Some(2)), "{e}");
    }

    #[test]
    fn samples_must_be_ordered_and_within_the_time_range() {
        let m = [("__name__", "m")];
        let e = err(vec![series(&m, &[NOW, NOW - 1])]);
        assert_eq!((e.code, e.index), ("samples_out_of_order", Some(0)), "{e}");
        assert_eq!(
            err(vec![series(&m, &[NOW, NOW])]).code,
            "samples_out_of_order"
        );
        let e = err(vec![series(&m, &[NOW]), series(&m[..0], &[])]);
        assert_eq!(e.index, Some(1));
        let e = err(vec![
            series(&[("__name__", "m"), ("i", "0")], &[NOW]),
            series(&m, &[LIMITS.oldest_ms - 1, NOW]),
        ]);
        assert_eq!((e.code, e.index), ("sample_too_old", Some(1)), "{e}");
        assert_eq!(
            err(vec![series(&m, &[LIMITS.newest_ms + 1])]).code,
            "sample_in_future"
        );
        let edges = validate(
            &mut request(vec![series(&m, &[LIMITS.oldest_ms, LIMITS.newest_ms])]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(edges.span, Some((LIMITS.oldest_ms, LIMITS.newest_ms)));
        assert_eq!(err(vec![series(&m, &[])]).code, "invalid_write_request");
    }

    #[test]
    fn series_and_samples_are_bounded() {
        let four: Vec<TimeSeries> = (0..4)
            .map(|i| series(&[("__name__", "m"), ("i", &i.to_string())], &[NOW]))
            .collect();
        let e = err(four);
        assert_eq!((e.code, e.index), ("too_many_series", None), "{e}");
        let e = err(vec![series(&[("__name__", "m")], &[1, 2, 3, 4, 5, 6])]);
        assert_eq!(e.code, "too_many_samples");
    }

    #[test]
    fn other_sample_types_are_refused() {
        let mut with_exemplar = series(&[("__name__", "m")], &[NOW]);
        with_exemplar.exemplars.push(vec![1]);
        assert_eq!(err(vec![with_exemplar]).code, "unsupported_sample_type");
        let mut with_histogram = series(&[("__name__", "m")], &[NOW]);
        with_histogram.histograms.push(vec![1]);
        assert_eq!(err(vec![with_histogram]).code, "unsupported_sample_type");
        let mut r = request(vec![series(&[("__name__", "m")], &[NOW])]);
        r.metadata.push(vec![1]);
        let e = validate(&mut r, &LIMITS).unwrap_err();
        assert_eq!((e.code, e.index), ("unsupported_sample_type", None));
    }

    #[test]
    fn relabelling_adds_the_labels_in_name_order() {
        let mut r = request(vec![series(
            &[("__name__", "m"), ("zone", "a"), ("pid", "1")],
            &[NOW],
        )]);
        validate(&mut r, &LIMITS).unwrap();
        relabel(
            &mut r,
            &[
                ("job", "phoenix-agent"),
                ("agent", "x"),
                ("experiment", "none"),
                ("variant", "none"),
            ],
        );
        let names: Vec<&str> = r.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "__name__",
                "agent",
                "experiment",
                "job",
                "pid",
                "variant",
                "zone"
            ]
        );
    }
}
