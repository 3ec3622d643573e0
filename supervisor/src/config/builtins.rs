//! The built-in sections ([postgres], [prometheus], [pushgateway], [api], [tls])
//! expanded into service specs with the appliance's defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::file::{FileConfig, LimitsTable, TlsMode};
use super::spec::*;
use super::{LoadOptions, Located, check_user, limits};
use crate::config::ConfigError;

pub struct Expanded {
    pub services: Vec<ServiceSpec>,
    pub secrets: Vec<SecretSpec>,
    pub tls: TlsSettings,
    pub scaling: ScalingSettings,
}

pub const POSTGRES_SUPERUSER: &str = "postgres";
pub const API_DB_USER: &str = "phoenix";
pub const API_DB_NAME: &str = "phoenix";

const GIB: u64 = 1 << 30;

/// Loopback form of a listen address, for clients on this machine.
fn local(addr: SocketAddr) -> SocketAddr {
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
fn user_for(
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

fn with_limits(
    defaults: Limits,
    table: &Option<LimitsTable>,
    loc: &Located<'_>,
    section: &str,
) -> Result<Limits, ConfigError> {
    match table {
        Some(t) => limits(defaults, t).map_err(|(key, m)| loc.error(&[section, "limits", key], m)),
        None => Ok(defaults),
    }
}

fn arg(flag: &str, value: impl std::fmt::Display) -> String {
    format!("{flag}={value}")
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn expand(
    raw: &FileConfig,
    sup: &SupervisorSettings,
    opts: &LoadOptions,
    loc: &Located<'_>,
) -> Result<Expanded, ConfigError> {
    let state = &sup.state_dir;
    let secrets_dir = state.join("secrets");
    // Generated files live where the supervisor alone writes: a service
    // user owns its own directories and could swap a file there between
    // the write and its use.
    let generated_file =
        |service: &str, file: &str| state.join("generated").join(service).join(file);
    let mut services = Vec::new();
    let mut secrets = Vec::new();
    let supervisor_exe = path_str(&opts.exe_dir.join("phoenix-supervisor"));

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

    let acme_keys = [
        ("acme_directory", raw.tls.acme_directory.is_some()),
        ("acme_email", raw.tls.acme_email.is_some()),
        ("acme_ca", raw.tls.acme_ca.is_some()),
    ];
    if raw.tls.mode != TlsMode::Acme
        && let Some((key, _)) = acme_keys.iter().find(|(_, set)| *set)
    {
        return Err(loc.error(&["tls", key], "this key is for mode = \"acme\""));
    }
    let key_owner = api_user.clone().filter(|_| api_enabled);
    // DNS names are case-insensitive; certificates carry them in lower case.
    let hostnames: Vec<String> = raw.tls.hostnames.iter().map(|h| h.to_lowercase()).collect();
    let generated = |self_signed, acme| TlsSettings {
        cert: state.join("tls/cert.pem"),
        key: state.join("tls/key.pem"),
        self_signed,
        hostnames: hostnames.clone(),
        key_owner: key_owner.clone(),
        acme,
        http_listen: None,
        https_port: api_listen.port(),
        api_local: api_enabled.then(|| local(api_listen)),
    };
    let mut tls = match raw.tls.mode {
        TlsMode::SelfSigned | TlsMode::Acme if raw.tls.cert.is_some() || raw.tls.key.is_some() => {
            return Err(loc.error(
                &["tls", "cert"],
                "cert and key are for mode = \"files\"; the other modes keep their own in state_dir/tls",
            ));
        }
        TlsMode::SelfSigned => generated(true, None),
        TlsMode::Acme => {
            if raw.tls.hostnames.is_empty() {
                return Err(loc.error(
                    &["tls", "hostnames"],
                    "mode = \"acme\" needs the names to get a certificate for, e.g. hostnames = [\"phoenix.example.com\"]",
                ));
            }
            if let Some(bad) = raw.tls.hostnames.iter().find(|h| !is_dns_name(h)) {
                return Err(loc.error(
                    &["tls", "hostnames"],
                    format!("{bad:?} is not a DNS name an ACME CA can validate over HTTP-01 (no IP addresses or wildcards)"),
                ));
            }
            let directory = raw
                .tls
                .acme_directory
                .clone()
                .unwrap_or_else(|| super::spec::LETS_ENCRYPT.to_string());
            if !directory.starts_with("https://") {
                return Err(loc.error(
                    &["tls", "acme_directory"],
                    "the ACME directory must be an https:// URL",
                ));
            }
            if let Some(email) = &raw.tls.acme_email
                && (email.contains(char::is_whitespace) || !email.contains('@'))
            {
                return Err(loc.error(&["tls", "acme_email"], "not an email address"));
            }
            generated(
                // A self-signed stand-in until the first certificate comes.
                true,
                Some(AcmeSettings {
                    directory,
                    email: raw.tls.acme_email.clone(),
                    ca: raw.tls.acme_ca.clone(),
                    account_file: secrets_dir.join("acme-account.json"),
                }),
            )
        }
        TlsMode::Files => match (&raw.tls.cert, &raw.tls.key) {
            (Some(cert), Some(key)) => TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                ..generated(false, None)
            },
            _ => {
                return Err(loc.error(
                    &["tls", "mode"],
                    "mode = \"files\" needs both cert and key paths",
                ));
            }
        },
    };
    let http_listen = match raw.tls.http_listen.as_deref() {
        Some("off") if tls.acme.is_some() => {
            return Err(loc.error(
                &["tls", "http_listen"],
                "mode = \"acme\" answers the CA's HTTP-01 challenges on it: it cannot be \"off\"",
            ));
        }
        Some("off") => None,
        Some(text) => Some(
            text.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
                .ok_or_else(|| {
                    loc.error(
                        &["tls", "http_listen"],
                        format!("{text:?} is not an address like \"0.0.0.0:80\" (port 0 cannot be found by the CA or redirected to), nor \"off\""),
                    )
                })?,
        ),
        None => Some(
            if opts.dev {
                "127.0.0.1:8080"
            } else {
                "0.0.0.0:80"
            }
            .parse()
            .expect("valid address"),
        ),
    };
    if api_enabled || tls.acme.is_some() {
        tls.http_listen = http_listen;
    }

    // PostgreSQL: initdb once (postgres-init), the server, then the API's role
    // and database (postgres-setup).
    let pg = &raw.postgres;
    let pg_enabled = pg.enable.unwrap_or(true);
    // At most 65535, by its type.
    let pg_port = pg
        .port
        .map_or(if opts.dev { 15432 } else { 5432 }, |p| p.0 as u16);
    let mut database_url = None;
    let api_password = secrets_dir.join("api-db-password");
    if pg_enabled {
        if pg.external_url.is_some() || pg.external_password_file.is_some() {
            return Err(loc.error(
                &["postgres", "external_url"],
                "external_url and external_password_file are for enable = false (a database not managed here)",
            ));
        }
        let bin = pg
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        let user = user_for(opts, &pg.user, "postgres", loc, "postgres")?;
        let data = state.join("postgres/data");
        let socket_dir = sup.run_dir.join("postgres");
        let superuser_password = secrets_dir.join("postgres-superuser-password");
        secrets.push(SecretSpec {
            path: superuser_password.clone(),
            owner: user.clone(),
        });

        let mut init = ServiceSpec::new(
            "postgres-init",
            vec![
                supervisor_exe.clone(),
                "postgres-init".into(),
                arg("--bin-dir", bin.display()),
                arg("--data-dir", data.display()),
                arg("--superuser", POSTGRES_SUPERUSER),
                arg("--superuser-password-file", superuser_password.display()),
            ],
        );
        init.oneshot = true;
        init.user = user.clone();
        init.restart.policy = RestartPolicy::OnFailure;
        init.restart.start_limit = StartLimit {
            burst: 3,
            interval: Duration::from_secs(300),
            ..init.restart.start_limit
        };
        init.dirs = vec![state.join("postgres")];
        services.push(init);

        let mut command = vec![
            path_str(&bin.join("postgres")),
            "-D".into(),
            path_str(&data),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("port={pg_port}"),
            "-c".into(),
            format!("unix_socket_directories={}", socket_dir.display()),
        ];
        let mut seen = BTreeMap::new();
        for (key, value) in &pg.settings {
            let at = || ["postgres", "settings", key.as_str()];
            let name = pg_setting_name(key).ok_or_else(|| {
                loc.error(
                    &at(),
                    format!("`{key}` is not a PostgreSQL setting name (letters, digits, `_`, `.`)"),
                )
            })?;
            if let Some(why) = supervisor_owned_setting(&name) {
                return Err(loc.error(
                    &at(),
                    format!("`{key}` is PostgreSQL's `{name}`, which the supervisor sets: {why}"),
                ));
            }
            if let Some(first) = seen.insert(name.clone(), key) {
                return Err(loc.error(
                    &at(),
                    format!(
                        "`{key}` and `{first}` are the same PostgreSQL setting, `{name}`: keep one"
                    ),
                ));
            }
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                _ => {
                    return Err(loc.error(
                        &["postgres", "settings", key],
                        "must be a string, number or boolean",
                    ));
                }
            };
            command.push("-c".into());
            command.push(format!("{name}={value}"));
        }
        let mut server = ServiceSpec::new("postgres", command);
        server.user = user.clone();
        server.depends_on = vec!["postgres-init".into()];
        server.dirs = vec![socket_dir];
        server.readiness = Some(Readiness {
            start_timeout: Duration::from_secs(300),
            ..ServiceSpec::readiness(Probe::Exec(vec![
                path_str(&bin.join("pg_isready")),
                "-q".into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                pg_port.to_string(),
            ]))
        });
        server.liveness = Some(Liveness {
            interval: Duration::from_secs(15),
            ..ServiceSpec::liveness(Probe::Tcp(([127, 0, 0, 1], pg_port).into()))
        });
        // SIGINT is PostgreSQL's fast shutdown: a clean checkpoint, no crash recovery next start.
        server.stop = StopSpec {
            signal: Signal::SIGINT,
            timeout: Duration::from_secs(90),
        };
        server.reload_signal = Some(Signal::SIGHUP);
        server.limits = with_limits(
            Limits {
                memory: Some(GIB),
                cpus: Some(1.0),
                pids: None,
            },
            &pg.limits,
            loc,
            "postgres",
        )?;
        server.ports = vec![([127, 0, 0, 1], pg_port).into()];
        services.push(server);

        if api_enabled {
            secrets.push(SecretSpec {
                path: api_password.clone(),
                owner: api_user.clone(),
            });
            let script = generated_file("postgres-setup", "setup.sql");
            let mut setup = ServiceSpec::new(
                "postgres-setup",
                vec![
                    path_str(&bin.join("psql")),
                    "-X".into(),
                    "-q".into(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    pg_port.to_string(),
                    "-U".into(),
                    POSTGRES_SUPERUSER.into(),
                    "-d".into(),
                    "postgres".into(),
                    "-f".into(),
                    path_str(&script),
                ],
            );
            setup.oneshot = true;
            setup.restart.policy = RestartPolicy::OnFailure;
            setup.depends_on = vec!["postgres".into()];
            setup.secret_env = BTreeMap::from([
                ("PGPASSWORD".to_string(), superuser_password),
                ("PHOENIX_API_DB_PASSWORD".to_string(), api_password.clone()),
            ]);
            setup.files = vec![GeneratedFile {
                path: script,
                contents: setup_sql(),
            }];
            services.push(setup);
            database_url = Some(format!(
                "postgres://{API_DB_USER}@127.0.0.1:{pg_port}/{API_DB_NAME}"
            ));
        }
    } else if let Some(url) = &pg.external_url {
        check_database_url(url).map_err(|m| loc.error(&["postgres", "external_url"], m))?;
        database_url = Some(url.clone());
    } else if pg.external_password_file.is_some() {
        return Err(loc.error(
            &["postgres", "external_password_file"],
            "goes with external_url",
        ));
    }

    // Dev mode keeps clear of a Prometheus the distribution may already run.
    let (prom_default, push_default) = if opts.dev {
        ("127.0.0.1:19090", "127.0.0.1:19091")
    } else {
        ("127.0.0.1:9090", "127.0.0.1:9091")
    };
    let prom_listen = raw
        .prometheus
        .listen
        .unwrap_or_else(|| prom_default.parse().expect("valid address"));
    let push_listen = raw
        .pushgateway
        .listen
        .unwrap_or_else(|| push_default.parse().expect("valid address"));
    let push_enabled = raw.pushgateway.enable.unwrap_or(true);

    let prom_enabled = raw.prometheus.enable.unwrap_or(true);
    if prom_enabled {
        let p = &raw.prometheus;
        let dir = state.join("prometheus");
        let config_file = generated_file("prometheus", "prometheus.yml");
        let scrape = p.scrape_interval.map_or(Duration::from_secs(15), |d| d.0);
        let retention = p.retention.clone().unwrap_or_else(|| "15d".into());
        if !is_prometheus_duration(&retention) {
            return Err(loc.error(
                &["prometheus", "retention"],
                format!("{retention:?} is not a Prometheus duration: write e.g. \"15d\", \"12w\" or \"1y\""),
            ));
        }
        let health_listen = raw
            .health
            .listen
            .unwrap_or_else(|| "127.0.0.1:8081".parse().expect("valid"));
        let yml = prometheus_yml(
            scrape,
            local(prom_listen),
            local(health_listen),
            api_enabled.then(|| local(api_listen)),
            push_enabled.then(|| local(push_listen)),
        );
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
            ],
        );
        prom.user = user_for(opts, &p.user, "prometheus", loc, "prometheus")?;
        prom.dirs = vec![dir.clone(), dir.join("data")];
        prom.files = vec![GeneratedFile {
            path: config_file,
            contents: yml,
        }];
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
        prom.limits = with_limits(
            Limits {
                memory: Some(2 * GIB),
                cpus: Some(1.5),
                pids: None,
            },
            &p.limits,
            loc,
            "prometheus",
        )?;
        prom.ports = vec![prom_listen];
        services.push(prom);
    }

    if push_enabled {
        let p = &raw.pushgateway;
        let dir = state.join("pushgateway");
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
        push.limits = with_limits(
            Limits {
                memory: Some(GIB / 2),
                cpus: Some(0.5),
                pids: None,
            },
            &p.limits,
            loc,
            "pushgateway",
        )?;
        push.ports = vec![push_listen];
        services.push(push);
    }

    if api_enabled {
        let a = &raw.api;
        let Some(url) = database_url else {
            return Err(loc.error(
                &["postgres", "enable"],
                "the API needs a database: keep [postgres] enabled or set [postgres] external_url",
            ));
        };
        let bin = a
            .bin
            .clone()
            .unwrap_or_else(|| opts.exe_dir.join("phoenix-api"));
        let mut api = ServiceSpec::new("api", vec![path_str(&bin)]);
        api.user = api_user.clone();
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
        let jwt_key = secrets_dir.join("jwt-key");
        let admin_password = secrets_dir.join("initial-admin-password");
        secrets.push(SecretSpec {
            path: jwt_key.clone(),
            owner: api_user.clone(),
        });
        secrets.push(SecretSpec {
            path: admin_password.clone(),
            owner: api_user.clone(),
        });
        api.env = BTreeMap::from([
            ("PHOENIX_API_LISTEN".to_string(), api_listen.to_string()),
            (
                "PHOENIX_API_AGENT_LISTEN".to_string(),
                agent_listen.to_string(),
            ),
            ("PHOENIX_DATABASE_URL".to_string(), url),
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
        ]);
        if push_enabled {
            api.env.insert(
                "PHOENIX_PUSHGATEWAY_URL".into(),
                format!("http://{}", local(push_listen)),
            );
        }
        if prom_enabled {
            api.env.insert(
                "PHOENIX_PROMETHEUS_URL".into(),
                format!("http://{}", local(prom_listen)),
            );
        }
        // The API reloads its certificate on SIGHUP without dropping connections.
        api.reload_signal = Some(Signal::SIGHUP);
        api.tls_reload = true;
        if let (false, Some(file)) = (pg_enabled, &pg.external_password_file) {
            api.env
                .insert("PHOENIX_DATABASE_PASSWORD_FILE".into(), path_str(file));
        }
        if pg_enabled {
            api.env.insert(
                "PHOENIX_DATABASE_PASSWORD_FILE".into(),
                path_str(&api_password),
            );
            api.depends_on.push("postgres-setup".into());
        }
        if push_enabled {
            api.depends_on.push("pushgateway".into());
        }
        let health_url = format!("https://{}/health", local(api_listen));
        api.readiness = Some(ServiceSpec::readiness(Probe::Http(health_url)));
        // Alive means answering; /health also pings the database, and a
        // database outage must not make the supervisor restart the API.
        api.liveness = Some(ServiceSpec::liveness(Probe::Tcp(local(api_listen))));
        api.limits = with_limits(
            Limits {
                memory: Some(2 * GIB),
                cpus: Some(2.0),
                pids: None,
            },
            &a.limits,
            loc,
            "api",
        )?;
        api.ports = vec![api_listen, agent_listen];
        if (api_listen.port() < 1024 || agent_listen.port() < 1024) && api.user.is_some() {
            api.capabilities = vec![Capability::NetBindService];
        }
        services.push(api);
    }

    let scaling = scaling(
        &raw.scaling,
        state,
        prom_enabled.then(|| format!("http://{}", local(prom_listen))),
        loc,
    )?;
    Ok(Expanded {
        services,
        secrets,
        tls,
        scaling,
    })
}

