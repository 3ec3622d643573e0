//! `[prometheus]`: the server and its generated `prometheus.yml`, which
//! scrapes the supervisor, the API and the Pushgateway. It also receives
//! the agents' samples by remote write (through the API), out of order
//! within `out_of_order_window`: a batch an agent held through an outage
//! carries its old timestamps. With `[alerts]` on (the default) it
//! evaluates the rules of [`super::alerts`], generated beside it as
//! `rules.yml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::alerts::{AlertInputs, rules_yml};
use super::context::{
    Context, Contribution, arg, go_runtime, local, path_str, user_for, with_limits, yaml_str,
};
use crate::config::ConfigError;
use crate::config::file::{AlertsSection, PrometheusSection, RemoteWriteTable};
use crate::config::spec::*;

pub(super) fn expand(
    p: &PrometheusSection,
    alerts: &AlertsSection,
    ctx: &Context<'_>,
    scaling: &ScalingSettings,
    backup: Option<&BackupSettings>,
) -> Result<Contribution, ConfigError> {
    let loc = ctx.loc;
    for (key, url) in [("query_url", &p.query_url), ("write_url", &p.write_url)] {
        if let Some(url) = url {
            check_http_url(url).map_err(|m| loc.error(&["prometheus", key], m))?;
        }
    }
    if !ctx.prometheus.enabled {
        if let Some(i) = (!p.remote_write.is_empty()).then_some(0) {
            return Err(loc.error(
                &["prometheus", "remote_write", &i.to_string()],
                "is sent by the appliance's Prometheus: with enable = false, give write_url \
                 (the store's receiver that the API writes agents' samples to) and query_url",
            ));
        }
        if ctx.api.enabled && p.write_url.is_some() != p.query_url.is_some() {
            return Err(loc.error(
                &[
                    "prometheus",
                    if p.write_url.is_some() {
                        "query_url"
                    } else {
                        "write_url"
                    },
                ],
                "with the appliance's Prometheus off, the API needs both the store's receiver \
                 (write_url) and its query API (query_url)",
            ));
        }
        return Ok(Contribution::default());
    }
    if p.write_url.is_some() {
        return Err(loc.error(
            &["prometheus", "write_url"],
            "is for enable = false: the appliance's Prometheus receives agents' samples and sends \
             them on to each [[prometheus.remote_write]]",
        ));
    }
    for (i, rw) in p.remote_write.iter().enumerate() {
        remote_write_check(rw).map_err(|(key, m)| {
            loc.error(&["prometheus", "remote_write", &i.to_string(), key], m)
        })?;
    }
    let (opts, state) = (ctx.opts, ctx.state);
    let prom_listen = ctx.prometheus.listen;
    let dir = state.join("prometheus");
    let config_file = ctx.generated_file("prometheus", "prometheus.yml");
    let scrape = p.scrape_interval.map_or(Duration::from_secs(15), |d| d.0);
    let retention = p.retention.clone().unwrap_or_else(|| "15d".into());
    if !is_prometheus_duration(&retention) {
        return Err(loc.error(
            &["prometheus", "retention"],
            format!(
                "{retention:?} is not a Prometheus duration: write e.g. \"15d\", \"12w\" or \"1y\""
            ),
        ));
    }
    let rules_file = alerts
        .enable
        .unwrap_or(true)
        .then(|| ctx.generated_file("prometheus", "rules.yml"));
    let mut yml = prometheus_yml(
        rules_file.as_deref(),
        scrape,
        ctx.out_of_order_window,
        &Targets {
            prometheus: local(prom_listen),
            supervisor: local(ctx.health_listen),
            api: ctx.api.enabled.then(|| local(ctx.api.listen)),
            pushgateway: ctx
                .pushgateway
                .enabled
                .then(|| local(ctx.pushgateway.listen)),
            alertmanager: ctx
                .alertmanager
                .enabled
                .then(|| local(ctx.alertmanager.listen)),
        },
    );
    yml.push_str(&remote_write_yml(&p.remote_write));
    let mut prom = ServiceSpec::new(
        "prometheus",
        vec![
            path_str(
                &p.bin
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus")),
            ),
            arg("--config.file", config_file.display()),
            arg("--storage.tsdb.path", dir.join("data").display()),
            arg("--storage.tsdb.retention.time", retention),
            arg("--web.listen-address", prom_listen),
            // The API forwards agents' samples to /api/v1/write.
            "--web.enable-remote-write-receiver".into(),
        ],
    );
    prom.user = user_for(opts, &p.user, "prometheus", loc, "prometheus")?;
    prom.dirs = vec![dir.clone(), dir.join("data")];
    prom.files = vec![GeneratedFile {
        path: config_file,
        contents: yml,
    }];
    if let Some(path) = rules_file {
        prom.files.push(GeneratedFile {
            path,
            contents: rules_yml(&AlertInputs {
                pending: alerts.pending.map_or(Duration::from_secs(120), |d| d.0),
                scaling: Some(scaling),
                api: ctx.api.enabled,
                backup: backup.is_some(),
                offsite: backup.is_some_and(|b| b.s3.is_some()),
            }),
        });
    }
    prom.readiness = Some(ServiceSpec::readiness(Probe::Http(format!(
        "http://{}/-/ready",
        local(prom_listen)
    ))));
    prom.liveness = Some(ServiceSpec::liveness(Probe::Http(format!(
        "http://{}/-/healthy",
        local(prom_listen)
    ))));
    prom.reload_signal = Some(Signal::SIGHUP);
    prom.stop.timeout = Duration::from_secs(60);
    prom.limits = with_limits(ctx, "prometheus", &p.limits, 0.4, 0.75)?;
    go_runtime(&mut prom);
    // Go's collector runs whenever the heap doubles (GOGC=100); under
    // remote write from thousands of agents that is most of the time.
    // Collect at 5x the live heap instead; GOMEMLIMIT bounds the headroom.
    prom.env.insert("GOGC".into(), "400".into());
    prom.ports = vec![prom_listen];
    Ok(Contribution {
        services: vec![prom],
        secrets: Vec::new(),
    })
}

