//! Configuration in two levels: [`Args`] are the raw flags as clap parses
//! them (each also settable from the environment), [`Config`] is what the
//! service runs with after every flag has been checked against the others.

use std::{fmt, fs, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use sqlx::postgres::PgConnectOptions;

/// Raw command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "phoenix-api",
    version,
    about = "Phoenix control-plane API",
    after_help = "Exit status: 0 after a clean shutdown on SIGTERM or SIGINT, \
                  1 when starting or serving fails, 2 on invalid command-line usage."
)]
pub struct Args {
    /// Address to serve HTTP(S) on, as IP:PORT.
    #[arg(long, env = "PHOENIX_API_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// PostgreSQL URL without a password, e.g. postgres://phoenix@127.0.0.1:5432/phoenix.
    #[arg(long, env = "PHOENIX_DATABASE_URL")]
    pub database_url: String,

    /// File holding the database password; surrounding whitespace is ignored.
    #[arg(long, env = "PHOENIX_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,

    /// How long to keep retrying the first database connection (e.g. 60s, 2m).
    #[arg(
        long,
        env = "PHOENIX_DATABASE_CONNECT_TIMEOUT",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub database_connect_timeout: Duration,

    /// Most database connections this process opens.
    #[arg(long, env = "PHOENIX_DATABASE_MAX_CONNECTIONS", default_value_t = 30)]
    pub database_max_connections: u32,

    /// PEM certificate chain; with --tls-key, the API serves HTTPS.
    #[arg(long, env = "PHOENIX_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "PHOENIX_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Longest a request may take before it is answered with 503 (e.g. 30s).
    #[arg(
        long,
        env = "PHOENIX_API_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub request_timeout: Duration,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PHOENIX_API_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Address of the agents-only listener (enrollment, heartbeat, tasks, metrics), as IP:PORT.
    #[arg(long, env = "PHOENIX_API_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,

    /// File holding the key that signs access tokens (at least 32 bytes).
    /// Without it a random key is used and tokens do not survive a restart.
    #[arg(long, env = "PHOENIX_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// File holding the password of the `admin` user created on a database
    /// without users. There is no default password.
    #[arg(long, env = "PHOENIX_INITIAL_ADMIN_PASSWORD_FILE")]
    pub initial_admin_password_file: Option<PathBuf>,

    /// Prometheus remote-write receiver that agents' samples are forwarded
    /// to, e.g. http://127.0.0.1:9090/api/v1/write.
    #[arg(long, env = "PHOENIX_REMOTE_WRITE_URL")]
    pub remote_write_url: Option<url::Url>,

