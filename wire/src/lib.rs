//! `phoenix-wire`: the types the API and its agents share on the wire, and
//! nothing else.
//!
//! - [`pipeline`]: reduction pipelines (stages, validation, templates) and
//!   the payloads of the experiment tasks an agent runs.
//!
//! *Invariant:* no I/O, no HTTP or database types — only serde, regex, uuid
//! and the OpenAPI schema derive — so an agent links it without the
//! control plane's dependencies.

#![forbid(unsafe_code)]

pub mod pipeline;
