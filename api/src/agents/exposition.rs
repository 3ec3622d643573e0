//! Validation of the Prometheus text exposition format (version 0.0.4), the
//! body of an agent's metric push.
//!
//! Architecture invariant: pure functions over a string; no I/O. The body is
//! forwarded unchanged once it passes, so the checks here are what keeps a
//! malformed, oversized or label-spoofing push away from the Pushgateway:
//! every line must parse, names must be valid, the labels the API sets
//! itself (`agent`, `experiment`, `variant`, `job`, `instance`) must not be
//! present, timestamps are refused (the Pushgateway refuses them too), and
//! the number of series is bounded.

use std::collections::{HashMap, HashSet};

/// Labels the API sets on every pushed series (the Pushgateway grouping key,
/// plus `instance`, which the Pushgateway would otherwise fill in).
pub const RESERVED_LABELS: [&str; 5] = ["agent", "experiment", "variant", "job", "instance"];

/// Metric names the Pushgateway adds to every group itself.
pub const RESERVED_METRICS: [&str; 2] = ["push_time_seconds", "push_failure_time_seconds"];

/// What a valid body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Samples, each a distinct series.
    pub series: usize,
    /// Metric families (names with a TYPE, or sample names without one).
    pub families: usize,
}

/// Why a body is invalid: a stable code, the 1-based line (0 for the body as
/// a whole) and an explanation for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{detail}", if *.line > 0 { format!("line {}: ", .line) } else { String::new() })]
pub struct Invalid {
    pub code: &'static str,
    pub line: usize,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// Per family: its type, and whether HELP or samples were seen.
#[derive(Debug, Default)]
struct Family {
    kind: Option<Kind>,
    help: bool,
    sampled: bool,
}

/// Checks `text` and counts its series; at most `max_series` are allowed.
pub fn validate(text: &str, max_series: usize) -> Result<Summary, Invalid> {
    let mut families: HashMap<&str, Family> = HashMap::new();
    let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let fail = |code: &'static str, detail: String| Invalid { code, line, detail };
        let content = raw.trim_start_matches([' ', '\t']);
        if content.is_empty() {
            continue;
        }
        if let Some(comment) = content.strip_prefix('#') {
            directive(comment, &mut families).map_err(|(code, detail)| fail(code, detail))?;
            continue;
        }
        let sample = parse_sample(content).map_err(|(code, detail)| fail(code, detail))?;
        if RESERVED_METRICS.contains(&sample.name) {
            return Err(fail(
                "reserved_metric_name",
                format!("{} is added by the Pushgateway itself", sample.name),
            ));
        }
        let family_name = family_of(sample.name, &families);
        let family = families.entry(family_name).or_default();
        family.sampled = true;
        match family.kind.get_or_insert(Kind::Untyped) {
            Kind::Histogram if sample.name.ends_with("_bucket") => {
                require_float_label(&sample, "le").map_err(|d| fail("invalid_histogram", d))?;
            }
            Kind::Summary if sample.name == family_name => {
                require_float_label(&sample, "quantile").map_err(|d| fail("invalid_summary", d))?;
            }
            _ => {}
        }
        // Series identity as Prometheus sees it: an empty label is no label.
        let mut labels: Vec<(String, String)> = sample
            .labels
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        labels.sort();
        if !seen.insert((sample.name.to_owned(), labels)) {
            return Err(fail(
                "duplicate_series",
                format!(
                    "{} appears twice with the same labels; each series may be pushed once",
                    sample.name
                ),
            ));
        }
        if seen.len() > max_series {
            return Err(fail(
                "too_many_series",
                format!(
                    "a push may hold at most {max_series} series; split it or reduce cardinality"
                ),
            ));
        }
    }
    Ok(Summary {
        series: seen.len(),
        families: families.len(),
    })
}

/// The family a sample belongs to: `x` for `x_bucket`, `x_sum`, `x_count`
/// when `x` is a declared histogram (or summary, for `_sum` and `_count`).
fn family_of<'a>(name: &'a str, families: &HashMap<&str, Family>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            match families.get(base).and_then(|f| f.kind) {
                Some(Kind::Histogram) => return base,
                Some(Kind::Summary) if suffix != "_bucket" => return base,
                _ => {}
            }
        }
    }
    name
}

