//! The built-in sections expanded into service specs with the appliance's
//! defaults. Each section has its own file ([tls], [postgres], [backup],
//! [prometheus] with [alerts], [pushgateway], [alertmanager], [api], [scaling]) whose `expand` reads its table and the
//! shared [`Context`] and returns what the section contributes. What
//! sections share is in `context.rs`; sections never import from one
//! another.

mod alertmanager;
pub mod alerts;
mod api;
mod backup;
mod context;
mod postgres;
mod prometheus;
mod pushgateway;
mod s3;
mod scaling;
mod tls;

use super::file::FileConfig;
use super::spec::*;
use super::{LoadOptions, Located};
use crate::config::ConfigError;
use context::Context;

pub use backup::parse_cron;
pub use postgres::external_database;
pub use s3::keys_include as s3_keys_include;

/// The section that owns each built-in service, for an override whose
/// section is turned off.
const SECTIONS: &[(&str, &str)] = &[
    ("postgres", "postgres"),
    ("postgres-init", "postgres"),
    ("postgres-setup", "postgres"),
    ("backup-stanza", "backup"),
    ("prometheus", "prometheus"),
    ("pushgateway", "pushgateway"),
    ("alertmanager", "alertmanager"),
    ("api", "api"),
];

/// The names of the built-in services.
pub fn service_names() -> Vec<&'static str> {
    SECTIONS.iter().map(|(name, _)| *name).collect()
}

/// The section of a built-in service name, if it is one.
pub fn section_of(service: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, section)| *section)
}

pub struct Expanded {
    pub services: Vec<ServiceSpec>,
    pub secrets: Vec<SecretSpec>,
    pub tls: TlsSettings,
    pub scaling: ScalingSettings,
    pub backup: Option<BackupSettings>,
    pub external_database: Option<ExternalDatabase>,
}

pub fn expand(
    raw: &FileConfig,
    sup: &SupervisorSettings,
    opts: &LoadOptions,
    loc: &Located<'_>,
) -> Result<Expanded, ConfigError> {
    let ctx = Context::new(raw, sup, opts, loc)?;
    let tls = tls::expand(&raw.tls, &ctx)?;
    let backup = backup::expand(&raw.backup, &ctx, &tls)?;
    let (postgres, database) = postgres::expand(&raw.postgres, &ctx, &backup.archive)?;
    let scaling = scaling::expand(&raw.scaling, &ctx)?;
    let prometheus = prometheus::expand(
        &raw.prometheus,
        &raw.alerts,
        &ctx,
        &scaling,
        backup.settings.as_ref(),
    )?;
    let pushgateway = pushgateway::expand(&raw.pushgateway, &ctx)?;
    let alertmanager = alertmanager::expand(&raw.alertmanager, &ctx)?;
    // The external database is the API's: without the API nothing uses it.
    let external_database = database
        .as_ref()
        .filter(|_| ctx.api.enabled)
        .and_then(|d| d.external.clone());
    let api = api::expand(&raw.api, &ctx, &tls, database)?;
    let mut services = Vec::new();
    let mut secrets = Vec::new();
    for part in [
        postgres,
        backup.contribution,
        prometheus,
        pushgateway,
        alertmanager,
        api,
    ] {
        services.extend(part.services);
        secrets.extend(part.secrets);
    }
    Ok(Expanded {
        services,
        secrets,
        tls,
        scaling,
        backup: backup.settings,
        external_database,
    })
}