fn scaling(
    raw: &super::file::ScalingSection,
    state: &Path,
    prometheus: Option<String>,
    loc: &Located<'_>,
) -> Result<ScalingSettings, ConfigError> {
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

/// Creates the API's role and database, idempotently, with the password from
/// the environment (psql's \getenv keeps it off the command line).
fn setup_sql() -> String {
    format!(
        r#"\getenv api_password PHOENIX_API_DB_PASSWORD
SELECT 'CREATE ROLE {API_DB_USER} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{API_DB_USER}') \gexec
ALTER ROLE {API_DB_USER} WITH LOGIN PASSWORD :'api_password';
SELECT 'CREATE DATABASE {API_DB_NAME} OWNER {API_DB_USER}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{API_DB_NAME}') \gexec
"#
    )
}

fn prometheus_yml(
    scrape_interval: Duration,
    prometheus: SocketAddr,
    supervisor: SocketAddr,
    api: Option<SocketAddr>,
    pushgateway: Option<SocketAddr>,
) -> String {
    let mut y = format!(
        "# Generated by phoenix-supervisor from phoenix.toml; edits here are overwritten.\n\
         global:\n  scrape_interval: {}ms\n  evaluation_interval: {}ms\n\
         scrape_configs:\n\
         \x20 - job_name: prometheus\n    static_configs:\n      - targets: ['{prometheus}']\n\
         \x20 - job_name: phoenix-supervisor\n    static_configs:\n      - targets: ['{supervisor}']\n",
        scrape_interval.as_millis(),
        scrape_interval.as_millis(),
    );
    if let Some(api) = api {
        // The API's certificate names the public host; over loopback only
        // encryption matters, so the name is not verified.
        y.push_str(&format!(
            "  - job_name: phoenix-api\n    scheme: https\n    tls_config:\n      insecure_skip_verify: true\n    static_configs:\n      - targets: ['{api}']\n"
        ));
    }
    if let Some(push) = pushgateway {
        y.push_str(&format!(
            "  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['{push}']\n"
        ));
    }
    y
}

