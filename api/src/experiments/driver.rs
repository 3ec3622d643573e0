//! The background driver: every tick it advances the experiments that wait
//! on something other than a person —
//!
//! - `deploying` → `running` once every target agent's latest
//!   `run_experiment` task succeeded; → `failed` when one failed, expired or
//!   was cancelled, or when not all confirmed within the deploy timeout;
//! - `running` → `analyzing` once `ends_at` has passed;
//! - `analyzing` → `completed` once the KPIs are measured
//!   ([`crate::kpi::measure`]); → `failed` when they cannot be measured
//!   (Prometheus unreachable, or no data) within the analysis grace after
//!   `ends_at`. Until then each problem is kept in `error` and retried.
//!
//! Each API replica runs one driver. Each tick claims up to 50 due
//! experiments, the least recently updated first, for 120 s
//! (`driver_claim_until`, taken with `FOR UPDATE SKIP LOCKED`) so replicas
//! do not measure one twice, advances each and releases the claim; every
//! transition is still guarded by the state it was decided from
//! ([`Transition::apply`]). A tick that fails is logged, and the next one
//! tries again.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Row;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{DRIVER_ACTOR, Transition, TransitionFields};
use crate::AppState;
use crate::experiment_state::{Action, State};
use crate::kpi::{self, Prometheus, Subject};
use crate::shutdown::Shutdown;
use phoenix_wire::pipeline::task;

/// How the driver paces itself; each from the environment (humantime
/// durations such as `2s` or `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// `PHOENIX_EXPERIMENT_TICK` (default 2s): how often due experiments
    /// are looked at.
    pub tick: Duration,
    /// `PHOENIX_EXPERIMENT_DEPLOY_TIMEOUT` (default 10m): how long every
    /// target agent has to confirm it runs the experiment.
    pub deploy_timeout: Duration,
    /// `PHOENIX_EXPERIMENT_ANALYSIS_GRACE` (default 5m): how long after the
    /// window measuring may keep failing before the experiment fails.
    pub analysis_grace: Duration,
    /// `PHOENIX_EXPERIMENT_ANALYSIS_DELAY` (default 0): how long after the
    /// window measuring starts, so that a store that remote write fills
    /// (`[prometheus] query_url`) holds the whole window first.
    pub analysis_delay: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            tick: Duration::from_secs(2),
            deploy_timeout: Duration::from_secs(600),
            analysis_grace: Duration::from_secs(300),
            analysis_delay: Duration::ZERO,
        }
    }
}

/// Longest an experiment stays claimed by a replica that stopped mid-work.
const CLAIM: Duration = Duration::from_secs(120);
/// Most experiments one tick looks at.
const BATCH: i64 = 50;