    /// Oldest sample accepted from an agent, as an age (1m to 30d): the
    /// receiver's out-of-order window, so that it can store what is taken.
    #[arg(
        long,
        env = "PHOENIX_REMOTE_WRITE_MAX_AGE",
        default_value = "6h",
        value_parser = humantime::parse_duration
    )]
    pub remote_write_max_age: Duration,

    /// Prometheus that experiment KPIs are read from, e.g. http://127.0.0.1:9090.
    #[arg(long, env = "PHOENIX_PROMETHEUS_URL")]
    pub prometheus_url: Option<url::Url>,

    /// The supervisor's health endpoint, shown on the console's overview,
    /// e.g. http://127.0.0.1:8081/health.
    #[arg(long, env = "PHOENIX_SUPERVISOR_HEALTH_URL")]
    pub supervisor_health_url: Option<url::Url>,

    /// Price of one active series per month, in dollars, for cost figures.
    #[arg(long, env = "PHOENIX_PRICE_PER_SERIES_MONTH", default_value_t = 0.05)]
    pub price_per_series_month: f64,

    /// Failed logins of one user name from one source (an IPv4 address or
    /// an IPv6 /64) before each further attempt waits, doubling from 1 s.
    #[arg(
        long,
        env = "PHOENIX_LOGIN_FAILURES_PER_USER_SOURCE",
        default_value_t = 5
    )]
    pub login_failures_per_user_source: u32,

    /// Failed logins from one source, whatever the user names, before delays start.
    #[arg(long, env = "PHOENIX_LOGIN_FAILURES_PER_SOURCE", default_value_t = 20)]
    pub login_failures_per_source: u32,

    /// Failed logins of one user name from all sources before sources past
    /// their own allowances share its delay (at most 1 min); sources within
    /// them never wait for it.
    #[arg(long, env = "PHOENIX_LOGIN_FAILURES_PER_USER", default_value_t = 100)]
    pub login_failures_per_user: u32,

    /// Longest wait imposed on a source or a user name from one source (1s to 15m).
    #[arg(
        long,
        env = "PHOENIX_LOGIN_MAX_DELAY",
        default_value = "15m",
        value_parser = humantime::parse_duration
    )]
    pub login_max_delay: Duration,

    /// Most connections held open on the user listener; more wait to be accepted.
    #[arg(long, env = "PHOENIX_API_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Most connections held open on the agent listener; more wait to be accepted.
    #[arg(
        long,
        env = "PHOENIX_API_AGENT_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub agent_max_connections: usize,

    /// Most connections one source (an IPv4 address or an IPv6 /64) holds
    /// open on the user listener; more are closed at once.
    #[arg(
        long,
        env = "PHOENIX_API_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 128
    )]
    pub max_connections_per_source: usize,

    /// The same on the agent listener, where many agents may share one NAT
    /// address.
    #[arg(
        long,
        env = "PHOENIX_API_AGENT_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 1024
    )]
    pub agent_max_connections_per_source: usize,

    /// Longest a client may take to complete the TLS handshake.
    #[arg(
        long,
        env = "PHOENIX_API_TLS_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub tls_handshake_timeout: Duration,

    /// Longest a client may take to send a request's headers, counted from
    /// when the connection is ready for the request (so it also closes an
    /// HTTP/1.1 connection kept alive without a next request).
    #[arg(
        long,
        env = "PHOENIX_API_HEADER_READ_TIMEOUT",
        default_value = "20s",
        value_parser = humantime::parse_duration
    )]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed.
    #[arg(
        long,
        env = "PHOENIX_API_IDLE_TIMEOUT",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub idle_timeout: Duration,
}

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    /// `None` means plain HTTP.
    pub tls: Option<TlsFiles>,
    pub http: HttpLimits,
    pub agent_listen: Option<SocketAddr>,
    /// The token-signing key (never printed).
    pub jwt_key: Option<Secret>,
    pub initial_admin_password_file: Option<PathBuf>,
    pub settings: crate::Settings,
    pub login: crate::auth::limiter::Policy,
    /// Connection limits and timeouts of the user listener.
    pub edge: crate::edge::EdgeLimits,
    /// The same for the agent listener.
    pub agent_edge: crate::edge::EdgeLimits,
}

/// Bytes that must not appear in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where the database is and how patiently to reach it.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Includes the password, so this type's `Debug` leaves it out.
    pub connect_options: PgConnectOptions,
    pub connect_timeout: Duration,
    pub max_connections: u32,
}