/// A name an ACME CA can validate with HTTP-01: dot-separated labels of
/// letters, digits and inner hyphens; not an IP address, no wildcard.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The name PostgreSQL gives a setting passed as `-c name=value`: the
/// postmaster turns `-` into `_` (ParseLongOption), and GUC names compare
/// without regard to ASCII case (guc_name_compare). `None` for a key that
/// is no setting name at all (it would also change where `=` splits).
fn pg_setting_name(key: &str) -> Option<String> {
    let name = key.replace('-', "_").to_ascii_lowercase();
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    (first_ok && rest_ok).then_some(name)
}

/// Why `[postgres] settings` may not set `name` (as [`pg_setting_name`]
/// gives it), or `None` when it may.
fn supervisor_owned_setting(name: &str) -> Option<&'static str> {
    const BACKUPS: &str =
        "WAL archiving and restores belong to the supervisor's backups (pgBackRest)";
    Some(match name {
        "listen_addresses" => "PostgreSQL only listens on 127.0.0.1",
        "port" => "set the port with [postgres] port",
        "unix_socket_directories" | "unix_socket_group" | "unix_socket_permissions" => {
            "the supervisor keeps PostgreSQL's socket in <run_dir>/postgres, reachable by the postgres user only"
        }
        "data_directory" => {
            "the data directory is <state_dir>/postgres/data, initialised and backed up by the supervisor"
        }
        "config_file" | "hba_file" | "ident_file" => {
            "the files initdb wrote in the data directory decide who may connect (passwords, scram-sha-256)"
        }
        "archive_mode"
        | "archive_command"
        | "archive_library"
        | "archive_cleanup_command"
        | "restore_command"
        | "recovery_end_command" => BACKUPS,
        _ if name.starts_with("recovery_target") => BACKUPS,
        _ => return None,
    })
}

/// `[postgres] external_url` is handed to the API, which refuses a
/// password in it; say so here, where the key is.
fn check_database_url(text: &str) -> Result<(), String> {
    const EXAMPLE: &str = "postgres://phoenix@db.example:5432/phoenix";
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("not a URL ({e}); write one like \"{EXAMPLE}\""))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "must start with postgres:// (not {}://), like \"{EXAMPLE}\"",
            url.scheme()
        ));
    }
    if url.password().is_some() {
        return Err(
            "contains a password: remove it and put the password in the file named by \
             external_password_file (a URL shows up in process listings and logs)"
                .into(),
        );
    }
    Ok(())
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
