//! Sampling this host's processes with sysinfo: one [`Row`] per process,
//! with the CPU it used since the previous sample and its resident memory.
//!
//! *Invariant:* the first sample after start has no CPU figures to compare
//! with; [`Collector::new`] takes a priming sample, so every sample it
//! returns has CPU measured over a real interval.

use std::time::{SystemTime, UNIX_EPOCH};

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System, ThreadKind, UpdateKind};

use crate::pipeline::Row;

pub struct Collector {
    system: System,
}

/// One collection: the rows and when they were taken, in milliseconds
/// since the Unix epoch.
#[derive(Debug, Clone)]
pub struct Collection {
    pub timestamp_ms: i64,
    pub rows: Vec<Row>,
}

fn refresh_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_exe(UpdateKind::Never)
}

impl Collector {
    pub fn new() -> Collector {
        let mut system =
            System::new_with_specifics(RefreshKind::nothing().with_processes(refresh_kind()));
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        Collector { system }
    }

    /// Samples every process; CPU is measured since the previous call.
    pub fn collect(&mut self) -> Collection {
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        let timestamp_ms = now_ms();
        let rows = self
            .system
            .processes()
            .iter()
            // sysinfo lists a process's threads too; their use is already in
            // their process's figures. Kernel threads stay, as `top` shows.
            .filter(|(_, p)| p.thread_kind() != Some(ThreadKind::Userland))
            .map(|(pid, p)| {
                Row::process(
                    &p.name().to_string_lossy(),
                    pid.as_u32(),
                    f64::from(p.cpu_usage()),
                    p.memory() as f64,
                )
            })
            .collect();
        Collection { timestamp_ms, rows }
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_among_the_rows_with_its_memory() {
        let mut c = Collector::new();
        let collection = c.collect();
        let me = std::process::id().to_string();
        let row = collection
            .rows
            .iter()
            .find(|r| r.labels.get("pid") == Some(&me))
            .expect("the test process is sampled");
        assert!(row.memory_bytes > 1024.0 * 1024.0, "{row:?}");
        assert!(collection.timestamp_ms > 1_600_000_000_000);
    }
}
