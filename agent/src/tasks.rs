//! Running the tasks the control plane sends (docs/api.md, "Tasks an agent
//! receives from experiments").
//!
//! A task is recorded in the queue database when it is received, before
//! anything is done for it; its result replaces it there in one
//! transaction ([`Queue::finish_task`]) and stays until the API answered
//! it. So a task delivered twice runs once, and a restart finds every task
//! either finished (its result still to report) or to run again — an
//! experiment resumes for what is left of its duration, or fails when
//! nothing is left.

use phoenix_wire::agent::{ClaimedTask, Outcome};
use phoenix_wire::pipeline::task::{self, ApplyPipeline, RunExperiment, StopExperiment};
use serde_json::json;

use crate::collect::now_ms;
use crate::queue::{PendingResult, PendingTask, Queue, Received};
use crate::state::State;

/// Records a claimed task and runs it, unless it was received before.
/// Returns whether it ran.
pub async fn receive(queue: &Queue, state: &State, claimed: ClaimedTask) -> anyhow::Result<bool> {
    let task = PendingTask {
        task_id: claimed.id,
        kind: claimed.kind,
        payload: claimed.payload,
        received_at_ms: now_ms(),
    };
    match queue.receive_task(&task).await? {
        Received::New => {}
        Received::Finished => {
            tracing::info!(task = %task.task_id, kind = %task.kind, "task received again; it ran once already");
            return Ok(false);
        }
        Received::Unfinished => {
            tracing::info!(task = %task.task_id, kind = %task.kind, "task received again before its result was stored; running it again");
        }
    }
    run(queue, state, &task).await?;
    Ok(true)
}

/// Runs the tasks received and not finished: after a restart, or after a
/// run that could not store its result.
pub async fn resume(queue: &Queue, state: &State) -> anyhow::Result<usize> {
    let pending = queue.pending_tasks().await?;
    for task in &pending {
        tracing::info!(task = %task.task_id, kind = %task.kind, "resuming a task received and not finished");
        run(queue, state, task).await?;
    }
    Ok(pending.len())
}

/// Runs one task and stores its result.
async fn run(queue: &Queue, state: &State, task: &PendingTask) -> anyhow::Result<()> {
    let (outcome, result, error) = match execute(state, task).await {
        Ok(result) => (Outcome::Succeeded, Some(result), None),
        Err(e) => {
            tracing::warn!(task = %task.task_id, kind = %task.kind, error = %format!("{e:#}"), "task failed");
            (Outcome::Failed, None, Some(format!("{e:#}")))
        }
    };
    if outcome == Outcome::Succeeded {
        tracing::info!(task = %task.task_id, kind = %task.kind, "task succeeded");
    }
    queue
        .finish_task(
            &PendingResult {
                result_id: uuid::Uuid::new_v4(),
                task_id: task.task_id,
                outcome: outcome.as_str().to_owned(),
                result,
                error,
            },
            now_ms(),
        )
        .await
}

