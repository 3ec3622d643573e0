//! What the built-in sections share: the [`Context`] each one reads
//! besides its own table, the shape of what each returns, and helpers.
//! A leaf: it imports no section.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::file::{FileConfig, LimitsTable};
use crate::config::spec::*;
use crate::config::units::Share;
use crate::config::{ConfigError, LoadOptions, Located, check_user, limits};

/// PostgreSQL's superuser, and the API's role and database in it.
pub(super) const POSTGRES_SUPERUSER: &str = "postgres";
pub(super) const API_DB_USER: &str = "phoenix";
pub(super) const API_DB_NAME: &str = "phoenix";

/// What [backup] adds to the PostgreSQL server: the WAL archiving
/// settings, pgBackRest's configuration, and the directories it writes.
#[derive(Default)]
pub(super) struct Archive {
    pub(super) settings: Vec<(&'static str, String)>,
    pub(super) files: Vec<GeneratedFile>,
    pub(super) dirs: Vec<PathBuf>,
}

/// What a section adds to the appliance: services (with their generated
/// files) and the secrets generated for them on first start.
#[derive(Default)]
pub(super) struct Contribution {
    pub(super) services: Vec<ServiceSpec>,
    pub(super) secrets: Vec<SecretSpec>,
}

/// Whether a built-in runs and where it listens, for the sections that
/// talk to it.
#[derive(Clone, Copy)]
pub(super) struct Peer {
    pub(super) enabled: bool,
    pub(super) listen: SocketAddr,
}

/// The managed PostgreSQL as [postgres] sets it up, for the sections
/// that work with it ([backup]).
pub(super) struct Postgres {
    /// `[postgres] enable`: run here (otherwise external or none).
    pub(super) managed: bool,
    pub(super) port: u16,
    pub(super) bin: PathBuf,
    pub(super) data: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) user: Option<String>,
    pub(super) superuser_password: PathBuf,
}

/// The API's database as [postgres] provides it.
pub(super) struct Database {
    pub(super) url: String,
    pub(super) password_file: Option<PathBuf>,
    /// The service creating the API's role and database, to start after.
    pub(super) setup_service: Option<&'static str>,
    /// `[postgres] url`: a database not managed here.
    pub(super) external: Option<ExternalDatabase>,
}

/// What every section may read besides its own table.
pub(super) struct Context<'a> {
    pub(super) opts: &'a LoadOptions,
    pub(super) loc: &'a Located<'a>,
    pub(super) state: &'a Path,
    pub(super) run_dir: &'a Path,
    pub(super) secrets_dir: PathBuf,
    /// The API's user, resolved first: it also owns the TLS key and the
    /// database password.
    pub(super) api_user: Option<String>,
    pub(super) api: Peer,
    pub(super) prometheus: Peer,
    /// `[prometheus] out_of_order_window`: how old a sample Prometheus
    /// still stores, and so how old a sample the API takes from agents.
    pub(super) out_of_order_window: Duration,
    pub(super) pushgateway: Peer,
    pub(super) alertmanager: Peer,
    /// `[health] listen`, where Prometheus scrapes the supervisor.
    pub(super) health_listen: SocketAddr,
    pub(super) postgres: Postgres,
    /// `[prometheus] query_url`: where the API reads metrics, when not
    /// from the appliance's Prometheus.
    pub(super) query_url: Option<String>,
    /// `[prometheus] write_url`: where the API writes agents' samples when
    /// the appliance has no Prometheus.
    pub(super) write_url: Option<String>,
}

