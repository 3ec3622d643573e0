//! The labels every series of an agent carries in Prometheus: `job`
//! ([`JOB`]), `agent`, `experiment` and `variant` ([`NONE`] outside an
//! experiment). Remote writes get them from the API's relabelling; text
//! pushes as the grouping key of their Pushgateway group ([`group_url`]),
//! which Prometheus scrapes with `honor_labels`. KPI and cost queries
//! select series by them.
//!
//! *Invariant:* a leaf: no I/O, and it uses no other module of the crate.

use uuid::Uuid;

/// The `job` of every agent series.
pub const JOB: &str = "phoenix-agent";

/// The `experiment` and `variant` of series sent outside an experiment.
pub const NONE: &str = "none";

/// The Pushgateway's own series in every group, never counted.
pub const PUSHGATEWAY_META: &str = "push_time_seconds|push_failure_time_seconds";

/// The Pushgateway URL of one agent group:
/// `<base>/metrics/job/phoenix-agent/agent/<id>/experiment/<e>/variant/<v>`.
pub fn group_url(
    base: &url::Url,
    agent: Uuid,
    experiment: &str,
    variant: &str,
) -> anyhow::Result<url::Url> {
    let mut url = base.clone();
    let agent = agent.to_string();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the Pushgateway URL {base} cannot have a path"))?
        .pop_if_empty()
        .extend([
            "metrics",
            "job",
            JOB,
            "agent",
            &agent,
            "experiment",
            experiment,
            "variant",
            variant,
        ]);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_urls_carry_the_grouping_key() {
        let agent = Uuid::nil();
        let base: url::Url = "http://127.0.0.1:9091".parse().unwrap();
        assert_eq!(
            group_url(&base, agent, "exp-1", "candidate")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9091/metrics/job/phoenix-agent/agent/00000000-0000-0000-0000-000000000000/experiment/exp-1/variant/candidate"
        );
        let prefixed: url::Url = "http://gw:9091/push/".parse().unwrap();
        assert!(
            group_url(&prefixed, agent, NONE, NONE)
                .unwrap()
                .as_str()
                .starts_with("http://gw:9091/push/metrics/job/phoenix-agent/agent/")
        );
    }
}
