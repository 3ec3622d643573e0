//! The experiment lifecycle as a pure state machine: which action moves an
//! experiment from which state to which. Nothing else decides a transition.
//!
//! | from | action (who) | to |
//! |---|---|---|
//! | created | start (operator) | deploying |
//! | deploying | deployed (driver: every agent confirmed) | running |
//! | deploying | deploy_failed (driver: an agent failed, or timeout) | failed |
//! | running | window_ended (driver: `ends_at` passed) | analyzing |
//! | analyzing | analyzed (driver: KPIs measured) | completed |
//! | analyzing | analysis_failed (driver: no data or no Prometheus in time) | failed |
//! | deploying, running, analyzing | stop (operator) | stopped |
//! | completed | promote (operator) | promoted |
//! | completed | rollback (operator) | rolled_back |
//!
//! People (operators) take the actions `start`, `stop`, `promote` and
//! `rollback`; the background driver takes the others. `rollback` is allowed
//! only from `completed`: while an experiment runs nothing has been applied
//! to the agents' live pipelines, so there is nothing to roll back — `stop`
//! ends it. `promote` and `rollback` are decisions the operator takes after
//! reading the measured KPIs; the recommendation is advice, not a gate.
//! `promoted`, `rolled_back`, `failed` and `stopped` are final.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an experiment is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Defined; nothing sent to agents yet.
    Created,
    /// `run_experiment` tasks are out; waiting for every agent to confirm.
    Deploying,
    /// Every agent runs both pipelines and pushes both variants.
    Running,
    /// The window is over; KPIs are being measured in Prometheus.
    Analyzing,
    /// KPIs measured and a recommendation made; waiting for a decision.
    Completed,
    /// The candidate pipeline was applied to the agents.
    Promoted,
    /// The baseline pipeline was applied to the agents.
    RolledBack,
    /// Deployment or analysis failed; `error` says why.
    Failed,
    /// Stopped by an operator before it completed.
    Stopped,
}

/// What moves an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Promote,
    Rollback,
    /// Every target agent reported its `run_experiment` task succeeded.
    Deployed,
    /// An agent reported failure, or the deployment timed out.
    DeployFailed,
    /// The experiment's duration has passed.
    WindowEnded,
    /// KPIs were measured.
    Analyzed,
    /// KPIs could not be measured in time.
    AnalysisFailed,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Created,
        State::Deploying,
        State::Running,
        State::Analyzing,
        State::Completed,
        State::Promoted,
        State::RolledBack,
        State::Failed,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Deploying => "deploying",
            State::Running => "running",
            State::Analyzing => "analyzing",
            State::Completed => "completed",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// No action leaves a final state.
    pub fn is_final(self) -> bool {
        allowed_actions(self).is_empty()
    }

    /// Agents push this experiment's variants only in these states.
    pub fn agents_push(self) -> bool {
        matches!(self, State::Deploying | State::Running)
    }
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Start,
        Action::Stop,
        Action::Promote,
        Action::Rollback,
        Action::Deployed,
        Action::DeployFailed,
        Action::WindowEnded,
        Action::Analyzed,
        Action::AnalysisFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Deployed => "deployed",
            Action::DeployFailed => "deploy_failed",
            Action::WindowEnded => "window_ended",
            Action::Analyzed => "analyzed",
            Action::AnalysisFailed => "analysis_failed",
        }
    }

    /// Whether a person takes this action (the driver takes the others).
    pub fn by_user(self) -> bool {
        matches!(
            self,
            Action::Start | Action::Stop | Action::Promote | Action::Rollback
        )
    }
}

/// The state `action` leads to from `from`, or, when it is not allowed
/// there, the actions that are.
pub fn transition(from: State, action: Action) -> Result<State, Vec<Action>> {
    target(from, action).ok_or_else(|| allowed_actions(from))
}

/// Every action allowed from `from`, in [`Action::ALL`] order.
pub fn allowed_actions(from: State) -> Vec<Action> {
    Action::ALL
        .into_iter()
        .filter(|&action| target(from, action).is_some())
        .collect()
}

/// The transition table.
fn target(from: State, action: Action) -> Option<State> {
    use Action as A;
    use State as S;
    Some(match (from, action) {
        (S::Created, A::Start) => S::Deploying,
        (S::Deploying, A::Deployed) => S::Running,
        (S::Deploying, A::DeployFailed) => S::Failed,
        (S::Running, A::WindowEnded) => S::Analyzing,
        (S::Analyzing, A::Analyzed) => S::Completed,
        (S::Analyzing, A::AnalysisFailed) => S::Failed,
        (S::Deploying | S::Running | S::Analyzing, A::Stop) => S::Stopped,
        (S::Completed, A::Promote) => S::Promoted,
        (S::Completed, A::Rollback) => S::RolledBack,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, written out once more by hand: every pair not listed
    /// here must be refused.
    const LEGAL: [(State, Action, State); 11] = [
        (State::Created, Action::Start, State::Deploying),
        (State::Deploying, Action::Deployed, State::Running),
        (State::Deploying, Action::DeployFailed, State::Failed),
        (State::Deploying, Action::Stop, State::Stopped),
        (State::Running, Action::WindowEnded, State::Analyzing),
        (State::Running, Action::Stop, State::Stopped),
        (State::Analyzing, Action::Analyzed, State::Completed),
        (State::Analyzing, Action::AnalysisFailed, State::Failed),
        (State::Analyzing, Action::Stop, State::Stopped),
        (State::Completed, Action::Promote, State::Promoted),
        (State::Completed, Action::Rollback, State::RolledBack),
    ];

    #[test]
    fn every_pair_of_state_and_action_is_decided_as_the_table_says() {
        let legal = LEGAL;
        for from in State::ALL {
            for action in Action::ALL {
                let expected = legal
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                match (transition(from, action), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from:?} + {action:?}"),
                    (Err(allowed), None) => {
                        let want: Vec<Action> = Action::ALL
                            .into_iter()
                            .filter(|a| legal.iter().any(|(f, la, _)| *f == from && la == a))
                            .collect();
                        assert_eq!(allowed, want, "allowed from {from:?}");
                    }
                    (got, want) => panic!("{from:?} + {action:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn final_states_allow_nothing() {
        let finals: Vec<State> = State::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                State::Promoted,
                State::RolledBack,
                State::Failed,
                State::Stopped
            ]
        );
    }

    #[test]
    fn users_cannot_take_driver_actions_or_skip_states() {
        assert_eq!(
            transition(State::Running, Action::Promote),
            Err(vec![Action::Stop, Action::WindowEnded])
        );
        assert_eq!(
            transition(State::Created, Action::Rollback),
            Err(vec![Action::Start])
        );
        assert!(Action::ALL.iter().filter(|a| a.by_user()).count() == 4);
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for state in State::ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        for action in Action::ALL {
            assert_eq!(
                serde_json::to_value(action).unwrap(),
                serde_json::json!(action.as_str())
            );
        }
        assert_eq!(State::parse("done"), None);
    }
}