fn require_float_label(sample: &Sample<'_>, label: &str) -> Result<(), String> {
    match sample.labels.iter().find(|(name, _)| *name == label) {
        Some((_, value)) if parse_float(value).is_some() => Ok(()),
        Some((_, value)) => Err(format!(
            "{}: label {label}={value:?} is not a number",
            sample.name
        )),
        None => Err(format!("{}: needs a {label} label", sample.name)),
    }
}

/// A `# HELP`, `# TYPE` or plain comment line (after the `#`).
fn directive<'a>(
    comment: &'a str,
    families: &mut HashMap<&'a str, Family>,
) -> Result<(), (&'static str, String)> {
    let mut tokens = comment
        .trim_start_matches([' ', '\t'])
        .splitn(2, [' ', '\t']);
    let keyword = tokens.next().unwrap_or("");
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(());
    }
    let rest = tokens.next().unwrap_or("").trim_start_matches([' ', '\t']);
    let (name, text) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    if !is_metric_name(name) {
        return Err((
            "invalid_metric_name",
            format!("# {keyword} names {name:?}, which is not a valid metric name"),
        ));
    }
    let family = families.entry(name).or_default();
    if keyword == "HELP" {
        if family.help {
            return Err(("invalid_help", format!("a second HELP line for {name}")));
        }
        check_escapes(text).map_err(|d| ("invalid_help", format!("HELP of {name}: {d}")))?;
        family.help = true;
        return Ok(());
    }
    let kind_text = text.trim_matches([' ', '\t']);
    let Some(kind) = Kind::parse(kind_text) else {
        return Err((
            "invalid_type",
            format!(
                "TYPE of {name} is {kind_text:?}; expected counter, gauge, histogram, summary or untyped"
            ),
        ));
    };
    if family.kind.is_some() || family.sampled {
        return Err((
            "invalid_type",
            format!("a second TYPE line for {name}, or a TYPE line after its samples"),
        ));
    }
    family.kind = Some(kind);
    Ok(())
}

#[derive(Debug)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
}

