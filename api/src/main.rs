//! `phoenix-api`: parses flags, sets up logging, runs the service.
//! Exit status: 0 after a clean shutdown, 1 on error, 2 on invalid usage.
#![forbid(unsafe_code)]

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use phoenix_api::config::{Args, Config};
use tracing_subscriber::{EnvFilter, filter::LevelFilter};

/// Every request allocates (bodies, decoded series, JSON); glibc's malloc
/// spent a quarter of the API's CPU under 2,000 agents (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never with NO_COLOR
        // (no-color.org); the supervisor's log capture wants plain text.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::INFO.into())
                .from_env_lossy(),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("phoenix-api: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(phoenix_api::server::run(config))
}
