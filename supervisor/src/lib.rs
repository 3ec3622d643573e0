//! phoenix-supervisor: launches and monitors the Phoenix appliance's services
//! from one TOML file. See docs/ARCHITECTURE.md for the code map.

// Only `process` may use `unsafe` (below); everything else is checked.
#![deny(unsafe_code)]

pub mod backup;
pub mod cgroup;
pub mod cli_docs;
pub mod config;
pub mod control;
pub mod external_db;
pub mod firstboot;
pub mod fsafe;
pub mod health;
pub mod leftovers;
pub mod listen;
pub mod logs;
pub mod notify;
pub mod pginit;
pub mod pid1;
pub mod probe;
// The forked child's `pre_exec` hook (cgroup entry, user switch, kept
// capabilities) has no safe interface in std or nix; each block there says
// why it is sound.
pub mod prepare;
#[allow(unsafe_code)]
pub mod process;
pub mod reaper;
pub mod run;
pub mod s3keys;
pub mod scaling;
pub mod status;
pub mod supervisor;
pub mod tls;
