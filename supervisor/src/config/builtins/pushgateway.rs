//! `[pushgateway]`: an optional Pushgateway for operators' own batch jobs,
//! loopback only, which Prometheus scrapes. Agents do not use it: they send
//! by remote write through the API.

use std::path::PathBuf;

use super::context::{
    Context, Contribution, arg, go_runtime, local, path_str, user_for, with_limits,
};
use crate::config::ConfigError;
use crate::config::file::PushgatewaySection;
use crate::config::spec::*;

pub(super) fn expand(
    p: &PushgatewaySection,
    ctx: &Context<'_>,
) -> Result<Contribution, ConfigError> {
    if !ctx.pushgateway.enabled {
        return Ok(Contribution::default());
    }
    let (opts, loc) = (ctx.opts, ctx.loc);
    let push_listen = ctx.pushgateway.listen;
    let dir = ctx.state.join("pushgateway");
    let mut push = ServiceSpec::new(
        "pushgateway",
        vec![
            path_str(
                &p.bin
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus-pushgateway")),
            ),
            arg("--web.listen-address", push_listen),
            arg("--persistence.file", dir.join("metrics.store").display()),
            "--persistence.interval=1m".into(),
            // Its check re-gathers every group on each push, so a push
            // costs as much as all agents' series together. The API
            // validates every body before forwarding it instead.
            "--push.disable-consistency-check".into(),
        ],
    );
    push.user = user_for(opts, &p.user, "prometheus", loc, "pushgateway")?;
    push.dirs = vec![dir];
    push.readiness = Some(ServiceSpec::readiness(Probe::Http(format!(
        "http://{}/-/ready",
        local(push_listen)
    ))));
    push.liveness = Some(ServiceSpec::liveness(Probe::Http(format!(
        "http://{}/-/healthy",
        local(push_listen)
    ))));
    push.limits = with_limits(ctx, "pushgateway", &p.limits, 0.1, 0.25)?;
    go_runtime(&mut push);
    push.ports = vec![push_listen];
    Ok(Contribution {
        services: vec![push],
        secrets: Vec::new(),
    })
}
