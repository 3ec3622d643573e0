//! phoenix-supervisor: launches and monitors the Phoenix appliance's services
//! from one TOML file. See docs/ARCHITECTURE.md for the code map.

pub mod acme;
pub mod certs;
pub mod cgroup;
pub mod config;
pub mod control;
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
pub mod process;
pub mod reaper;
pub mod run;
pub mod scaling;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod tls;
