//! `[scaling]`: when to warn that the appliance needs a bigger machine.

use std::time::Duration;

use super::context::{Context, local};
use crate::config::ConfigError;
use crate::config::file::ScalingSection;
use crate::config::spec::*;

pub(super) fn expand(
    raw: &ScalingSection,
    ctx: &Context<'_>,
) -> Result<ScalingSettings, ConfigError> {
    let (state, loc) = (ctx.state, ctx.loc);
    // API latency, agents, metrics and database size come from the managed
    // Prometheus, when there is one.
    let prometheus = ctx
        .prometheus
        .enabled
        .then(|| format!("http://{}", local(ctx.prometheus.listen)));
    let hysteresis = raw.hysteresis.unwrap_or(10.0);
    if !(0.0..=50.0).contains(&hysteresis) {
        return Err(loc.error(
            &["scaling", "hysteresis"],
            "a percentage from 0 to 50: how far below a threshold a value must fall to clear it",
        ));
    }
    let interval = raw.interval.map_or(Duration::from_secs(60), |d| d.0);
    let repeat = raw.repeat.map_or(Duration::from_secs(3600), |d| d.0);
    if let Some(url) = &raw.webhook
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(loc.error(&["scaling", "webhook"], "an http:// or https:// URL"));
    }
    let mut triggers = Vec::new();
    for kind in TriggerKind::ALL {
        let table = match kind {
            TriggerKind::Cpu => raw.cpu,
            TriggerKind::Memory => raw.memory,
            TriggerKind::Disk => raw.disk,
            TriggerKind::ApiLatency => raw.api_latency,
            TriggerKind::Agents => raw.agents,
            TriggerKind::Metrics => raw.metrics,
            TriggerKind::DbSize => raw.db_size,
        }
        .unwrap_or_default();
        if table.enable == Some(false) {
            continue;
        }
        let (warning, critical) = kind.defaults();
        let (warning, critical) = (
            table.warning.unwrap_or(warning),
            table.critical.unwrap_or(critical),
        );
        if !(warning.is_finite() && critical.is_finite() && 0.0 <= warning && warning <= critical) {
            return Err(loc.error(
                &["scaling", kind.name()],
                format!(
                    "warning ({warning}) and critical ({critical}) must be numbers with 0 <= warning <= critical, in {}",
                    kind.unit()
                ),
            ));
        }
        triggers.push(TriggerSettings {
            kind,
            warning,
            critical,
            sustain: table.sustain.map_or(Duration::from_secs(300), |d| d.0),
        });
    }
    Ok(ScalingSettings {
        enable: raw.enable.unwrap_or(true),
        interval,
        repeat,
        hysteresis: hysteresis / 100.0,
        webhook: raw.webhook.clone(),
        triggers,
        state_file: state.join("scaling-state.json"),
        prometheus,
        disk_path: state.to_path_buf(),
    })
}
