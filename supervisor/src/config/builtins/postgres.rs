//! `[postgres]`: initdb once (postgres-init), the server, then the API's
//! role and database (postgres-setup); or, with enable = false, the
//! external database handed to the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::context::{
    API_DB_NAME, API_DB_USER, Archive, Context, Contribution, Database, POSTGRES_SUPERUSER, arg,
    path_str, with_limits,
};
use crate::config::file::PostgresSection;
use crate::config::spec::*;
use crate::config::{ConfigError, Located};

/// The services and secrets of a managed PostgreSQL, and the API's
/// database (`None` when there is none for it).
pub(super) fn expand(
    pg: &PostgresSection,
    ctx: &Context<'_>,
    archive: &Archive,
) -> Result<(Contribution, Option<Database>), ConfigError> {
    let loc = ctx.loc;
    if pg.managed() {
        if pg.url.is_some() {
            return Err(loc.error(
                &["postgres", "enable"],
                "`url` names an external database, which replaces the built-in PostgreSQL: \
                 remove enable = true (or the url)",
            ));
        }
        external_only(pg, loc)?;
        managed(pg, ctx, archive)
    } else if let Some(url) = &pg.url {
        let key = loc.written("postgres", &["url", "external_url"]);
        let external = external_database(url, pg.ca_file.as_deref())
            .map_err(|m| loc.error(&["postgres", key], m))?;
        let database = Database {
            url: external.api_url.clone(),
            password_file: pg.password_file.clone(),
            setup_service: None,
            external: Some(external),
        };
        Ok((Contribution::default(), Some(database)))
    } else {
        external_only(pg, loc)?;
        Ok((Contribution::default(), None))
    }
}

/// `password_file` and `ca_file` describe an external database: refused
/// without `url`.
fn external_only(pg: &PostgresSection, loc: &Located<'_>) -> Result<(), ConfigError> {
    let password = loc.written("postgres", &["password_file", "external_password_file"]);
    for (key, given) in [
        (password, pg.password_file.is_some()),
        ("ca_file", pg.ca_file.is_some()),
    ] {
        if given {
            return Err(loc.error(
                &["postgres", key],
                "is for an external database: it goes with `url`",
            ));
        }
    }
    Ok(())
}

fn managed(
    pg: &PostgresSection,
    ctx: &Context<'_>,
    archive: &Archive,
) -> Result<(Contribution, Option<Database>), ConfigError> {
    let (opts, loc, state) = (ctx.opts, ctx.loc, ctx.state);
    let mut services = Vec::new();
    let mut secrets = Vec::new();
    let managed = &ctx.postgres;
    let (pg_port, bin, user, data) = (
        managed.port,
        managed.bin.clone(),
        managed.user.clone(),
        managed.data.clone(),
    );
    let socket_dir = managed.socket_dir.clone();
    let superuser_password = managed.superuser_password.clone();
    secrets.push(SecretSpec {
        path: superuser_password.clone(),
        owner: user.clone(),
    });

    let mut init = ServiceSpec::new(
        "postgres-init",
        vec![
            path_str(&opts.exe_dir.join("phoenix-supervisor")),
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
    command.extend(settings_args(pg, loc)?);
    for (name, value) in &archive.settings {
        command.push("-c".into());
        command.push(format!("{name}={value}"));
    }
    let mut server = ServiceSpec::new("postgres", command);
    server.user = user.clone();
    server.depends_on = vec!["postgres-init".into()];
    server.dirs = vec![socket_dir];
    server.dirs.extend(archive.dirs.iter().cloned());
    server.files = archive.files.clone();
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
    server.limits = with_limits(ctx, "postgres", &pg.limits, 0.25, 0.5)?;
    server.ports = vec![([127, 0, 0, 1], pg_port).into()];
    services.push(server);

    let mut database = None;
    if ctx.api.enabled {
        let api_password = ctx.secrets_dir.join("api-db-password");
        secrets.push(SecretSpec {
            path: api_password.clone(),
            owner: ctx.api_user.clone(),
        });
        services.push(setup(ctx, &bin, pg_port, superuser_password, &api_password));
        database = Some(Database {
            url: format!("postgres://{API_DB_USER}@127.0.0.1:{pg_port}/{API_DB_NAME}"),
            password_file: Some(api_password),
            setup_service: Some("postgres-setup"),
            external: None,
        });
    }
    Ok((Contribution { services, secrets }, database))
}

/// `-c name=value` for each of `[postgres] settings`, refusing what the
/// supervisor sets itself.
fn settings_args(pg: &PostgresSection, loc: &Located<'_>) -> Result<Vec<String>, ConfigError> {
    let mut command = Vec::new();
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
    Ok(command)
}

/// postgres-setup: the API's role and database, as the superuser.
fn setup(
    ctx: &Context<'_>,
    bin: &Path,
    pg_port: u16,
    superuser_password: PathBuf,
    api_password: &Path,
) -> ServiceSpec {
    let script = ctx.generated_file("postgres-setup", "setup.sql");
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
        (
            "PHOENIX_API_DB_PASSWORD".to_string(),
            api_password.to_path_buf(),
        ),
    ]);
    setup.files = vec![GeneratedFile {
        path: script,
        contents: setup_sql(),
    }];
    setup
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

/// `[postgres] url`: the external database as the API and the health
/// check reach it. TLS with full verification unless the database is on
/// this machine: `sslmode=verify-full` is added, and `sslrootcert` when a
/// CA bundle is named; a weaker `sslmode` to another machine is refused.
/// A password in the URL is refused without repeating it.
pub fn external_database(text: &str, ca_file: Option<&Path>) -> Result<ExternalDatabase, String> {
    const EXAMPLE: &str = "postgres://phoenix@db.example:5432/phoenix";
    let mut url = reqwest::Url::parse(text)
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
             password_file (a URL shows up in process listings and logs)"
                .into(),
        );
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        _ => return Err(format!("names no host; write one like \"{EXAMPLE}\"")),
    };
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let port = url.port().unwrap_or(5432);
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (key, _) in &query {
        if matches!(key.as_str(), "password" | "sslpassword" | "sslrootcert") {
            return Err(format!(
                "sets `{key}` in the URL: use password_file and ca_file instead"
            ));
        }
    }
    let sslmode = query
        .iter()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.clone());
    let tls = match sslmode.as_deref() {
        None | Some("verify-full") => true,
        Some(_) if local => false,
        Some(mode) => {
            return Err(format!(
                "sslmode={mode} does not verify the server's certificate and name: remove it \
                 (verify-full is the default) and name the server's CA bundle in ca_file"
            ));
        }
    };
    if tls {
        let mut pairs = url.query_pairs_mut();
        if sslmode.is_none() {
            pairs.append_pair("sslmode", "verify-full");
        }
        if let Some(ca) = ca_file {
            pairs.append_pair("sslrootcert", &ca.display().to_string());
        }
    } else if ca_file.is_some() {
        return Err(format!(
            "sslmode={} turns TLS off, so ca_file would not be used: remove one of them",
            sslmode.unwrap_or_default()
        ));
    }
    Ok(ExternalDatabase {
        api_url: url.to_string(),
        host,
        port,
        tls,
        ca_file: ca_file.map(Path::to_path_buf),
    })
}
