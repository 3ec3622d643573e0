//! Tables of figures, as aligned text for a terminal or as Markdown for
//! docs/benchmarks.md.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met { Verdict::Pass } else { Verdict::Miss }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
        }
    }
}

pub struct Table {
    pub title: String,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: Vec<&'static str>) -> Table {
        Table {
            title: title.into(),
            headers,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len(), "{}", self.title);
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.headers[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = format!("{}\n", self.title);
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        writeln!(out, "  {}", line(&headers)).unwrap();
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(out, "  {}", line(&rule)).unwrap();
        for row in &self.rows {
            writeln!(out, "  {}", line(row)).unwrap();
        }
        for note in &self.notes {
            writeln!(out, "  * {note}").unwrap();
        }
        out
    }

    pub fn markdown(&self) -> String {
        let cells = |c: &[String]| format!("| {} |", c.join(" | "));
        let mut out = format!("### {}\n\n", self.title);
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        writeln!(out, "{}", cells(&headers)).unwrap();
        writeln!(out, "|{}", "---|".repeat(self.headers.len())).unwrap();
        for row in &self.rows {
            writeln!(out, "{}", cells(row)).unwrap();
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                writeln!(out, "- {note}").unwrap();
            }
        }
        out
    }
}

/// Prints a benchmark's report: its title, the header lines, the tables
/// and how many targets were met; with `markdown`, the header and tables
/// again as Markdown. Exit code 3 when a target was missed.
pub fn print(
    title: &str,
    header: &[String],
    tables: &[Table],
    verdicts: &[Verdict],
    markdown: bool,
) -> std::process::ExitCode {
    let missed = verdicts.iter().filter(|v| **v == Verdict::Miss).count();
    let summary = format!(
        "targets met: {} of {}",
        verdicts.len() - missed,
        verdicts.len()
    );
    println!("{title}");
    for line in header {
        println!("{line}");
    }
    for t in tables {
        println!("\n{}", t.text());
    }
    println!("{summary}");
    if markdown {
        println!("\n<!-- markdown -->\n");
        for line in header {
            println!("- {line}");
        }
        for t in tables {
            println!("\n{}", t.markdown());
        }
        println!("{summary}");
    }
    if missed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new("Title", vec!["a", "bee"]);
        t.row(vec!["long cell".into(), "1".into()]);
        t.note("a note");
        t
    }

    #[test]
    fn text_columns_are_aligned() {
        assert_eq!(
            sample().text(),
            "Title\n  a          bee\n  ---------  ---\n  long cell  1\n  * a note\n"
        );
    }

    #[test]
    fn markdown_has_header_rule_and_notes() {
        assert_eq!(
            sample().markdown(),
            "### Title\n\n| a | bee |\n|---|---|\n| long cell | 1 |\n\n- a note\n"
        );
    }
}