/// Certificate and key for HTTPS, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Bounds applied to every HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Self> {
        let connect_options =
            database_connect_options(&args.database_url, args.database_password_file.as_ref())?;
        duration_within(
            "--database-connect-timeout",
            args.database_connect_timeout,
            SECOND,
            HOUR,
        )?;
        count_within(
            "--database-max-connections",
            args.database_max_connections.into(),
            1,
            1000,
        )?;
        duration_within("--request-timeout", args.request_timeout, SECOND, HOUR)?;
        count_within(
            "--max-body-bytes",
            args.max_body_bytes as u64,
            1024,
            1 << 30,
        )?;
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => bail!(
                "--tls-cert is set but --tls-key is not: give both to serve HTTPS, \
                 or neither to serve plain HTTP"
            ),
            (None, Some(_)) => bail!(
                "--tls-key is set but --tls-cert is not: give both to serve HTTPS, \
                 or neither to serve plain HTTP"
            ),
        };
        duration_within(
            "--remote-write-max-age",
            args.remote_write_max_age,
            MINUTE,
            30 * DAY,
        )?;
        if let Some(url) = &args.remote_write_url {
            ensure!(
                matches!(url.scheme(), "http" | "https"),
                "--remote-write-url must be an http:// or https:// URL (got {url})"
            );
        }
        ensure!(
            args.price_per_series_month.is_finite() && args.price_per_series_month >= 0.0,
            "--price-per-series-month must be a non-negative number of dollars"
        );
        for (flag, value) in [
            (
                "--login-failures-per-user-source",
                args.login_failures_per_user_source,
            ),
            (
                "--login-failures-per-source",
                args.login_failures_per_source,
            ),
            ("--login-failures-per-user", args.login_failures_per_user),
        ] {
            count_within(flag, value.into(), 1, 10_000)?;
        }
        ensure!(
            (Duration::from_secs(1)..=crate::auth::limiter::FORGET_AFTER)
                .contains(&args.login_max_delay),
            "--login-max-delay must be between 1s and 15m (failures are forgotten after 15 minutes)"
        );
        let edge =
            |max_connections: usize, flag: &str, per_source: usize, per_source_flag: &str| {
                ensure!(
                    (1..=65536).contains(&max_connections),
                    "{flag} must be between 1 and 65536"
                );
                ensure!(
                    (1..=65536).contains(&per_source),
                    "{per_source_flag} must be between 1 and 65536"
                );
                for (value, flag) in [
                    (args.tls_handshake_timeout, "--tls-handshake-timeout"),
                    (args.header_read_timeout, "--header-read-timeout"),
                    (args.idle_timeout, "--idle-timeout"),
                ] {
                    ensure!(
                        (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&value),
                        "{flag} must be between 1s and 1h"
                    );
                }
                Ok(crate::edge::EdgeLimits {
                    max_connections,
                    // A share above the whole is the whole.
                    max_connections_per_source: per_source.min(max_connections),
                    tls_handshake_timeout: args.tls_handshake_timeout,
                    header_read_timeout: args.header_read_timeout,
                    idle_timeout: args.idle_timeout,
                })
            };
        let user_edge = edge(
            args.max_connections,
            "--max-connections",
            args.max_connections_per_source,
            "--max-connections-per-source",
        )?;
        let agent_edge = edge(
            args.agent_max_connections,
            "--agent-max-connections",
            args.agent_max_connections_per_source,
            "--agent-max-connections-per-source",
        )?;
        ensure!(
            args.agent_listen != Some(args.listen),
            "--agent-listen must differ from --listen: agents and people use separate listeners"
        );
        let jwt_key = match &args.jwt_key_file {
            Some(path) => {
                let bytes = fs::read(path).with_context(|| {
                    format!(
                        "could not read the JWT key file {} (--jwt-key-file)",
                        path.display()
                    )
                })?;
                let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                ensure!(
                    trimmed.len() >= 32,
                    "the JWT key file {} holds {} bytes; it needs at least 32",
                    path.display(),
                    trimmed.len()
                );
                Some(Secret(trimmed))
            }
            None => None,
        };
        Ok(Self {
            agent_listen: args.agent_listen,
            jwt_key,
            initial_admin_password_file: args.initial_admin_password_file,
            settings: crate::Settings {
                remote_write_url: args.remote_write_url,
                remote_write_max_age: args.remote_write_max_age,
                prometheus_url: args.prometheus_url,
                supervisor_health_url: args.supervisor_health_url,
                price_per_series_month: args.price_per_series_month,
            },
            login: crate::auth::limiter::Policy {
                per_user_source: args.login_failures_per_user_source,
                per_source: args.login_failures_per_source,
                per_user: args.login_failures_per_user,
                max_delay: args.login_max_delay,
            },
            edge: user_edge,
            agent_edge,
            listen: args.listen,
            database: DatabaseConfig {
                connect_options,
                connect_timeout: args.database_connect_timeout,
                max_connections: args.database_max_connections,
            },
            tls,
            http: HttpLimits {
                request_timeout: args.request_timeout,
                max_body_bytes: args.max_body_bytes,
            },
        })
    }
}