impl DriverConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`; a bad value names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        use crate::config::{DAY, HOUR, SECOND, duration_within};
        let mut config = DriverConfig::default();
        for (key, field, min, max) in [
            (
                "PHOENIX_EXPERIMENT_TICK",
                &mut config.tick,
                Duration::from_millis(100),
                HOUR,
            ),
            (
                "PHOENIX_EXPERIMENT_DEPLOY_TIMEOUT",
                &mut config.deploy_timeout,
                SECOND,
                DAY,
            ),
            (
                "PHOENIX_EXPERIMENT_ANALYSIS_GRACE",
                &mut config.analysis_grace,
                SECOND,
                DAY,
            ),
            (
                "PHOENIX_EXPERIMENT_ANALYSIS_DELAY",
                &mut config.analysis_delay,
                Duration::ZERO,
                HOUR,
            ),
        ] {
            if let Some(text) = lookup(key) {
                let value = humantime::parse_duration(&text).with_context(|| {
                    format!("{key}={text:?} is not a duration; write e.g. 2s or 500ms")
                })?;
                *field = duration_within(key, value, min, max)?;
            }
        }
        Ok(config)
    }
}

/// Runs until shutdown is requested; a failing tick is logged and the next
/// one tries again.
pub async fn run(state: AppState, config: DriverConfig, shutdown: Shutdown) {
    info!(
        tick_ms = config.tick.as_millis() as u64,
        "experiment driver started"
    );
    let mut interval = tokio::time::interval(config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Shutdown first: after a slow tick both are ready, and an unbiased
        // select could keep choosing the tick.
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = interval.tick() => {}
        }
        // One replica drives experiments: the one holding the singleton lock.
        if !state.leader.holds() {
            continue;
        }
        if let Err(error) = tick(&state, &config).await {
            warn!(
                error = format!("{error:#}"),
                "experiment driver tick failed"
            );
        }
    }
    info!("experiment driver stopped");
}

/// An experiment the driver claimed.
struct Due {
    id: Uuid,
    state: State,
    agents: Vec<Uuid>,
    deploy_started_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    min_reduction_pct: f64,
    min_accuracy_pct: f64,
}

/// Claims the due experiments and advances each as far as it can go.
pub async fn tick(state: &AppState, config: &DriverConfig) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "UPDATE experiments SET driver_claim_until = now() + make_interval(secs => $1) \
         WHERE id IN (SELECT id FROM experiments \
             WHERE state IN ('deploying', 'running', 'analyzing') \
               AND (state <> 'running' OR ends_at <= now()) \
               AND (driver_claim_until IS NULL OR driver_claim_until < now()) \
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id, state, agent_ids, deploy_started_at, started_at, ends_at, \
                   min_reduction_pct, min_accuracy_pct",
    )
    .bind(CLAIM.as_secs_f64())
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await
    .context("claiming due experiments")?;
    for row in rows {
        let due = Due {
            id: row.get("id"),
            state: State::parse(row.get::<&str, _>("state"))
                .context("unknown experiment state in the database")?,
            agents: row.get("agent_ids"),
            deploy_started_at: row.get("deploy_started_at"),
            started_at: row.get("started_at"),
            ends_at: row.get("ends_at"),
            min_reduction_pct: row.get("min_reduction_pct"),
            min_accuracy_pct: row.get("min_accuracy_pct"),
        };
        let id = due.id;
        if let Err(error) = advance(state, config, due).await {
            warn!(experiment = %id, error = format!("{error:#}"), "could not advance an experiment");
        }
        // Released whether or not it moved (a transition already cleared it).
        sqlx::query("UPDATE experiments SET driver_claim_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&state.pool)
            .await?;
    }
    Ok(())
}

/// What the driver decided for one experiment.
enum Decision {
    Wait,
    Move(Action, String, TransitionFields),
    /// Still analyzing: keep the problem visible and try again.
    Retry(String),
}

async fn advance(state: &AppState, config: &DriverConfig, due: Due) -> anyhow::Result<()> {
    let decision = match due.state {
        State::Deploying => deployment(state, config, &due).await?,
        State::Running => Decision::Move(
            Action::WindowEnded,
            "the experiment's duration has passed".into(),
            TransitionFields::default(),
        ),
        State::Analyzing => analysis(state, config, &due).await,
        _ => Decision::Wait,
    };
    match decision {
        Decision::Wait => Ok(()),
        Decision::Retry(problem) => {
            debug!(experiment = %due.id, %problem, "KPIs not measurable yet");
            sqlx::query("UPDATE experiments SET error = $2 WHERE id = $1 AND state = 'analyzing'")
                .bind(due.id)
                .bind(problem)
                .execute(&state.pool)
                .await?;
            Ok(())
        }
        Decision::Move(action, reason, fields) => {
            let change = Transition {
                id: due.id,
                from: due.state,
                action,
                actor: DRIVER_ACTOR.to_owned(),
                ip: None,
                reason,
                fields,
            };
            let mut tx = state.pool.begin().await?;
            let moved = change
                .apply(&mut tx)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tx.commit().await?;
            if let Some(to) = moved {
                info!(experiment = %due.id, from = due.state.as_str(), to = to.as_str(), "experiment advanced");
            }
            Ok(())
        }
    }
}

/// Deploying: the latest `run_experiment` task of each target agent decides.
async fn deployment(
    state: &AppState,
    config: &DriverConfig,
    due: &Due,
) -> anyhow::Result<Decision> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (agent_id) agent_id, state, error FROM tasks \
         WHERE experiment_id = $1 AND kind = $2 ORDER BY agent_id, created_at DESC",
    )
    .bind(due.id)
    .bind(task::RUN_EXPERIMENT)
    .fetch_all(&state.pool)
    .await?;
    let mut confirmed = 0;
    for row in &rows {
        let agent: Uuid = row.get("agent_id");
        let task_state: &str = row.get("state");
        match task_state {
            "succeeded" => confirmed += 1,
            "failed" | "expired" | "cancelled" => {
                let error: Option<String> = row.get("error");
                let why = error.unwrap_or_else(|| format!("its task {task_state}"));
                return Ok(Decision::Move(
                    Action::DeployFailed,
                    format!("agent {agent} could not start the experiment: {why}"),
                    TransitionFields {
                        error: Some(format!("agent {agent}: {why}")),
                        ..Default::default()
                    },
                ));
            }
            _ => {}
        }
    }
    if confirmed == due.agents.len() {
        return Ok(Decision::Move(
            Action::Deployed,
            format!("all {confirmed} agents run both pipelines"),
            TransitionFields::default(),
        ));
    }
    let deadline = due
        .deploy_started_at
        .map(|at| at + config.deploy_timeout)
        .unwrap_or_else(Utc::now);
    if Utc::now() >= deadline {
        let waiting: Vec<String> = due
            .agents
            .iter()
            .filter(|a| {
                !rows.iter().any(|r| {
                    r.get::<Uuid, _>("agent_id") == **a && r.get::<&str, _>("state") == "succeeded"
                })
            })
            .map(Uuid::to_string)
            .collect();
        let why = format!(
            "agents {} did not confirm within {}",
            waiting.join(", "),
            humantime::format_duration(config.deploy_timeout)
        );
        return Ok(Decision::Move(
            Action::DeployFailed,
            why.clone(),
            TransitionFields {
                error: Some(why),
                ..Default::default()
            },
        ));
    }
    Ok(Decision::Wait)
}

/// Analyzing: measure, or retry until the grace after the window is spent.
async fn analysis(state: &AppState, config: &DriverConfig, due: &Due) -> Decision {
    let (Some(started_at), Some(ends_at)) = (due.started_at, due.ends_at) else {
        return fail_analysis("the experiment has no measured window".into());
    };
    if Utc::now() < ends_at + config.analysis_delay {
        return Decision::Wait;
    }
    let subject = Subject {
        experiment: due.id,
        agents: due.agents.clone(),
        started_at,
        ends_at,
        min_reduction_pct: due.min_reduction_pct,
        min_accuracy_pct: due.min_accuracy_pct,
        price_per_series_month: state.settings.price_per_series_month,
    };
    let measured = match Prometheus::from_settings(&state.settings) {
        Ok(prometheus) => kpi::measure(&prometheus, &subject).await,
        Err(e) => Err(e),
    };
    match measured {
        Ok(kpis) => {
            let recommendation = kpis.recommendation.action.clone();
            let reason = format!(
                "measured: {:.2}% fewer series, {:.2}% accuracy; recommendation: {recommendation}",
                kpis.reduction_pct, kpis.accuracy_pct
            );
            Decision::Move(
                Action::Analyzed,
                reason,
                TransitionFields {
                    kpis: Some(Box::new(kpis)),
                    recommendation: Some(recommendation),
                    error: None,
                },
            )
        }
        Err(problem) => {
            if Utc::now() >= ends_at + config.analysis_grace {
                fail_analysis(format!(
                    "KPIs could not be measured within {} after the window: {problem}",
                    humantime::format_duration(config.analysis_grace)
                ))
            } else {
                Decision::Retry(problem.to_string())
            }
        }
    }
}

fn fail_analysis(why: String) -> Decision {
    Decision::Move(
        Action::AnalysisFailed,
        why.clone(),
        TransitionFields {
            error: Some(why),
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_with_defaults() {
        let config = DriverConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config, DriverConfig::default());
        let config = DriverConfig::from_lookup(|key| {
            (key == "PHOENIX_EXPERIMENT_TICK").then(|| "500ms".to_owned())
        })
        .unwrap();
        assert_eq!(config.tick, Duration::from_millis(500));
        let error = DriverConfig::from_lookup(|key| {
            (key == "PHOENIX_EXPERIMENT_ANALYSIS_GRACE").then(|| "soon".to_owned())
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("PHOENIX_EXPERIMENT_ANALYSIS_GRACE"),
            "{error:#}"
        );
        assert!(
            DriverConfig::from_lookup(|key| (key == "PHOENIX_EXPERIMENT_TICK").then(|| "0s".into()))
                .is_err()
        );
        let error = DriverConfig::from_lookup(|key| {
            (key == "PHOENIX_EXPERIMENT_DEPLOY_TIMEOUT").then(|| "18446744073709551615s".into())
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains(
                "PHOENIX_EXPERIMENT_DEPLOY_TIMEOUT is out of range: give a duration from 1s to 1day"
            ),
            "{error:#}"
        );
    }
}
