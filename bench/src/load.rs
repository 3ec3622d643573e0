//! Open-loop HTTP load: requests are sent on a fixed schedule whatever the
//! responses do, each on its own task over a pool of keep-alive connections,
//! so a slow response neither lowers the rate nor hides behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;

use crate::interrupt;

/// Requests in flight at most; beyond it the schedule slips, which shows as
/// generator lag and a lower achieved rate rather than as lost samples.
const MAX_IN_FLIGHT: usize = 64;
const WARM_UP_REQUESTS: usize = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

pub struct LoadResult {
    /// Latency of each answered request, from the moment it was sent.
    pub latencies: Vec<Duration>,
    /// Requests that failed or were not answered with a 2xx status.
    pub errors: usize,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Worst delay between a request's scheduled and actual send time.
    pub max_lag: Duration,
}

impl LoadResult {
    pub fn achieved_rate(&self) -> f64 {
        (self.latencies.len() + self.errors) as f64 / self.elapsed.as_secs_f64()
    }
}

/// What is requested: a URL, with a bearer token, over HTTPS that accepts
/// the appliance's self-signed certificate.
pub struct Target {
    pub url: String,
    pub bearer: Option<String>,
}

impl Target {
    pub fn plain(url: &str) -> Target {
        Target {
            url: url.to_string(),
            bearer: None,
        }
    }
}

/// GET `url` at `rate` requests per second for `duration`.
pub fn run(url: &str, rate: u32, duration: Duration) -> Result<LoadResult> {
    run_while(&Target::plain(url), rate, duration, || true)
}

/// GET the target at `rate` requests per second for at most `duration`,
/// sending no more once `keep_going` says false.
pub fn run_while(
    target: &Target,
    rate: u32,
    duration: Duration,
    keep_going: impl Fn() -> bool,
) -> Result<LoadResult> {
    // One thread: 500 requests/s is light work, and the supervisor under test
    // shares the machine's cores with the generator.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the load generator's runtime")?
        .block_on(drive(target, rate, duration, keep_going))
}

async fn drive(
    target: &Target,
    rate: u32,
    duration: Duration,
    keep_going: impl Fn() -> bool,
) -> Result<LoadResult> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &target.bearer {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .context("a bearer token that fits in a header")?,
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(REQUEST_TIMEOUT)
        .default_headers(headers)
        .danger_accept_invalid_certs(target.url.starts_with("https://127.0.0.1:"))
        .build()
        .context("build the HTTP client")?;
    let url = target.url.clone();
    for _ in 0..WARM_UP_REQUESTS {
        client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("warm-up GET {url}"))?
            .bytes()
            .await?;
    }

    let interval = Duration::from_secs(1) / rate;
    let total = (rate as f64 * duration.as_secs_f64()).round() as u32;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = Vec::with_capacity(total as usize);
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    for i in 0..total {
        interrupt::check()?;
        if !keep_going() {
            break;
        }
        let due = start + interval * i;
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        max_lag = max_lag.max(due.elapsed());
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answered = match client.get(&url).send().await {
                Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                Err(_) => false,
            };
            drop(permit);
            (answered, sent.elapsed(), Instant::now())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    let mut last = start;
    for task in tasks {
        let (answered, latency, done) = task.await.context("request task")?;
        last = last.max(done);
        if answered {
            latencies.push(latency);
        } else {
            errors += 1;
        }
    }
    Ok(LoadResult {
        latencies,
        errors,
        elapsed: last - start,
        max_lag,
    })
}