pub(crate) const SECOND: Duration = Duration::from_secs(1);
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// Refuses a duration outside `min..=max`, naming the flag or variable and
/// the range: zero and `18446744073709551615s` parse, but neither makes sense.
pub(crate) fn duration_within(
    name: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> anyhow::Result<Duration> {
    ensure!(
        (min..=max).contains(&value),
        "{name} is out of range: give a duration from {} to {}",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    Ok(value)
}

/// Refuses a count outside `min..=max`, naming the flag and the range.
fn count_within(name: &str, value: u64, min: u64, max: u64) -> anyhow::Result<u64> {
    ensure!(
        (min..=max).contains(&value),
        "{name} = {value} is out of range: give a whole number from {min} to {max}"
    );
    Ok(value)
}

fn database_connect_options(
    database_url: &str,
    password_file: Option<&PathBuf>,
) -> anyhow::Result<PgConnectOptions> {
    const EXAMPLE: &str = "postgres://phoenix@127.0.0.1:5432/phoenix";
    let url = url::Url::parse(database_url)
        .with_context(|| format!("--database-url is not a URL; expected one like {EXAMPLE}"))?;
    ensure!(
        matches!(url.scheme(), "postgres" | "postgresql"),
        "--database-url must start with postgres:// (got {}://); expected one like {EXAMPLE}",
        url.scheme()
    );
    ensure!(
        url.password().is_none(),
        "--database-url contains a password; remove it and put the password in a file \
         named by --database-password-file (a URL shows up in process listings and logs)"
    );
    let mut options = PgConnectOptions::from_str(database_url)
        .with_context(|| {
            format!("--database-url is not a usable PostgreSQL URL; expected one like {EXAMPLE}")
        })?
        .application_name(env!("CARGO_PKG_NAME"));
    if let Some(path) = password_file {
        let contents = fs::read_to_string(path).with_context(|| {
            format!(
                "could not read the database password file {} (--database-password-file)",
                path.display()
            )
        })?;
        let password = contents.trim();
        ensure!(
            !password.is_empty(),
            "the database password file {} is empty",
            path.display()
        );
        options = options.password(password);
    }
    Ok(options)
}

impl DatabaseConfig {
    /// Where the database is, for messages: `user@host:port/database`.
    pub fn target(&self) -> String {
        let options = &self.connect_options;
        let place = match options.get_socket() {
            Some(dir) => format!(
                "{} (unix socket, port {})",
                dir.display(),
                options.get_port()
            ),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let database = options.get_database().unwrap_or(options.get_username());
        format!("{}@{place}/{database}", options.get_username())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("target", &self.target())
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const URL: &str = "postgres://phoenix@127.0.0.1:5432/phoenix";

    fn parse(flags: &[&str]) -> anyhow::Result<Config> {
        let argv = std::iter::once("phoenix-api").chain(flags.iter().copied());
        Config::try_from(Args::try_parse_from(argv)?)
    }

    fn error_of(flags: &[&str]) -> String {
        format!("{:#}", parse(flags).unwrap_err())
    }

    #[test]
    fn defaults_serve_plain_http_on_the_dev_port() {
        let config = parse(&["--database-url", URL]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(config.tls, None);
        assert_eq!(config.database.connect_timeout, Duration::from_secs(60));
        assert_eq!(config.database.max_connections, 30);
        assert_eq!(
            config.http,
            HttpLimits {
                request_timeout: Duration::from_secs(30),
                max_body_bytes: 1024 * 1024
            }
        );
        assert_eq!(config.database.target(), "phoenix@127.0.0.1:5432/phoenix");
        assert_eq!(config.settings.remote_write_url, None);
        assert_eq!(
            config.settings.remote_write_max_age,
            Duration::from_secs(6 * 3600)
        );
    }

    #[test]
    fn durations_are_human_readable() {
        let config = parse(&[
            "--database-url",
            URL,
            "--database-connect-timeout",
            "2m 5s",
            "--request-timeout",
            "1500ms",
        ])
        .unwrap();
        assert_eq!(config.database.connect_timeout, Duration::from_secs(125));
        assert_eq!(config.http.request_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn tls_needs_both_certificate_and_key() {
        let config = parse(&[
            "--database-url",
            URL,
            "--tls-cert",
            "/etc/phoenix/cert.pem",
            "--tls-key",
            "/etc/phoenix/key.pem",
        ])
        .unwrap();
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "/etc/phoenix/cert.pem".into(),
                key: "/etc/phoenix/key.pem".into()
            })
        );
        assert!(
            error_of(&["--database-url", URL, "--tls-cert", "c.pem"]).contains("--tls-key is not")
        );
        assert!(
            error_of(&["--database-url", URL, "--tls-key", "k.pem"]).contains("--tls-cert is not")
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let error = error_of(&["--database-url", "postgres://phoenix:hunter2@db/phoenix"]);
        assert!(error.contains("--database-password-file"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_url_must_be_postgres() {
        let error = error_of(&["--database-url", "mysql://phoenix@db/phoenix"]);
        assert!(error.contains("must start with postgres://"), "{error}");
        let error = error_of(&["--database-url", "not a url"]);
        assert!(error.contains("is not a URL"), "{error}");
    }

    #[test]
    fn the_password_comes_from_the_file_trimmed_and_stays_out_of_debug() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  s3cret-Pa55  ").unwrap();
        let config = parse(&[
            "--database-url",
            URL,
            "--database-password-file",
            file.path().to_str().unwrap(),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("phoenix@127.0.0.1:5432/phoenix"), "{debug}");
    }

    #[test]
    fn an_empty_or_missing_password_file_is_an_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let error = error_of(&["--database-url", URL, "--database-password-file", path]);
        assert!(error.contains("is empty"), "{error}");
        let error = error_of(&[
            "--database-url",
            URL,
            "--database-password-file",
            "/nonexistent/phoenix-db-password",
        ]);
        assert!(
            error.contains(
                "could not read the database password file /nonexistent/phoenix-db-password"
            ),
            "{error}"
        );
    }

    #[test]
    fn durations_and_counts_outside_their_range_are_refused_naming_it() {
        assert_eq!(
            error_of(&[
                "--database-url",
                URL,
                "--request-timeout",
                "18446744073709551615s"
            ]),
            "--request-timeout is out of range: give a duration from 1s to 1h"
        );
        assert_eq!(
            error_of(&["--database-url", URL, "--database-connect-timeout", "2h"]),
            "--database-connect-timeout is out of range: give a duration from 1s to 1h"
        );
        assert_eq!(
            error_of(&[
                "--database-url",
                URL,
                "--database-max-connections",
                "100000"
            ]),
            "--database-max-connections = 100000 is out of range: give a whole number from 1 to 1000"
        );
        assert_eq!(
            error_of(&["--database-url", URL, "--max-body-bytes", "10"]),
            "--max-body-bytes = 10 is out of range: give a whole number from 1024 to 1073741824"
        );
        assert_eq!(
            error_of(&["--database-url", URL, "--login-failures-per-user", "0"]),
            "--login-failures-per-user = 0 is out of range: give a whole number from 1 to 10000"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let error = error_of(&["--database-url", URL, "--database-connect-timeout", "0s"]);
        assert!(error.contains("--database-connect-timeout"), "{error}");
        let error = error_of(&["--database-url", URL, "--request-timeout", "0s"]);
        assert!(error.contains("--request-timeout"), "{error}");
        let error = error_of(&["--database-url", URL, "--max-body-bytes", "0"]);
        assert!(error.contains("--max-body-bytes"), "{error}");
        let error = error_of(&["--database-url", URL, "--database-max-connections", "0"]);
        assert!(error.contains("--database-max-connections"), "{error}");
    }

    #[test]
    fn edge_and_login_limits_out_of_range_are_refused() {
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--agent-max-connections", "100000"),
            ("--tls-handshake-timeout", "0s"),
            ("--header-read-timeout", "2h"),
            ("--idle-timeout", "10ms"),
            ("--login-failures-per-user", "0"),
            ("--login-max-delay", "1h"),
            ("--remote-write-max-age", "10s"),
            ("--remote-write-max-age", "31d"),
            ("--remote-write-url", "ftp://127.0.0.1/write"),
        ] {
            let error = error_of(&["--database-url", URL, flag, value]);
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let config = parse(&["--database-url", URL, "--agent-max-connections", "10"]).unwrap();
        assert_eq!(config.agent_edge.max_connections, 10);
        assert_eq!(config.edge.max_connections, 512);
        assert_eq!(config.edge.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.login, crate::auth::limiter::Policy::default());
    }

    #[test]
    fn unix_socket_targets_are_described() {
        let config = parse(&[
            "--database-url",
            "postgres://phoenix@%2Frun%2Fpostgresql:5433/appdb",
        ])
        .unwrap();
        assert_eq!(
            config.database.target(),
            "phoenix@/run/postgresql (unix socket, port 5433)/appdb"
        );
    }
}
