//! Ctrl-C and SIGTERM end the benchmark through an error, not the default
//! signal death, so the drop guards stop the supervisors and their children:
//! those run in process groups of their own and would not get the signal.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

pub fn install() -> Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("install signal handler")?;
    }
    Ok(())
}

/// Fails once a stop was asked for; every wait and loop of the benchmark calls it.
pub fn check() -> Result<()> {
    if FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst)) {
        bail!("interrupted; stopping the supervisors under test");
    }
    Ok(())
}
