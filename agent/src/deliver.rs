//! Delivery: one loop per destination sends the queue's batches oldest
//! first, and one loop reports task results; each deletes a row only when
//! it was answered.
//!
//! | answer | what happens to the row |
//! |---|---|
//! | 2xx | deleted: delivered |
//! | 4xx (a refusal retrying cannot change) | deleted, counted in `rejected_batches`, logged with the problem's code |
//! | 401 with a credential code, from the API | kept; the agent stops (exit 78) and says to enroll again |
//! | unreachable, timeout, 5xx, 429; 401/403 from an external endpoint | kept; retried with exponential backoff and jitter (a 503 or 429 with `Retry-After`: after that long plus the backoff) |
//!
//! Samples carry the time they were collected, so a batch delivered late
//! lands where it belongs; a batch delivered twice (its answer was lost)
//! holds the same samples at the same times, which Prometheus stores once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use phoenix_backoff::Backoff;
use phoenix_wire::agent::{ReportedResult, path};
use tokio::sync::{Notify, watch};

use crate::client::{Refusal, check, remote_write_request};
use crate::config::{RemoteAuth, RemoteWrite};
use crate::enroll::Credential;
use crate::queue::{Destination, Queue};

pub const BACKOFF: Backoff =
    match Backoff::try_new(Duration::from_secs(1), Duration::from_secs(30), 0.2) {
        Ok(b) => b,
        Err(_) => panic!("the delivery backoff is valid"),
    };

/// What the health endpoint and the heartbeat report of one destination.
#[derive(Debug, Default)]
pub struct Health {
    pub send_failures: AtomicU64,
    pub delivered_batches: AtomicU64,
    /// ms since the epoch; 0 before the first.
    pub last_success_ms: AtomicI64,
}

/// Why the agent must stop: the credential was refused.
pub type Fatal = watch::Sender<Option<String>>;

pub fn credential_refused(fatal: &Fatal, code: &str, detail: &str) {
    let message = format!(
        "the control plane refused this agent's credential ({code}: {detail}). \
         The agent stops retrying: delete the credential file in its state folder, \
         put a new enrollment token in its token file, and start it again to enroll anew"
    );
    fatal.send_if_modified(|f| {
        if f.is_none() {
            *f = Some(message);
            true
        } else {
            false
        }
    });
}

/// Where one loop sends.
pub enum Target {
    Api {
        client: reqwest::Client,
        base: url::Url,
        credential: Credential,
    },
    External {
        client: reqwest::Client,
        config: RemoteWrite,
    },
}

impl Target {
    fn destination(&self) -> Destination {
        match self {
            Target::Api { .. } => Destination::Api,
            Target::External { .. } => Destination::External,
        }
    }