/// `name[{label="value",...}] value` — a timestamp is refused.
fn parse_sample(line: &str) -> Result<Sample<'_>, (&'static str, String)> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        let shown: String = line.chars().take(64).collect();
        return Err((
            "invalid_metric_name",
            format!("{shown:?} does not start with a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    let after_name = &line[name_end..];
    if let Some(c) = after_name.chars().next()
        && !matches!(c, ' ' | '\t' | '{')
    {
        return Err((
            "invalid_metric_name",
            format!("{name}{c}: {c:?} is not allowed in a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    let mut rest = after_name.trim_start_matches([' ', '\t']);
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(name, after_brace, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let Some(value) = fields.next() else {
        return Err(("invalid_value", format!("{name} has no value")));
    };
    if parse_float(value).is_none() {
        return Err((
            "invalid_value",
            format!("{name}: {value:?} is not a number (use e.g. 1, 2.5e3, NaN, +Inf)"),
        ));
    }
    if let Some(extra) = fields.next() {
        return Err(if extra.parse::<i64>().is_ok() {
            (
                "timestamp_not_allowed",
                format!("{name} has a timestamp; pushed samples must not carry one"),
            )
        } else {
            (
                "invalid_syntax",
                format!("{name}: unexpected {extra:?} after the value"),
            )
        });
    }
    Ok(Sample { name, labels })
}

/// Parses `label="value", ...}` (after the `{`) into `labels`; returns the
/// rest of the line after the `}`.
fn parse_labels<'a>(
    metric: &str,
    mut rest: &'a str,
    labels: &mut Vec<(&'a str, String)>,
) -> Result<&'a str, (&'static str, String)> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let label = &rest[..name_end];
        if !is_label_name(label) {
            let shown: String = rest.chars().take(32).collect();
            return Err((
                "invalid_label_name",
                format!(
                    "{metric}: {shown:?} does not start with a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                ),
            ));
        }
        if label.starts_with("__") {
            return Err((
                "invalid_label_name",
                format!("{metric}: label names starting with __ are reserved for Prometheus"),
            ));
        }
        if RESERVED_LABELS.contains(&label) {
            return Err((
                "reserved_label",
                format!(
                    "{metric}: the label {label} is set by Phoenix (agent, experiment, variant, job, instance); remove it"
                ),
            ));
        }
        if labels.iter().any(|(l, _)| *l == label) {
            return Err((
                "duplicate_label",
                format!("{metric}: the label {label} appears twice"),
            ));
        }
        rest = &rest[name_end..];
        if let Some(c) = rest.chars().next()
            && !matches!(c, ' ' | '\t' | '=')
        {
            return Err((
                "invalid_label_name",
                format!("{metric}: {c:?} is not allowed in a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
            ));
        }
        rest = rest.trim_start_matches([' ', '\t']);
        let Some(after_eq) = rest.strip_prefix('=') else {
            return Err((
                "invalid_syntax",
                format!("{metric}: expected = after the label {label}"),
            ));
        };
        rest = after_eq.trim_start_matches([' ', '\t']);
        let Some(quoted) = rest.strip_prefix('"') else {
            return Err((
                "invalid_label_value",
                format!("{metric}: the value of {label} must be in double quotes"),
            ));
        };
        let (value, after) = parse_quoted(quoted).map_err(|d| {
            (
                "invalid_label_value",
                format!("{metric}, label {label}: {d}"),
            )
        })?;
        labels.push((label, value));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return Err((
                "invalid_syntax",
                format!("{metric}: expected , or }} after the label {label}"),
            ));
        }
    }
}

/// A label value after its opening quote: the unescaped value and the rest
/// after the closing quote.
fn parse_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("invalid escape \\{other}")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("the closing quote is missing".into())
}

/// HELP text allows the escapes `\\` and `\n`.
fn check_escapes(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some(other) => return Err(format!("invalid escape \\{other}")),
                None => return Err("a lone \\ at the end".into()),
            }
        }
    }
    Ok(())
}

/// Rust's float syntax matches Prometheus' for the usual spellings,
/// including NaN, +Inf and -Inf (case-insensitive).
fn parse_float(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

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

    fn ok(text: &str) -> Summary {
        validate(text, 100).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> Invalid {
        validate(text, 100).expect_err(text)
    }

    #[test]
    fn accepts_the_format_as_exporters_write_it() {
        let text = "# HELP process_cpu_seconds_total Total CPU time.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total{pid=\"42\",comm=\"nginx: worker\"} 12.5\n\
                    process_cpu_seconds_total{pid=\"43\",comm=\"a \\\"quoted\\\" \\\\ name\\n\",} 1e3\n\
                    \n\
                    # a free comment\n\
                    # TYPE temperature gauge\n\
                    temperature -Inf\n\
                    temperature{room=\"hall\"} 0\n\
                    up NaN\n\
                    \tindented {a = \"b\" , } +Inf\n\
                    # TYPE rpc histogram\n\
                    rpc_bucket{le=\"0.5\"} 1\n\
                    rpc_bucket{le=\"+Inf\"} 2\n\
                    rpc_sum 0.7\n\
                    rpc_count 2\n\
                    # TYPE lat summary\n\
                    lat{quantile=\"0.99\"} 3\n\
                    lat_sum 10\n\
                    lat_count 4\n\
                    ns:metric:rate5m 1\n";
        let summary = ok(text);
        assert_eq!(summary.series, 14, "{summary:?}");
        assert_eq!(summary.families, 7, "{summary:?}");
    }

    #[test]
    fn an_empty_body_is_valid_and_empty() {
        assert_eq!(
            ok(""),
            Summary {
                series: 0,
                families: 0
            }
        );
        assert_eq!(ok("\n\n# only comments\n").series, 0);
    }

    #[test]
    fn bad_metric_names_are_refused_with_their_line() {
        let e = err("good 1\n1bad 2\n");
        assert_eq!((e.code, e.line), ("invalid_metric_name", 2), "{e}");
        assert_eq!(err("metric-name 1").code, "invalid_metric_name");
        assert_eq!(err("métrique 1").code, "invalid_metric_name");
        assert_eq!(err("# TYPE 9lives gauge").code, "invalid_metric_name");
        assert_eq!(err("{a=\"b\"} 1").code, "invalid_metric_name");
        assert!(err("good 1\n1bad 2\n").to_string().starts_with("line 2: "));
    }

    #[test]
    fn bad_label_names_and_values_are_refused() {
        assert_eq!(err("m{1a=\"x\"} 1").code, "invalid_label_name");
        assert_eq!(err("m{a-b=\"x\"} 1").code, "invalid_label_name");
        assert_eq!(err("m{__name__=\"x\"} 1").code, "invalid_label_name");
        assert_eq!(err("m{a=x} 1").code, "invalid_label_value");
        assert_eq!(err("m{a=\"x} 1").code, "invalid_label_value");
        assert_eq!(err("m{a=\"\\t\"} 1").code, "invalid_label_value");
        assert_eq!(err("m{a=\"x\",a=\"y\"} 1").code, "duplicate_label");
        assert_eq!(err("m{a=\"x\" b=\"y\"} 1").code, "invalid_syntax");
        assert_eq!(err("m{a \"x\"} 1").code, "invalid_syntax");
    }

    #[test]
    fn labels_that_phoenix_sets_are_reserved() {
        for label in RESERVED_LABELS {
            let e = err(&format!("m{{{label}=\"spoofed\"}} 1"));
            assert_eq!(e.code, "reserved_label", "{label}");
            assert!(e.detail.contains(label), "{e}");
        }
        assert_eq!(err("push_time_seconds 1").code, "reserved_metric_name");
        // Names that merely contain a reserved word are fine.
        ok("m{agent_version=\"1\",my_job=\"x\"} 1");
    }

    #[test]
    fn values_must_be_numbers_and_timestamps_are_refused() {
        assert_eq!(err("m").code, "invalid_value");
        assert_eq!(err("m{a=\"b\"}").code, "invalid_value");
        assert_eq!(err("m one").code, "invalid_value");
        assert_eq!(err("m 1,5").code, "invalid_value");
        assert_eq!(err("m 1 1700000000000").code, "timestamp_not_allowed");
        assert_eq!(err("m 1 x").code, "invalid_syntax");
        assert_eq!(err("m 1 2 3").code, "timestamp_not_allowed");
        assert_eq!(err("m 1\r").code, "invalid_value");
    }

    #[test]
    fn type_and_help_lines_are_checked() {
        assert_eq!(err("# TYPE m gauges").code, "invalid_type");
        assert_eq!(err("# TYPE m gauge\n# TYPE m counter").code, "invalid_type");
        assert_eq!(err("m 1\n# TYPE m gauge").code, "invalid_type");
        assert_eq!(err("# HELP m one\n# HELP m two").code, "invalid_help");
        assert_eq!(err("# HELP m bad \\escape").code, "invalid_help");
        ok("# HELP m with \\\\ and \\n escapes\nm 1");
        assert_eq!(
            err("# TYPE h histogram\nh_bucket 1").code,
            "invalid_histogram"
        );
        assert_eq!(
            err("# TYPE h histogram\nh_bucket{le=\"x\"} 1").code,
            "invalid_histogram"
        );
        assert_eq!(err("# TYPE s summary\ns 1").code, "invalid_summary");
    }

    #[test]
    fn the_same_series_twice_is_refused() {
        let e = err("m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2");
        assert_eq!((e.code, e.line), ("duplicate_series", 2));
        // An empty label value is the same as no label.
        assert_eq!(err("m 1\nm{a=\"\"} 2").code, "duplicate_series");
        ok("m{a=\"1\"} 1\nm{a=\"2\"} 2\nm 3");
    }

    #[test]
    fn the_series_count_is_bounded() {
        let text: String = (0..11).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
        assert_eq!(validate(&text, 11).unwrap().series, 11);
        let e = validate(&text, 10).unwrap_err();
        assert_eq!((e.code, e.line), ("too_many_series", 11));
    }
}
