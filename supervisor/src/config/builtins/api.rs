//! `[api]`: the Phoenix API, its listeners, its secrets and how it reaches
//! the database, Prometheus (queries and remote write) and the Pushgateway.

use std::collections::BTreeMap;

use nix::sys::signal::Signal;

use super::context::{Context, Contribution, Database, local, path_str, with_limits};
use crate::config::ConfigError;
use crate::config::file::ApiSection;
use crate::config::spec::*;

pub(super) fn expand(
    a: &ApiSection,
    ctx: &Context<'_>,
    tls: &TlsSettings,
    database: Option<Database>,
) -> Result<Contribution, ConfigError> {
    if !ctx.api.enabled {
        return Ok(Contribution::default());
    }
    let (opts, loc) = (ctx.opts, ctx.loc);
    let api_listen = ctx.api.listen;
    let mut secrets = Vec::new();
    let Some(database) = database else {
        return Err(loc.error(
            &["postgres", "enable"],
            "the API needs a database: keep [postgres] enabled or set [postgres] url",
        ));
    };
    let bin = a
        .bin
        .clone()
        .unwrap_or_else(|| opts.exe_dir.join("phoenix-api"));
    let mut api = ServiceSpec::new("api", vec![path_str(&bin)]);
    api.user = ctx.api_user.clone();
    let agent_listen = a.agent_listen.unwrap_or_else(|| {
        if opts.dev {
            "127.0.0.1:6700"
        } else {
            "0.0.0.0:6700"
        }
        .parse()
        .expect("valid address")
    });
    if agent_listen == api_listen {
        return Err(loc.error(
            &["api", "agent_listen"],
            "must differ from [api] listen: agents have a listener of their own",
        ));
    }
    let price = a.price_per_series_month.unwrap_or(0.05);
    if !(price.is_finite() && price >= 0.0) {
        return Err(loc.error(
            &["api", "price_per_series_month"],
            "must be a non-negative number of dollars",
        ));
    }
    let jwt_key = ctx.secrets_dir.join("jwt-key");
    let admin_password = ctx.secrets_dir.join("initial-admin-password");
    secrets.push(SecretSpec {
        path: jwt_key.clone(),
        owner: ctx.api_user.clone(),
    });
    secrets.push(SecretSpec {
        path: admin_password.clone(),
        owner: ctx.api_user.clone(),
    });
    api.env = BTreeMap::from([
        ("PHOENIX_API_LISTEN".to_string(), api_listen.to_string()),
        (
            "PHOENIX_API_AGENT_LISTEN".to_string(),
            agent_listen.to_string(),
        ),
        ("PHOENIX_DATABASE_URL".to_string(), database.url),
        ("PHOENIX_TLS_CERT".to_string(), path_str(&tls.cert)),
        ("PHOENIX_TLS_KEY".to_string(), path_str(&tls.key)),
        ("PHOENIX_JWT_KEY_FILE".to_string(), path_str(&jwt_key)),
        (
            "PHOENIX_INITIAL_ADMIN_PASSWORD_FILE".to_string(),
            path_str(&admin_password),
        ),
        (
            "PHOENIX_PRICE_PER_SERIES_MONTH".to_string(),
            price.to_string(),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
        (
            "PHOENIX_SUPERVISOR_HEALTH_URL".to_string(),
            format!("http://{}/health", local(ctx.health_listen)),
        ),
    ]);
    if let Some(url) = &ctx.query_url {
        api.env.insert("PHOENIX_PROMETHEUS_URL".into(), url.clone());
        // Remote write delivers within seconds: measure once the store
        // holds the whole window.
        api.env
            .insert("PHOENIX_EXPERIMENT_ANALYSIS_DELAY".into(), "30s".into());
    } else if ctx.prometheus.enabled {
        api.env.insert(
            "PHOENIX_PROMETHEUS_URL".into(),
            format!("http://{}", local(ctx.prometheus.listen)),
        );
    }
    // Agents' samples go to Prometheus's receiver (or, without it, the
    // store's), no older than it still stores.
    let write_url = ctx.write_url.clone().or_else(|| {
        ctx.prometheus
            .enabled
            .then(|| format!("http://{}/api/v1/write", local(ctx.prometheus.listen)))
    });
    if let Some(url) = write_url {
        api.env.insert("PHOENIX_REMOTE_WRITE_URL".into(), url);
        api.env.insert(
            "PHOENIX_REMOTE_WRITE_MAX_AGE".into(),
            format!("{}s", ctx.out_of_order_window.as_secs()),
        );
    }
    // The API reloads its certificate on SIGHUP without dropping connections.
    api.reload_signal = Some(Signal::SIGHUP);
    api.tls_reload = true;
    if let Some(file) = &database.password_file {
        api.env
            .insert("PHOENIX_DATABASE_PASSWORD_FILE".into(), path_str(file));
    }
    if let Some(setup) = database.setup_service {
        api.depends_on.push(setup.into());
    }
    let health_url = format!("https://{}/health", local(api_listen));
    api.readiness = Some(ServiceSpec::readiness(Probe::Http(health_url)));
    // Alive means answering; /health also pings the database, and a
    // database outage must not make the supervisor restart the API.
    api.liveness = Some(ServiceSpec::liveness(Probe::Tcp(local(api_listen))));
    api.limits = with_limits(ctx, "api", &a.limits, 0.25, 1.0)?;
    api.ports = vec![api_listen, agent_listen];
    if (api_listen.port() < 1024 || agent_listen.port() < 1024) && api.user.is_some() {
        api.capabilities = vec![Capability::NetBindService];
    }
    Ok(Contribution {
        services: vec![api],
        secrets,
    })
}