    async fn send(&self, experiment: &str, variant: &str, body: Vec<u8>) -> Result<(), Refusal> {
        match self {
            Target::Api {
                client,
                base,
                credential,
            } => {
                let mut url = base
                    .join(path::WRITE)
                    .map_err(|e| Refusal::Retry(e.to_string()))?;
                url.query_pairs_mut()
                    .append_pair("experiment", experiment)
                    .append_pair("variant", variant);
                check(
                    remote_write_request(client, url, body)
                        .header(reqwest::header::AUTHORIZATION, credential.bearer())
                        .send()
                        .await,
                )
                .await
                .map(drop)
            }
            Target::External { client, config } => {
                let mut request = remote_write_request(client, config.url.clone(), body);
                request = match &config.auth {
                    RemoteAuth::None => request,
                    RemoteAuth::Bearer { token_file } => {
                        let token = read_secret(token_file)?;
                        request.bearer_auth(token)
                    }
                    RemoteAuth::Basic {
                        username,
                        password_file,
                    } => {
                        let password = read_secret(password_file)?;
                        request.basic_auth(username, Some(password))
                    }
                };
                match check(request.send().await).await {
                    Ok(_) => Ok(()),
                    // Wrong or expired credentials are the operator's to fix;
                    // the batches wait for them (until max_age).
                    Err(Refusal::Refused {
                        status: 401 | 403,
                        code,
                        detail,
                    }) => Err(Refusal::Retry(format!(
                        "the endpoint refused the credentials ({code}): {detail}"
                    ))),
                    Err(Refusal::Credential { code, detail }) => {
                        Err(Refusal::Retry(format!("{code}: {detail}")))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Read on every send, so that a rotated secret is used at once.
fn read_secret(path: &std::path::Path) -> Result<String, Refusal> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Refusal::Retry(format!("cannot read {}: {e}", path.display())))
}

/// Sends `target`'s batches until the agent stops.
pub async fn batches(
    queue: Queue,
    target: Target,
    wake: Arc<Notify>,
    health: Arc<Health>,
    fatal: Fatal,
) {
    let destination = target.destination();
    let mut attempt = 0u32;
    loop {
        let next = match queue.oldest(destination, 1).await {
            Ok(mut batches) => batches.pop(),
            Err(e) => {
                tracing::error!(destination = destination.as_str(), error = %e, "cannot read the queue");
                tokio::time::sleep(BACKOFF.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let Some(batch) = next else {
            // Woken by the collector, or every second to be sure.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        match target
            .send(&batch.experiment, &batch.variant, batch.body.clone())
            .await
        {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(
                        destination = destination.as_str(),
                        "delivering again after {attempt} failed attempts"
                    );
                }
                attempt = 0;
                health.delivered_batches.fetch_add(1, Ordering::Relaxed);
                health
                    .last_success_ms
                    .store(crate::collect::now_ms(), Ordering::Relaxed);
                remove(&queue, batch.id).await;
            }
            Err(Refusal::Refused {
                status,
                code,
                detail,
            }) => {
                attempt = 0;
                tracing::warn!(
                    destination = destination.as_str(),
                    experiment = %batch.experiment,
                    variant = %batch.variant,
                    samples = batch.samples,
                    status,
                    code = %code,
                    detail = %detail,
                    "batch refused; it is dropped (counted in rejected_batches)"
                );
                let _ = queue.add_counter("rejected_batches", 1).await;
                remove(&queue, batch.id).await;
            }
            Err(Refusal::Credential { code, detail }) => {
                credential_refused(&fatal, &code, &detail);
                return;
            }
            Err(why @ (Refusal::Retry(_) | Refusal::Later { .. })) => {
                health.send_failures.fetch_add(1, Ordering::Relaxed);
                let delay = why.retry_in(BACKOFF.delay(attempt));
                if attempt == 0 || attempt.is_multiple_of(10) {
                    tracing::warn!(
                        destination = destination.as_str(),
                        error = %why,
                        retry_in = ?delay,
                        "cannot deliver; batches stay queued and collection goes on"
                    );
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn remove(queue: &Queue, id: i64) {
    if let Err(e) = queue.remove(id).await {
        // Sent again later; the same samples are stored once.
        tracing::warn!(error = %e, "cannot delete a delivered batch from the queue");
    }
}

/// Reports task results until the agent stops.
pub async fn results(
    queue: Queue,
    client: reqwest::Client,
    base: url::Url,
    credential: Credential,
    wake: Arc<Notify>,
    fatal: Fatal,
) {
    let mut attempt = 0u32;
    loop {
        let pending = queue.results().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the queued results");
            Vec::new()
        });
        if pending.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
            continue;
        }
        let mut failed = None;
        for result in pending {
            let body = ReportedResult {
                result_id: result.result_id,
                outcome: phoenix_wire::agent::Outcome::from_name(&result.outcome)
                    .unwrap_or(phoenix_wire::agent::Outcome::Failed),
                result: result.result.clone(),
                error: result.error.clone(),
            };
            let Ok(url) = base.join(&path::task_result(result.task_id)) else {
                continue;
            };
            let answer = check(
                client
                    .post(url)
                    .header(reqwest::header::AUTHORIZATION, credential.bearer())
                    .json(&body)
                    .send()
                    .await,
            )
            .await;
            match answer {
                Ok(_) => {
                    tracing::info!(task = %result.task_id, result_id = %result.result_id, outcome = %result.outcome, "result reported");
                    let _ = queue.remove_result(result.result_id).await;
                }
                Err(Refusal::Refused { code, detail, .. }) => {
                    // not_found, task_finished (cancelled meanwhile),
                    // result_id_reused: the API answered; keeping the result
                    // would not change that.
                    tracing::warn!(task = %result.task_id, code = %code, detail = %detail, "result refused; it is dropped");
                    let _ = queue.remove_result(result.result_id).await;
                }
                Err(Refusal::Credential { code, detail }) => {
                    credential_refused(&fatal, &code, &detail);
                    return;
                }
                Err(why @ (Refusal::Retry(_) | Refusal::Later { .. })) => {
                    if attempt == 0 {
                        tracing::warn!(error = %why, "cannot report results yet; they stay queued");
                    }
                    failed = Some(why);
                    break;
                }
            }
        }
        if let Some(why) = failed {
            tokio::time::sleep(why.retry_in(BACKOFF.delay(attempt))).await;
            attempt = attempt.saturating_add(1);
        } else {
            attempt = 0;
        }
    }
}
