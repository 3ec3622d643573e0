//! Who is calling: users and roles, passwords, tokens and sessions, the
//! [`Caller`] extractor that every protected handler takes, and the login
//! rate limits; and, on the agent listener, agents through the
//! [`AgentCaller`] extractor ([`agent`]).
//!
//! Invariant: a request is authenticated only by a valid access token whose
//! session is not revoked and whose user is enabled, checked against the
//! database on every request; any failure to check refuses the request. An
//! agent's request likewise only by its credential, checked against its
//! unrevoked row.

pub mod agent;
pub mod caller;
pub mod cookie;
pub mod limiter;
pub mod password;
pub mod routes;
pub mod tokens;
pub mod users;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use agent::AgentCaller;
pub use caller::Caller;

/// What a user may do. Ordered: each role can do what the ones before it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything except users and the audit log.
    Viewer,
    /// Also runs experiments, manages pipelines, tasks and agents.
    Operator,
    /// Also manages users and reads the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}
