//! What the agent runs: its live pipeline and the experiments it takes part
//! in, kept in memory for the collector and in the queue database for
//! restarts.
//!
//! *Invariant:* every change is written to the database before it is made
//! in memory, so a restart never runs less than the agent reported.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use phoenix_wire::pipeline::PipelineSpec;
use uuid::Uuid;

use crate::pipeline::Compiled;
use crate::queue::Queue;

const LIVE_PIPELINE: &str = "live_pipeline";

#[derive(Clone)]
pub struct Experiment {
    pub baseline: Compiled,
    pub candidate: Compiled,
    /// When the agent stops running it, in ms since the epoch.
    pub until_ms: i64,
}

#[derive(Clone)]
pub struct Running {
    pub live: Compiled,
    pub experiments: BTreeMap<Uuid, Experiment>,
}

#[derive(Clone)]
pub struct State {
    queue: Queue,
    running: Arc<Mutex<Running>>,
}

fn compile(json: &str) -> anyhow::Result<Compiled> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    Ok(Compiled::new(&PipelineSpec::from_json(&value)?)?)
}

impl State {
    /// Loads what the database says is running (full fidelity when no
    /// pipeline was ever applied).
    pub async fn load(queue: Queue) -> anyhow::Result<State> {
        let live = match queue.setting(LIVE_PIPELINE).await? {
            Some(json) => compile(&json)?,
            None => Compiled::new(&PipelineSpec::default())?,
        };
        let mut experiments = BTreeMap::new();
        for (id, baseline, candidate, until_ms) in queue.experiments().await? {
            experiments.insert(
                id,
                Experiment {
                    baseline: compile(&baseline)?,
                    candidate: compile(&candidate)?,
                    until_ms,
                },
            );
        }
        Ok(State {
            queue,
            running: Arc::new(Mutex::new(Running { live, experiments })),
        })
    }

    /// A copy of what runs now, without the experiments whose time is up
    /// (those are forgotten, in the database too).
    pub async fn current(&self, now_ms: i64) -> Running {
        let (running, ended): (Running, Vec<Uuid>) = {
            let mut r = self.running.lock().expect("state lock");
            let ended = r
                .experiments
                .iter()
                .filter(|(_, e)| e.until_ms <= now_ms)
                .map(|(id, _)| *id)
                .collect::<Vec<_>>();
            for id in &ended {
                r.experiments.remove(id);
            }
            (r.clone(), ended)
        };
        for id in ended {
            tracing::info!(experiment = %id, "the experiment's duration ended; its pipelines stop");
            if let Err(e) = self.queue.remove_experiment(id).await {
                tracing::warn!(experiment = %id, error = %e, "could not forget an ended experiment");
            }
        }
        running
    }

    pub async fn set_live(&self, spec: &PipelineSpec) -> anyhow::Result<()> {
        let compiled = Compiled::new(spec)?;
        self.queue
            .set_setting(LIVE_PIPELINE, &serde_json::to_string(spec)?)
            .await?;
        self.running.lock().expect("state lock").live = compiled;
        Ok(())
    }

    pub async fn start_experiment(
        &self,
        id: Uuid,
        baseline: &PipelineSpec,
        candidate: &PipelineSpec,
        until_ms: i64,
    ) -> anyhow::Result<()> {
        let experiment = Experiment {
            baseline: Compiled::new(baseline)?,
            candidate: Compiled::new(candidate)?,
            until_ms,
        };
        self.queue
            .put_experiment(
                id,
                &serde_json::to_string(baseline)?,
                &serde_json::to_string(candidate)?,
                until_ms,
            )
            .await?;
        self.running
            .lock()
            .expect("state lock")
            .experiments
            .insert(id, experiment);
        Ok(())
    }

    /// Stops an experiment; false when it was not running.
    pub async fn stop_experiment(&self, id: Uuid) -> anyhow::Result<bool> {
        self.queue.remove_experiment(id).await?;
        Ok(self
            .running
            .lock()
            .expect("state lock")
            .experiments
            .remove(&id)
            .is_some())
    }
}
