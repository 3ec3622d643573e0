//! `phoenix-wire`: the types the API and its agents share on the wire, and
//! nothing else.
//!
//! - [`pipeline`]: reduction pipelines (stages, validation, templates) and
//!   the payloads of the experiment tasks an agent runs.
//! - [`remote_write`]: the Prometheus remote-write messages in which agents
//!   send timestamped samples.
//! - [`agent`]: the bodies of the agent protocol's requests and answers.
//!
//! *Invariant:* no I/O, no HTTP or database types — only serde, regex, uuid,
//! prost, snap and the OpenAPI schema derive — so an agent links it without the
//! control plane's dependencies.

#![forbid(unsafe_code)]

pub mod agent;
pub mod pipeline;
pub mod remote_write;
