//! Child output: each line goes to the supervisor's structured log (with the
//! service name) and to a per-service file rotated by size.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest line kept; the rest of a longer line is cut.
const MAX_LINE: usize = 16 * 1024;

pub struct ServiceLog {
    name: String,
    file: Mutex<FileRotate<AppendCount>>,
}

impl ServiceLog {
    /// `dir` must exist and be writable (checked when state is prepared).
    pub fn open(dir: &Path, name: &str, max_bytes: u64, keep: usize) -> Arc<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        // `dir` is the supervisor's own (root-owned, checked by `prepare`);
        // never write through a link all the same.
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let file = FileRotate::new(
            dir.join(format!("{name}.log")),
            AppendCount::new(keep),
            ContentLimit::BytesSurpassed(max_bytes as usize),
            Compression::None,
            Some(options),
        );
        Arc::new(ServiceLog {
            name: name.to_string(),
            file: Mutex::new(file),
        })
    }

    fn write_line(&self, stream: &str, line: &str) {
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        // One write per line: rotation happens between writes, never inside a line.
        let record = format!("{stamp} {stream} {line}\n");
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(record.as_bytes()) {
            tracing::warn!(service = %self.name, error = %e, "cannot write the service log file");
        }
    }

    /// A supervisor-side note in the service's own log (start, exit, ...).
    pub fn note(&self, line: &str) {
        self.write_line("supervisor", line);
    }
}

/// Read `reader` line by line until EOF. `on_match` runs once, on the first
/// line matching `ready` (the log readiness check).
pub async fn pump(
    log: Arc<ServiceLog>,
    stream: &'static str,
    reader: impl AsyncRead + Unpin,
    ready: Option<Arc<Regex>>,
    on_match: impl FnOnce() + Send,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::with_capacity(256);
    let mut on_match = Some(on_match);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(service = %log.name, error = %e, "output pipe closed");
                return;
            }
        }
        buf.truncate(MAX_LINE);
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: "phoenix::service", service = %log.name, stream, "{line}");
        log.write_line(stream, line);
        if let Some(re) = &ready
            && re.is_match(line)
            && let Some(f) = on_match.take()
        {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_go_to_file_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "svc", 4096, 2);
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(&format!("line number {i} with some padding\n"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let re = Arc::new(Regex::new("line number 123 ").unwrap());
        pump(
            log.clone(),
            "stdout",
            text.as_bytes(),
            Some(re),
            move || {
                let _ = tx.send(());
            },
        )
        .await;
        assert!(rx.await.is_ok(), "readiness line was matched");
        let current = std::fs::read_to_string(dir.path().join("svc.log")).unwrap();
        assert!(current.contains("stdout line number 399"), "{current}");
        assert!(
            dir.path().join("svc.log.1").exists(),
            "rotated once at least"
        );
        assert!(
            !dir.path().join("svc.log.3").exists(),
            "keeps at most 2 old files"
        );
        assert!(
            std::fs::metadata(dir.path().join("svc.log.1"))
                .unwrap()
                .len()
                < 4096 + 200
        );
    }
}