async fn execute(state: &State, task: &PendingTask) -> anyhow::Result<serde_json::Value> {
    let payload =
        |what: &str| anyhow::anyhow!("the {what} payload is not what docs/api.md defines");
    match task.kind.as_str() {
        task::RUN_EXPERIMENT => {
            let run: RunExperiment = serde_json::from_value(task.payload.clone())
                .map_err(|e| payload(task::RUN_EXPERIMENT).context(e))?;
            let duration_ms =
                i64::try_from(run.duration_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            let until_ms = task.received_at_ms.saturating_add(duration_ms);
            if until_ms <= now_ms() {
                anyhow::bail!(
                    "the experiment's {} s from the task's receipt ended before it could run (the agent was down)",
                    run.duration_seconds
                );
            }
            state
                .start_experiment(run.experiment_id, &run.baseline, &run.candidate, until_ms)
                .await
                .map_err(|e| e.context("the pipelines cannot run"))?;
            let until = chrono::DateTime::from_timestamp_millis(until_ms).unwrap_or_default();
            Ok(json!({"experiment_id": run.experiment_id, "running_until": until}))
        }
        task::STOP_EXPERIMENT => {
            let stop: StopExperiment = serde_json::from_value(task.payload.clone())
                .map_err(|e| payload(task::STOP_EXPERIMENT).context(e))?;
            let was_running = state.stop_experiment(stop.experiment_id).await?;
            Ok(json!({"experiment_id": stop.experiment_id, "was_running": was_running}))
        }
        task::APPLY_PIPELINE => {
            let apply: ApplyPipeline = serde_json::from_value(task.payload.clone())
                .map_err(|e| payload(task::APPLY_PIPELINE).context(e))?;
            state
                .set_live(&apply.spec)
                .await
                .map_err(|e| e.context("the pipeline cannot run"))?;
            Ok(
                json!({"experiment_id": apply.experiment_id, "variant": apply.variant, "stages": apply.spec.stages.len()}),
            )
        }
        other => anyhow::bail!("this agent does not know tasks of kind {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::config::QueueBounds;

    async fn setup() -> (tempfile::TempDir, Queue, State) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(
            dir.path(),
            QueueBounds {
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
        let state = State::load(queue.clone()).await.unwrap();
        (dir, queue, state)
    }

    fn claimed(kind: &str, payload: serde_json::Value) -> ClaimedTask {
        ClaimedTask {
            id: uuid::Uuid::new_v4(),
            kind: kind.into(),
            payload,
            attempt: 1,
            lease_expires_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn an_experiment_runs_once_and_survives_a_restart() {
        let (dir, queue, state) = setup().await;
        let id = uuid::Uuid::new_v4();
        let task = claimed(
            task::RUN_EXPERIMENT,
            json!({"experiment_id": id, "baseline": {}, "candidate": {"stages": [{"type": "top_k", "k": 3, "by": "cpu"}]}, "duration_seconds": 600}),
        );
        assert!(receive(&queue, &state, task.clone()).await.unwrap());
        assert!(
            !receive(&queue, &state, task.clone()).await.unwrap(),
            "runs once"
        );
        let results = queue.results().await.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, "succeeded");

        let reopened = State::load(
            Queue::open(
                dir.path(),
                QueueBounds {
                    max_bytes: 1 << 20,
                    max_age: Duration::from_secs(3600),
                },
            )
            .await
            .unwrap(),
        )
        .await
        .unwrap();
        assert!(
            reopened
                .current(now_ms())
                .await
                .experiments
                .contains_key(&id)
        );
        assert!(
            reopened
                .current(now_ms() + 601_000)
                .await
                .experiments
                .is_empty(),
            "until its duration ends"
        );
    }

    #[tokio::test]
    async fn a_task_interrupted_by_a_crash_resumes_or_fails_never_vanishes() {
        let (_dir, queue, state) = setup().await;
        let id = uuid::Uuid::new_v4();
        // Received long ago and not finished: its duration is over.
        let stale = PendingTask {
            task_id: uuid::Uuid::new_v4(),
            kind: task::RUN_EXPERIMENT.into(),
            payload: json!({"experiment_id": id, "baseline": {}, "candidate": {}, "duration_seconds": 60}),
            received_at_ms: now_ms() - 120_000,
        };
        queue.receive_task(&stale).await.unwrap();
        let apply = PendingTask {
            task_id: uuid::Uuid::new_v4(),
            kind: task::APPLY_PIPELINE.into(),
            payload: json!({"experiment_id": id, "variant": "candidate", "spec": {"stages": [{"type": "aggregate_by_name"}]}}),
            received_at_ms: now_ms(),
        };
        queue.receive_task(&apply).await.unwrap();
        assert_eq!(resume(&queue, &state).await.unwrap(), 2);
        let results = queue.results().await.unwrap();
        let of = |t: uuid::Uuid| results.iter().find(|r| r.task_id == t).unwrap();
        assert_eq!(of(stale.task_id).outcome, "failed");
        assert!(
            of(stale.task_id)
                .error
                .as_deref()
                .unwrap()
                .contains("ended before it could run")
        );
        assert_eq!(of(apply.task_id).outcome, "succeeded");
        assert_eq!(state.current(now_ms()).await.live.spec().stages.len(), 1);
    }

    #[tokio::test]
    async fn unknown_kinds_and_bad_payloads_fail_with_a_reason() {
        let (_dir, queue, state) = setup().await;
        receive(&queue, &state, claimed("collect_now", json!({})))
            .await
            .unwrap();
        receive(
            &queue,
            &state,
            claimed(task::APPLY_PIPELINE, json!({"spec": 3})),
        )
        .await
        .unwrap();
        let bad_regex = json!({"experiment_id": uuid::Uuid::new_v4(), "variant": "candidate",
            "spec": {"stages": [{"type": "filter", "include": "("}]}});
        receive(&queue, &state, claimed(task::APPLY_PIPELINE, bad_regex))
            .await
            .unwrap();
        let results = queue.results().await.unwrap();
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.outcome == "failed"));
        assert!(
            results[0]
                .error
                .as_deref()
                .unwrap()
                .contains("does not know tasks of kind \"collect_now\"")
        );
        assert!(
            results[2].error.as_deref().unwrap().contains("cannot run"),
            "{:?}",
            results[2].error
        );
        assert!(
            state.current(now_ms()).await.live.spec().stages.is_empty(),
            "the live pipeline is unchanged"
        );
    }
}
