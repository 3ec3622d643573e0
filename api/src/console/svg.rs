//! Charts drawn on the server as inline SVG: no script and no library, so
//! they render with the page, under the strict CSP, and print. Each chart
//! has a text alternative (its newest values) and a legend that tells lines
//! apart by dash as well as by colour.

use maud::{Markup, html};

use crate::charts::{Chart, Unit};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// A value in the chart's unit, short.
pub fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::Series => compact(value),
        Unit::SamplesPerSecond => format!("{}/s", compact(value)),
        Unit::CpuPercent => format!("{value:.1} %"),
        Unit::Bytes => bytes(value),
    }
}

fn compact(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.1} M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1} k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = value;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A round upper bound for the y axis: 1, 2 or 5 times a power of ten.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= max)
        .unwrap_or(10.0 * magnitude)
}

/// A time on the x axis: the clock, and the date too when the chart spans
/// more than a day's part.
fn clock(unix: f64, span: f64) -> String {
    let format = if span > 12.0 * 3600.0 {
        "%b %d %H:%M UTC"
    } else {
        "%H:%M UTC"
    };
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format(format).to_string())
        .unwrap_or_default()
}

/// Where the newest point of `points` is drawn.
fn last_point(points: &[(f64, f64)], (x0, x1): (f64, f64), y_max: f64) -> Option<(f64, f64)> {
    let &(t, v) = points.iter().rev().find(|(_, v)| v.is_finite())?;
    let width = WIDTH - LEFT - RIGHT;
    let height = HEIGHT - TOP - BOTTOM;
    Some((
        LEFT + (t - x0) / (x1 - x0).max(1.0) * width,
        TOP + height - (v / y_max).clamp(0.0, 1.0) * height,
    ))
}

/// The polyline points of `points` on a chart from `x0` to `x1` and from
/// 0 to `y_max`.
fn path(points: &[(f64, f64)], (x0, x1): (f64, f64), y_max: f64) -> String {
    let width = WIDTH - LEFT - RIGHT;
    let height = HEIGHT - TOP - BOTTOM;
    let span = (x1 - x0).max(1.0);
    points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(t, v)| {
            let x = LEFT + (t - x0) / span * width;
            let y = TOP + height - (v / y_max).clamp(0.0, 1.0) * height;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line chart of `chart` over `[start, end]` (unix seconds).
pub fn line_chart(chart: &Chart, start: f64, end: f64) -> Markup {
    let max = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(max);
    let height = HEIGHT - TOP - BOTTOM;
    let summary = chart
        .lines
        .iter()
        .map(|l| match l.last() {
            Some(v) => format!("{} {}", l.name, format_value(chart.unit, v)),
            None => format!("{} no data", l.name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let title_id = format!("chart-{}", chart.id);
    html! {
        figure class="chart" {
            figcaption id=(title_id) { (chart.title) }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby=(title_id)
                aria-describedby=(format!("{title_id}-now")) {
                @for i in 0..=4 {
                    @let y = TOP + height - f64::from(i) / 4.0 * height;
                    line class="grid" x1=(LEFT) x2=(WIDTH - RIGHT) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
                    text class="tick" x=(LEFT - 6.0) y=(format!("{:.1}", y + 4.0)) text-anchor="end" {
                        (format_value(chart.unit, y_max * f64::from(i) / 4.0))
                    }
                }
                text class="tick" x=(LEFT) y=(HEIGHT - 8.0) { (clock(start, end - start)) }
                text class="tick" x=(WIDTH - RIGHT) y=(HEIGHT - 8.0) text-anchor="end" { (clock(end, end - start)) }
                @for (i, line) in chart.lines.iter().enumerate() {
                    polyline class=(format!("line s{i}")) points=(path(&line.points, (start, end), y_max)) {}
                    // The newest value is marked, so a line of one point shows.
                    @if let Some((x, y)) = last_point(&line.points, (start, end), y_max) {
                        circle class=(format!("dot s{i}")) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="4" {}
                    }
                }
            }
            p class="legend" id=(format!("{title_id}-now")) {
                @for (i, line) in chart.lines.iter().enumerate() {
                    span class=(format!("key s{i}")) { (line.name) }
                    " "
                    strong {
                        @match line.last() {
                            Some(v) => (format_value(chart.unit, v)),
                            None => "no data",
                        }
                    }
                    " "
                }
                span class="visually-hidden" { "Latest: " (summary) }
            }
            details {
                summary { "Query" }
                code { (chart.promql) }
            }
        }
    }
}

/// Horizontal bars of `rows` (`label`, `before`, `after`), two per row.
pub fn bars(title: &str, rows: &[(String, f64, f64)], unit: Unit) -> Markup {
    let max = rows
        .iter()
        .flat_map(|r| [r.1, r.2])
        .fold(0.0, f64::max)
        .max(1.0);
    let row_height = 34.0;
    let height = rows.len() as f64 * row_height + 8.0;
    let label_width = 180.0;
    let bar_width = WIDTH - label_width - 90.0;
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {WIDTH} {height}")) role="img" aria-label=(title) {
                @for (i, (label, before, after)) in rows.iter().enumerate() {
                    @let y = i as f64 * row_height + 4.0;
                    text class="tick" x=(label_width - 8.0) y=(format!("{:.1}", y + 18.0)) text-anchor="end" { (label) }
                    rect class="bar s0" x=(label_width) y=(format!("{y:.1}")) height="12"
                        width=(format!("{:.1}", before / max * bar_width)) {}
                    rect class="bar s1" x=(label_width) y=(format!("{:.1}", y + 14.0)) height="12"
                        width=(format!("{:.1}", after / max * bar_width)) {}
                    text class="tick" x=(format!("{:.1}", label_width + after.max(*before) / max * bar_width + 6.0))
                        y=(format!("{:.1}", y + 18.0)) {
                        (format_value(unit, *before)) " → " (format_value(unit, *after))
                    }
                }
            }
            p class="legend" {
                span class="key s0" { "before" } " " span class="key s1" { "after" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::Line;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn values_read_in_their_unit() {
        assert_eq!(format_value(Unit::Series, 42.0), "42");
        assert_eq!(format_value(Unit::Series, 123_456.0), "123.5 k");
        assert_eq!(format_value(Unit::Bytes, 3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(format_value(Unit::SamplesPerSecond, 0.5), "0.50/s");
    }

    #[test]
    fn a_chart_has_a_line_per_variant_its_latest_values_and_escapes_text() {
        let chart = Chart {
            id: "series",
            title: "Series <all>".into(),
            unit: Unit::Series,
            lines: vec![
                Line {
                    name: "baseline".into(),
                    points: vec![(0.0, 100.0), (60.0, 120.0)],
                },
                Line {
                    name: "candidate".into(),
                    points: vec![(0.0, 10.0), (60.0, 11.0)],
                },
            ],
            promql: "count(x)".into(),
        };
        let html = line_chart(&chart, 0.0, 60.0).into_string();
        assert_eq!(html.matches("<polyline").count(), 2, "{html}");
        assert_eq!(html.matches("<circle").count(), 2, "{html}");
        assert!(html.contains("baseline 120, candidate 11"), "{html}");
        assert!(html.contains("Series &lt;all&gt;"), "{html}");
        // The first baseline point is at the left edge, the last at the right.
        assert!(html.contains("84.0,"), "{html}");
        assert!(html.contains("628.0,"), "{html}");
    }
}
