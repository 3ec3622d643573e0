//! `phoenix-agent`: collects this host's process metrics, runs reduction
//! pipelines and experiments the control plane asks for, and delivers
//! timestamped samples through a durable queue.
//!
//! - [`config`]: the TOML file, with located errors.
//! - [`collect`]: sampling processes with sysinfo.
//! - [`pipeline`]: running a pipeline on the samples.
//! - [`queue`]: the SQLite queue of batches, results and tasks.
//! - [`state`]: the live pipeline and the experiments running.
//! - [`tasks`]: running the control plane's tasks.
//! - [`deliver`]: sending batches and results, with backoff.
//! - [`enroll`], [`client`]: the credential and the HTTP around it.
//! - [`run`]: the loops, sharing [`shared::Agent`]; [`health`]: `/metrics`;
//!   [`preview`]: `preview`.

#![forbid(unsafe_code)]

pub mod client;
pub mod collect;
pub mod config;
pub mod deliver;
pub mod enroll;
pub mod health;
pub mod pipeline;
pub mod preview;
pub mod queue;
pub mod run;
pub mod shared;
pub mod state;
pub mod tasks;