impl<'a> Context<'a> {
    pub(super) fn new(
        raw: &FileConfig,
        sup: &'a SupervisorSettings,
        opts: &'a LoadOptions,
        loc: &'a Located<'a>,
    ) -> Result<Self, ConfigError> {
        let api_enabled = raw.api.enable.unwrap_or(true);
        let api_user = if api_enabled {
            user_for(opts, &raw.api.user, "phoenix", loc, "api")?
        } else {
            None
        };
        let api_listen = raw.api.listen.unwrap_or_else(|| {
            if opts.dev {
                "127.0.0.1:8443"
            } else {
                "0.0.0.0:443"
            }
            .parse()
            .expect("valid address")
        });
        // Dev mode keeps clear of a Prometheus the distribution may already run.
        let (prom_default, push_default, alertmanager_default) = if opts.dev {
            ("127.0.0.1:19090", "127.0.0.1:19091", "127.0.0.1:19093")
        } else {
            ("127.0.0.1:9090", "127.0.0.1:9091", "127.0.0.1:9093")
        };
        let prom_listen = raw
            .prometheus
            .listen
            .unwrap_or_else(|| prom_default.parse().expect("valid address"));
        let push_listen = raw
            .pushgateway
            .listen
            .unwrap_or_else(|| push_default.parse().expect("valid address"));
        let pg = &raw.postgres;
        let postgres = Postgres {
            managed: pg.managed(),
            // At most 65535, by its type.
            port: pg
                .port
                .map_or(if opts.dev { 15432 } else { 5432 }, |p| p.0 as u16),
            bin: pg
                .bin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin")),
            data: sup.state_dir.join("postgres/data"),
            socket_dir: sup.run_dir.join("postgres"),
            user: if pg.managed() {
                user_for(opts, &pg.user, "postgres", loc, "postgres")?
            } else {
                None
            },
            superuser_password: sup.state_dir.join("secrets/postgres-superuser-password"),
        };
        Ok(Context {
            opts,
            loc,
            state: &sup.state_dir,
            run_dir: &sup.run_dir,
            secrets_dir: sup.state_dir.join("secrets"),
            api_user,
            api: Peer {
                enabled: api_enabled,
                listen: api_listen,
            },
            prometheus: Peer {
                enabled: raw.prometheus.enable.unwrap_or(true),
                listen: prom_listen,
            },
            // Long enough for what an agent's queue holds through an outage.
            out_of_order_window: raw
                .prometheus
                .out_of_order_window
                .map_or(Duration::from_secs(6 * 3600), |d| d.0),
            pushgateway: Peer {
                enabled: raw.pushgateway.enable.unwrap_or(false),
                listen: push_listen,
            },
            alertmanager: Peer {
                enabled: raw.alertmanager.enable.unwrap_or(false),
                listen: raw
                    .alertmanager
                    .listen
                    .unwrap_or_else(|| alertmanager_default.parse().expect("valid address")),
            },
            health_listen: raw
                .health
                .listen
                .unwrap_or_else(|| "127.0.0.1:8081".parse().expect("valid")),
            postgres,
            query_url: raw.prometheus.query_url.clone(),
            write_url: raw.prometheus.write_url.clone(),
        })
    }

    /// Generated files live where the supervisor alone writes: a service
    /// user owns its own directories and could swap a file there between
    /// the write and its use.
    pub(super) fn generated_file(&self, service: &str, file: &str) -> PathBuf {
        self.state.join("generated").join(service).join(file)
    }
}

/// `text` as a YAML double-quoted scalar, for the generated YAML files: a
/// JSON string is one, with every character that needs it escaped.
pub(super) fn yaml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// Loopback form of a listen address, for clients on this machine.
pub(super) fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    }
}

/// The user of a built-in section's services, checked at `[section] user`.
pub(super) fn user_for(
    opts: &LoadOptions,
    configured: &Option<String>,
    root_default: &str,
    loc: &Located<'_>,
    section: &str,
) -> Result<Option<String>, ConfigError> {
    let (user, defaulted) = match configured {
        Some(u) if u.is_empty() => return Ok(None),
        Some(u) => (u.as_str(), false),
        None if opts.root => (root_default, true),
        None => return Ok(None),
    };
    check_user(opts, user, defaulted, loc, &[section, "user"])?;
    Ok(Some(user.to_string()))
}

/// A built-in's limits: its default shares of the machine (so that a
/// bigger instance needs no edit), then the keys its `limits` table gives.
pub(super) fn with_limits(
    ctx: &Context<'_>,
    section: &str,
    table: &Option<LimitsTable>,
    memory: f64,
    cpus: f64,
) -> Result<Limits, ConfigError> {
    let machine = &ctx.opts.machine;
    let defaults = Limits {
        memory: Some(machine.memory_share(Share(memory))),
        cpus: Some(machine.cpu_share(Share(cpus))),
        pids: None,
    };
    match table {
        Some(t) => limits(defaults, t, machine)
            .map_err(|(key, m)| ctx.loc.error(&[section, "limits", key], m)),
        None => Ok(defaults),
    }
}

/// Sizes a Go program's runtime to its limits rather than to the machine,
/// which it would otherwise see whole: as many threads running Go code
/// (`GOMAXPROCS`) as whole CPUs in its limit, at least one, and a soft
/// memory limit (`GOMEMLIMIT`) at 90 % of its memory limit, where the
/// collector works harder instead of the OOM killer ending it. On a small
/// machine shared with the API and PostgreSQL, a second thread of
/// Prometheus's mostly spins and collects: one halved its CPU and took the
/// remote-write p99 at 2000 agents from seconds to tens of milliseconds
/// (docs/benchmarks.md, "Prometheus's Go runtime"). `[services.<name>]
/// env` overrides either.
pub(super) fn go_runtime(spec: &mut ServiceSpec) {
    if let Some(cpus) = spec.limits.cpus {
        let threads = (cpus.floor() as u64).max(1);
        spec.env.insert("GOMAXPROCS".into(), threads.to_string());
    }
    if let Some(memory) = spec.limits.memory {
        let mib = (memory / 10 * 9) >> 20;
        spec.env.insert("GOMEMLIMIT".into(), format!("{mib}MiB"));
    }
}

pub(super) fn arg(flag: &str, value: impl std::fmt::Display) -> String {
    format!("{flag}={value}")
}

pub(super) fn path_str(p: &Path) -> String {
    p.display().to_string()
}