/// What Prometheus scrapes, and the Alertmanager it sends to.
#[derive(Clone, Copy)]
struct Targets {
    prometheus: SocketAddr,
    supervisor: SocketAddr,
    api: Option<SocketAddr>,
    pushgateway: Option<SocketAddr>,
    alertmanager: Option<SocketAddr>,
}

fn prometheus_yml(
    rules: Option<&std::path::Path>,
    scrape_interval: Duration,
    out_of_order_window: Duration,
    targets: &Targets,
) -> String {
    let Targets {
        prometheus,
        supervisor,
        api,
        pushgateway,
        alertmanager,
    } = *targets;
    let rule_files = rules.map_or_else(String::new, |rules| {
        format!(
            "rule_files:\n  - {}\n",
            yaml_str(&rules.display().to_string())
        )
    });
    let alerting = alertmanager.map_or_else(String::new, |a| {
        format!("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{a}']\n")
    });
    let mut y = format!(
        "# Generated by phoenix-supervisor from phoenix.toml; edits here are overwritten.\n\
         global:\n  scrape_interval: {}ms\n  evaluation_interval: {}ms\n\
         storage:\n  tsdb:\n    out_of_order_time_window: {}s\n\
         {rule_files}{alerting}\
         scrape_configs:\n\
         \x20 - job_name: prometheus\n    static_configs:\n      - targets: ['{prometheus}']\n\
         \x20 - job_name: phoenix-supervisor\n    static_configs:\n      - targets: ['{supervisor}']\n",
        scrape_interval.as_millis(),
        scrape_interval.as_millis(),
        out_of_order_window.as_secs(),
    );
    if let Some(api) = api {
        // The API's certificate names the public host; over loopback only
        // encryption matters, so the name is not verified.
        y.push_str(&format!(
            "  - job_name: phoenix-api\n    scheme: https\n    tls_config:\n      insecure_skip_verify: true\n    static_configs:\n      - targets: ['{api}']\n"
        ));
    }
    if let Some(a) = alertmanager {
        y.push_str(&format!(
            "  - job_name: alertmanager\n    static_configs:\n      - targets: ['{a}']\n"
        ));
    }
    if let Some(push) = pushgateway {
        y.push_str(&format!(
            "  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['{push}']\n"
        ));
    }
    y
}

/// An http:// or https:// URL with a host.
fn check_http_url(text: &str) -> Result<(), String> {
    match reqwest::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "{text:?} is not an http:// or https:// URL (it is {}://)",
            u.scheme()
        )),
        Err(e) => Err(format!("{text:?} is not a URL ({e})")),
    }
}

/// One `[[prometheus.remote_write]]`: a URL, and at most one way to log in.
fn remote_write_check(rw: &RemoteWriteTable) -> Result<(), (&'static str, String)> {
    let Some(url) = &rw.url else {
        return Err(("url", "is missing: give the store's remote-write URL, e.g. \"https://mimir.example/api/v1/push\"".into()));
    };
    check_http_url(url).map_err(|m| ("url", m))?;
    if rw.bearer_token_file.is_some() && (rw.username.is_some() || rw.password_file.is_some()) {
        return Err((
            "bearer_token_file",
            "give a bearer token or basic auth (username and password_file), not both".into(),
        ));
    }
    if rw.username.is_some() != rw.password_file.is_some() {
        return Err((
            if rw.username.is_some() {
                "password_file"
            } else {
                "username"
            },
            "basic auth needs both username and password_file".into(),
        ));
    }
    Ok(())
}

/// `remote_write:` of prometheus.yml. Secrets stay in their files, which
/// Prometheus reads (they must be readable by its user).
fn remote_write_yml(stores: &[RemoteWriteTable]) -> String {
    if stores.is_empty() {
        return String::new();
    }
    let mut y = String::from("remote_write:\n");
    for rw in stores {
        let url = rw.url.as_deref().unwrap_or_default();
        y.push_str(&format!("  - url: {}\n", yaml_str(url)));
        if let Some(f) = &rw.bearer_token_file {
            y.push_str(&format!(
                "    authorization:\n      credentials_file: {}\n",
                yaml_str(&f.display().to_string())
            ));
        }
        if let (Some(user), Some(f)) = (&rw.username, &rw.password_file) {
            y.push_str(&format!(
                "    basic_auth:\n      username: {}\n      password_file: {}\n",
                yaml_str(user),
                yaml_str(&f.display().to_string())
            ));
        }
        if let Some(ca) = &rw.ca_file {
            y.push_str(&format!(
                "    tls_config:\n      ca_file: {}\n",
                yaml_str(&ca.display().to_string())
            ));
        }
    }
    y
}

/// Prometheus's duration syntax (`15d`, `1y`, `2w3d`, `0`), which
/// `--storage.tsdb.retention.time` takes.
fn is_prometheus_duration(text: &str) -> bool {
    static SYNTAX: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$",
        )
        .expect("valid regex")
    });
    !text.is_empty() && SYNTAX.is_match(text)
}
