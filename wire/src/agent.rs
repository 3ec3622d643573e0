//! The bodies of the agent protocol (docs/api.md, "The agent protocol"):
//! enrollment, heartbeat, the task long poll and results, and the answer to
//! a remote-write batch. The API serves them; `phoenix-agent` sends them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The path of the agent routes, below the agent listener's origin.
pub mod path {
    pub const ENROLL: &str = "/api/v1/agents/enroll";
    pub const HEARTBEAT: &str = "/api/v1/agent/heartbeat";
    pub const TASKS: &str = "/api/v1/agent/tasks";
    /// Remote-write batches: `?experiment=&variant=` name the group.
    pub const WRITE: &str = "/api/v1/agent/write";

    /// Where the result of task `id` is reported.
    pub fn task_result(id: uuid::Uuid) -> String {
        format!("{TASKS}/{id}/result")
    }
}

/// The `experiment` and `variant` of the live pipeline's samples.
pub const NO_GROUP: &str = "none";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// The enrollment token from an admin.
    pub token: String,
    /// Unique among active agents (case-insensitive), e.g. the host's name.
    pub name: String,
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    pub agent_id: Uuid,
    /// Shown once; only its hash is stored.
    pub secret: String,
    /// What to send on every request: `Authorization: Bearer <credential>`.
    pub credential: String,
    pub heartbeat_interval_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// The agent's version, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Anything the agent wants operators to see (queue depth, pipelines...);
    /// at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    pub server_time: DateTime<Utc>,
    /// Send the next heartbeat within this many seconds; an agent not seen
    /// for three intervals shows as offline.
    pub heartbeat_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedTask {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// Report a result before this time, or the task is queued again.
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Claimed {
    /// Oldest first; empty when the wait ended without a task.
    pub tasks: Vec<ClaimedTask>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        match name {
            "succeeded" => Some(Outcome::Succeeded),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportedResult {
    /// Chosen by the agent, once per result: sending the same result again
    /// (after a lost answer) is safe.
    pub result_id: Uuid,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Leased,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Leased,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Expired => "expired",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the task will not run again.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Leased)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultAccepted {
    pub task_id: Uuid,
    pub result_id: Uuid,
    pub outcome: Outcome,
    /// The attempt the result was counted for.
    pub attempt: i32,
    /// The task's state after the result: `queued` again after a failed
    /// attempt with attempts left.
    pub state: TaskState,
}

/// The answer to a remote-write batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Written {
    /// Series in the batch.
    pub series: usize,
    /// Samples in the batch.
    pub samples: usize,
    pub experiment: String,
    pub variant: String,
}

/// The JSON problem document of a refusal (RFC 9457), as much of it as an
/// agent acts on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::from_name(state.as_str()), Some(state));
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
        }
        assert_eq!(TaskState::from_name("running"), None);
        assert_eq!(Outcome::from_name("failed"), Some(Outcome::Failed));
        assert!(TaskState::Cancelled.is_final() && !TaskState::Leased.is_final());
    }

    #[test]
    fn an_empty_heartbeat_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Heartbeat::default()).unwrap(), "{}");
    }
}
