//! `phoenix-agent preview --pipeline FILE|TEMPLATE`: runs a pipeline once
//! on this host's live processes and prints what it would send against full
//! fidelity — series, samples per minute, and the accuracy of the host
//! totals — so a user can judge a template before an experiment.

use std::path::Path;
use std::time::Duration;

use phoenix_wire::pipeline::{PipelineSpec, templates};
use serde::Serialize;

use crate::collect::Collector;
use crate::pipeline::{Compiled, Row, accuracy_pct, totals};

#[derive(Debug, Serialize)]
pub struct Preview {
    pub pipeline: String,
    pub processes: usize,
    pub series_before: usize,
    pub series_after: usize,
    pub reduction_pct: f64,
    pub samples_per_minute_before: f64,
    pub samples_per_minute_after: f64,
    pub cpu_total_before: f64,
    pub cpu_total_after: f64,
    pub cpu_accuracy_pct: f64,
    pub memory_total_before: f64,
    pub memory_total_after: f64,
    pub memory_accuracy_pct: f64,
}

/// A template's name, or a file holding a pipeline as JSON.
pub fn load_pipeline(arg: &str) -> anyhow::Result<(String, PipelineSpec)> {
    if let Some(t) = templates().into_iter().find(|t| t.name == arg) {
        return Ok((t.name.to_owned(), t.spec));
    }
    let path = Path::new(arg);
    if !path.exists() {
        let names: Vec<_> = templates().into_iter().map(|t| t.name).collect();
        anyhow::bail!(
            "{arg:?} is neither a file nor a template; the templates are {}",
            names.join(", ")
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
    let spec = PipelineSpec::from_json(&value)
        .map_err(|e| anyhow::anyhow!("{}: {} ({})", path.display(), e.detail, e.code))?;
    Ok((path.display().to_string(), spec))
}

/// Compares `pipeline` with full fidelity on `rows`.
pub fn compare(name: &str, pipeline: &Compiled, rows: &[Row], interval: Duration) -> Preview {
    let after = pipeline.run(rows);
    let full = Compiled::new(&PipelineSpec::default())
        .expect("full fidelity is valid")
        .run(rows);
    let per_minute = 60.0 / interval.as_secs_f64();
    let (series_before, series_after) = (full.len() * 2, after.len() * 2);
    let (cpu_b, mem_b) = totals(&full);
    let (cpu_a, mem_a) = totals(&after);
    Preview {
        pipeline: name.to_owned(),
        processes: rows.len(),
        series_before,
        series_after,
        reduction_pct: if series_before == 0 {
            0.0
        } else {
            100.0 * (1.0 - series_after as f64 / series_before as f64)
        },
        samples_per_minute_before: series_before as f64 * per_minute,
        samples_per_minute_after: series_after as f64 * per_minute,
        cpu_total_before: cpu_b,
        cpu_total_after: cpu_a,
        cpu_accuracy_pct: accuracy_pct(cpu_b, cpu_a),
        memory_total_before: mem_b,
        memory_total_after: mem_a,
        memory_accuracy_pct: accuracy_pct(mem_b, mem_a),
    }
}

/// Samples this host over `sample_for` and compares.
pub async fn run(
    name: &str,
    spec: &PipelineSpec,
    sample_for: Duration,
    interval: Duration,
) -> anyhow::Result<Preview> {
    let pipeline = Compiled::new(spec).map_err(|e| anyhow::anyhow!("{} ({})", e.detail, e.code))?;
    let mut collector = tokio::task::spawn_blocking(Collector::new).await?;
    tokio::time::sleep(sample_for).await;
    let collection = tokio::task::spawn_blocking(move || collector.collect()).await?;
    Ok(compare(name, &pipeline, &collection.rows, interval))
}

pub fn print(p: &Preview) {
    println!("pipeline            {}", p.pipeline);
    println!("processes           {}", p.processes);
    println!(
        "                    {:>14} {:>14}",
        "full fidelity", "this pipeline"
    );
    println!(
        "series              {:>14} {:>14}   {:.1} % fewer",
        p.series_before, p.series_after, p.reduction_pct
    );
    println!(
        "samples per minute  {:>14.0} {:>14.0}",
        p.samples_per_minute_before, p.samples_per_minute_after
    );
    println!(
        "host CPU (%)        {:>14.2} {:>14.2}   accuracy {:.2} %",
        p.cpu_total_before, p.cpu_total_after, p.cpu_accuracy_pct
    );
    println!(
        "host memory (MiB)   {:>14.1} {:>14.1}   accuracy {:.2} %",
        p.memory_total_before / 1048576.0,
        p.memory_total_after / 1048576.0,
        p.memory_accuracy_pct
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_or_a_file_and_a_clear_error_otherwise() {
        assert_eq!(load_pipeline("top_k_cpu_10").unwrap().1.stages.len(), 1);
        let err = load_pipeline("top_k_cpu_11").unwrap_err().to_string();
        assert!(
            err.contains("neither a file nor a template") && err.contains("drop_pid"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(
            &file,
            r#"{"stages": [{"type": "top_k", "k": 0, "by": "cpu"}]}"#,
        )
        .unwrap();
        let err = load_pipeline(file.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid_k"), "{err}");
    }

    #[test]
    fn the_comparison_counts_series_samples_and_accuracy() {
        let rows: Vec<Row> = (0..20).map(|i| Row::process("p", i, 1.0, 10.0)).collect();
        let spec = load_pipeline("top_k_cpu_10").unwrap().1;
        let p = compare(
            "t",
            &Compiled::new(&spec).unwrap(),
            &rows,
            Duration::from_secs(15),
        );
        assert_eq!((p.series_before, p.series_after), (40, 22));
        assert_eq!(p.samples_per_minute_before, 160.0);
        assert_eq!((p.cpu_accuracy_pct, p.memory_accuracy_pct), (100.0, 100.0));
        assert!((p.reduction_pct - 45.0).abs() < 1e-9);
    }
}
