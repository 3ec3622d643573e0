//! Starting a service's process: its cgroup, directories and generated
//! files, then the program; the pumps that carry its stdout and stderr into
//! its log (and watch for a log readiness line), and the task that waits
//! for its exit. What happens later comes back to the loop as events.

use std::sync::Arc;

use regex::Regex;
use tokio::sync::mpsc;

use super::{Context, Event, Runtime};
use crate::config::Probe;
use crate::logs;
use crate::prepare;
use crate::probe;
use crate::process;

/// Starts the process of `rt` for its current generation and returns its
/// pid. `Event::LogMatched` and `Event::Exited` for it are sent on `tx`.
pub(super) fn process(
    rt: &Runtime,
    ctx: &Context,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<i32, probe::Failure> {
    let failure = probe::Failure::of;
    let spec = &rt.spec;
    let cgroup_fd = match &ctx.cgroups {
        Ok(cg) => Some(cg.prepare(&spec.name, &spec.limits).map_err(|e| {
            failure(
                &e,
                format!("cannot prepare the cgroup of {}: {e}", spec.name),
            )
        })?),
        Err(_) => None,
    };
    prepare::service_dirs(spec, rt.run_as.as_ref()).map_err(|e| failure(&e, e.to_string()))?;
    for f in &spec.files {
        prepare::write_generated(f)
            .map_err(|e| failure(&e, format!("cannot write {}: {e}", f.path.display())))?;
    }
    let mut cmd = process::command(&spec.command, spec, rt.run_as.as_ref(), cgroup_fd)
        .map_err(|e| failure(&e, e.to_string()))?;
    let (mut child, exit) = ctx
        .reaper
        .spawn(&mut cmd)
        .map_err(|e| failure(&e, format!("cannot run {}: {e}", spec.command[0])))?;
    drop(cmd);
    let (name, generation) = (spec.name.clone(), rt.generation);
    let pid = child.id() as i32;
    tracing::info!(service = %name, pid, "started");
    rt.log
        .note(&format!("started pid {pid}: {}", spec.command.join(" ")));

    let log_ready = match &spec.readiness {
        Some(r) => match &r.probe {
            Probe::Log(pattern) => Regex::new(pattern).ok().map(Arc::new),
            _ => None,
        },
        None => None,
    };
    for (stream, reader) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|s| tokio::process::ChildStdout::from_std(s).map(Pipe::Out)),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|s| tokio::process::ChildStderr::from_std(s).map(Pipe::Err)),
        ),
    ] {
        let Some(Ok(reader)) = reader else { continue };
        let tx = tx.clone();
        let (log, ready, name) = (rt.log.clone(), log_ready.clone(), name.clone());
        tokio::spawn(async move {
            logs::pump(log, stream, reader, ready, move || {
                let _ = tx.send(Event::LogMatched { name, generation });
            })
            .await;
        });
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        if let Ok(status) = exit.await {
            let _ = tx.send(Event::Exited {
                name,
                generation,
                status,
            });
        }
    });
    Ok(pid)
}

/// A child's stdout or stderr, read the same way.
enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Pipe::Out(p) => std::pin::Pin::new(p).poll_read(cx, buf),
            Pipe::Err(p) => std::pin::Pin::new(p).poll_read(cx, buf),
        }
    }
}
