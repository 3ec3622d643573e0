//! `phoenixctl migrate-database --to URL`: phase 2 of docs/scaling.md, the
//! built-in database moved onto an external PostgreSQL (RDS and the like).
//!
//! Dump and restore, the least downtime that needs nothing of the target
//! but an empty database and a role that owns it (logical replication
//! would need `rds.logical_replication` and a superuser on both sides):
//!
//! 1. the target is checked first, with nothing stopped: the URL as
//!    `[postgres] url` takes it (TLS verify-full), reachable with the
//!    password, and empty;
//! 2. the API stops (the downtime starts), `pg_dump -Fc` of the API's
//!    database, `pg_restore --single-transaction` into the target (all or
//!    nothing), and the rows of every table counted on both sides;
//! 3. the password goes to `<state_dir>/secrets/database-password` (0600,
//!    the API's user), an audit row into the target, and `[postgres] url`,
//!    `password_file` and `ca_file` into the config file (its comments
//!    kept), which is then reloaded: the API starts on the target and the
//!    built-in PostgreSQL stops, its data directory kept.
//!
//! Until step 3 the built-in database is the API's: any failure starts the
//! API on it again and says what the target holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::job::{Runner, rm_rf};
use super::restore::{Progress, Services};
use super::sql::{psql, psql_on, quote_literal};
use crate::config::ExternalDatabase;
use crate::fsafe;

/// What the operator asked for. The password was read from
/// `--password-file` by `phoenixctl`; it is never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The target, as `[postgres] url` takes it: no password in it.
    pub url: String,
    pub password: String,
    /// The CA bundle the target's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Check the target and say what would move; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl std::fmt::Debug for MigrateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateRequest")
            .field("url", &self.url)
            .field("password", &"<hidden>")
            .field("ca_file", &self.ca_file)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// Where the switch is written: the config file, the secret, its owner.
#[derive(Debug, Clone)]
pub struct Switch {
    pub config_file: PathBuf,
    pub secrets_dir: PathBuf,
    pub api_user: Option<String>,
    /// The supervisor runs with `--dev`: the new file is checked as such.
    pub dev: bool,
}

impl Switch {
    pub fn password_file(&self) -> PathBuf {
        self.secrets_dir.join("database-password")
    }
}

/// Every table of the `public` schema with its number of rows, in one
/// statement (`query_to_xml` runs a count per table).
const ROW_COUNTS: &str = "SELECT format('%I', table_name) || '|' || \
     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM public.%I', table_name), false, true, '')))[1]::text \
     FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1";

/// Relations outside the system schemas: a database that has any is not empty.
const RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
     AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')";

fn say(progress: &Progress, text: impl Into<String>) {
    let text = text.into();
    tracing::info!(step = %text, "migrate-database");
    let _ = progress.send(text);
}

/// `table|rows` lines into a map.
fn parse_counts(lines: &str) -> Result<BTreeMap<String, u64>, String> {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (table, rows) = l
                .rsplit_once('|')
                .ok_or_else(|| format!("unexpected row count line {l:?}"))?;
            let rows = rows
                .trim()
                .parse()
                .map_err(|_| format!("unexpected row count line {l:?}"))?;
            Ok((table.to_string(), rows))
        })
        .collect()
}

/// What differs between the built-in's row counts and the target's.
fn differences(from: &BTreeMap<String, u64>, to: &BTreeMap<String, u64>) -> Vec<String> {
    let mut tables: Vec<&String> = from.keys().chain(to.keys()).collect();
    tables.sort();
    tables.dedup();
    tables
        .into_iter()
        .filter_map(|t| match (from.get(t), to.get(t)) {
            (Some(a), Some(b)) if a == b => None,
            (a, b) => Some(format!(
                "{t}: {} here, {} there",
                a.map_or("none".into(), u64::to_string),
                b.map_or("none".into(), u64::to_string)
            )),
        })
        .collect()
}

/// `psql` against the target, its password from `password_file`.
async fn target_psql(
    runner: &Runner,
    target: &ExternalDatabase,
    password_file: &Path,
    sql: &str,
) -> Result<String, String> {
    runner
        .run_with_password(
            psql_on(runner, &[], &target.api_url, sql),
            password_file,
            true,
        )
        .await
}

/// The config file with `[postgres]` pointing at the target: `url`,
/// `password_file`, `ca_file`; `enable` removed (the built-in steps aside
/// by itself). Everything else, comments included, stays as written.
pub fn switched_config(
    text: &str,
    url: &str,
    password_file: &Path,
    ca_file: Option<&Path>,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("the config file does not parse: {e}"))?;
    let postgres = doc
        .entry("postgres")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or("[postgres] in the config file is not a table")?;
    for old in ["enable", "external_url", "external_password_file"] {
        postgres.remove(old);
    }
    postgres.insert("url", toml_edit::value(url));
    postgres.insert(
        "password_file",
        toml_edit::value(password_file.display().to_string()),
    );
    match ca_file {
        Some(ca) => {
            postgres.insert("ca_file", toml_edit::value(ca.display().to_string()));
        }
        None => {
            postgres.remove("ca_file");
        }
    }
    Ok(doc.to_string())
}

/// Carries the migration out; the reply for the operator.
pub async fn run<S: Services>(
    runner: &Runner,
    services: &S,
    switch: &Switch,
    request: &MigrateRequest,
    progress: &Progress,
) -> Result<String, String> {
    let s = runner.settings();
    let target = crate::config::external_database(&request.url, request.ca_file.as_deref())
        .map_err(|e| format!("--to: {e}"))?;
    if let Some(ca) = &request.ca_file
        && !ca.is_file()
    {
        return Err(format!("--ca-file {}: no such file", ca.display()));
    }
    let config_text = std::fs::read_to_string(&switch.config_file)
        .map_err(|e| format!("reading {}: {e}", switch.config_file.display()))?;
    let password_file = switch.password_file();
    let new_config = switched_config(
        &config_text,
        &request.url,
        &password_file,
        request.ca_file.as_deref(),
    )?;
    // The new file must be one the supervisor takes, before anything moves.
    let check = crate::config::parse(
        &new_config,
        &switch.config_file,
        &crate::config::LoadOptions::detect(switch.dev),
    );
    if let Err(e) = check {
        return Err(format!(
            "the config file would not take the new [postgres] keys ({e}); nothing was changed"
        ));
    }

    // The password goes where the API will read it; the checks below use it.
    let owner = match &switch.api_user {
        Some(user) => Some(
            crate::process::RunAs::lookup(user)
                .map_err(|e| format!("user {user}: {e}"))?
                .owner(),
        ),
        None => None,
    };
    let previous = std::fs::read(&password_file).ok();
    fsafe::write_atomic(
        &password_file,
        format!("{}\n", request.password.trim_end_matches('\n')).as_bytes(),
        0o600,
        owner,
    )
    .map_err(|e| format!("writing {}: {e}", password_file.display()))?;
    let forget_password = || {
        if let Some(old) = &previous {
            let _ = fsafe::write_atomic(&password_file, old, 0o600, owner);
        } else {
            let _ = std::fs::remove_file(&password_file);
        }
    };

    say(
        progress,
        format!(
            "checking {}:{} (TLS {})",
            target.host,
            target.port,
            if target.tls { "verify-full" } else { "off" }
        ),
    );
    let relations = match target_psql(runner, &target, &password_file, RELATIONS).await {
        Ok(out) => out.trim().parse::<u64>().unwrap_or(u64::MAX),
        Err(e) => {
            forget_password();
            return Err(format!(
                "the target database does not answer as it must ({}); nothing was changed",
                e.trim()
            ));
        }
    };
    if relations > 0 {
        forget_password();
        return Err(format!(
            "the target database is not empty ({relations} tables, views or sequences outside the \
             system schemas): migrate-database moves onto an empty database only; nothing was changed"
        ));
    }
    let here = psql(runner, &s.database, ROW_COUNTS);
    let counts_here = parse_counts(&runner.run(here.clone(), true).await?)?;
    let rows: u64 = counts_here.values().sum();
    if request.dry_run {
        forget_password();
        return Ok(format!(
            "would move {} tables ({rows} rows) onto {}:{}/{}; the target is reachable and empty",
            counts_here.len(),
            target.host,
            target.port,
            database_name(&target)
        ));
    }

    let started = Instant::now();
    say(progress, "stopping the API");
    services.set("api", false, Duration::from_secs(180)).await?;
    let down_at = Instant::now();
    let dump = s.pg_data.with_extension("migrate.dump");
    let outcome = copy(runner, &target, &password_file, &dump, progress).await;
    let _ = runner.run(rm_rf(&dump), true).await;
    let counts_there = match outcome {
        Ok(c) => c,
        Err(e) => {
            forget_password();
            let restarted = services.set("api", true, Duration::from_secs(300)).await;
            return Err(format!(
                "{e}; the API is {} on the built-in database, which is unchanged",
                if restarted.is_ok() {
                    "running again"
                } else {
                    "starting again"
                }
            ));
        }
    };
    // Counted again now that nothing writes: what moved is what was there.
    let counts_here = parse_counts(&runner.run(here, true).await?)?;
    let diff = differences(&counts_here, &counts_there);
    if !diff.is_empty() {
        forget_password();
        let _ = services.set("api", true, Duration::from_secs(300)).await;
        return Err(format!(
            "the row counts differ after the copy ({}): the API is back on the built-in database; \
             drop the tables in the target before trying again",
            diff.join("; ")
        ));
    }
    let rows: u64 = counts_here.values().sum();
    say(
        progress,
        format!(
            "{} tables and {rows} rows are in the target, every count equal",
            counts_here.len()
        ),
    );

    let details = serde_json::json!({
        "to": format!("{}:{}/{}", target.host, target.port, database_name(&target)),
        "tables": counts_here.len(),
        "rows": rows,
        "downtime_seconds": down_at.elapsed().as_secs(),
    });
    let audit = format!(
        "INSERT INTO audit_log (actor, action, target, outcome, details) VALUES \
         ('supervisor', 'database.migrate', {}, 'success', {}::jsonb)",
        quote_literal(&target.host),
        quote_literal(&details.to_string())
    );
    if let Err(e) = target_psql(runner, &target, &password_file, &audit).await {
        say(
            progress,
            format!("the audit row was not written: {}", e.trim()),
        );
    }

    say(
        progress,
        format!(
            "switching {} to the target and reloading",
            switch.config_file.display()
        ),
    );
    let mode = std::fs::metadata(&switch.config_file)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o644);
    fsafe::write_atomic(&switch.config_file, new_config.as_bytes(), mode, None)
        .map_err(|e| format!("writing {}: {e}", switch.config_file.display()))?;
    services.reload().await?;
    services.set("api", true, Duration::from_secs(300)).await?;
    Ok(format!(
        "moved {} tables ({rows} rows) onto {}:{}/{} in {} s, the API down for {} s; the API runs \
         on it now. The built-in PostgreSQL is stopped and its data kept in {}",
        counts_here.len(),
        target.host,
        target.port,
        database_name(&target),
        started.elapsed().as_secs(),
        down_at.elapsed().as_secs(),
        s.pg_data.display()
    ))
}

fn database_name(target: &ExternalDatabase) -> String {
    reqwest::Url::parse(&target.api_url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "phoenix".into())
}

/// The dump and the restore; the target's row counts.
async fn copy(
    runner: &Runner,
    target: &ExternalDatabase,
    password_file: &Path,
    dump: &Path,
    progress: &Progress,
) -> Result<BTreeMap<String, u64>, String> {
    let s = runner.settings();
    say(progress, format!("dumping the database {}", s.database));
    runner
        .run(
            vec![
                s.pg_bin.join("pg_dump").display().to_string(),
                "-h".into(),
                s.pg_socket_dir.display().to_string(),
                "-p".into(),
                s.pg_port.to_string(),
                "-U".into(),
                s.superuser.clone(),
                "-d".into(),
                s.database.clone(),
                "--format=custom".into(),
                "--no-owner".into(),
                "--no-privileges".into(),
                "-f".into(),
                dump.display().to_string(),
            ],
            true,
        )
        .await
        .map_err(|e| format!("pg_dump failed: {}", e.trim()))?;
    say(progress, "restoring it into the target (one transaction)");
    runner
        .run_with_password(
            vec![
                s.pg_bin.join("pg_restore").display().to_string(),
                "--no-owner".into(),
                "--no-privileges".into(),
                "--exit-on-error".into(),
                "--single-transaction".into(),
                "-d".into(),
                target.api_url.clone(),
                dump.display().to_string(),
            ],
            password_file,
            true,
        )
        .await
        .map_err(|e| {
            format!(
                "pg_restore into the target failed, nothing of it was kept: {}",
                e.trim()
            )
        })?;
    let counts = target_psql(runner, target, password_file, ROW_COUNTS).await?;
    parse_counts(&counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_keeps_the_file_and_its_comments() {
        let text = "# the appliance\n[postgres]\n# tuned\nport = 5433\nenable = true\n\n[api]\nlisten = \"0.0.0.0:443\" # public\n";
        let out = switched_config(
            text,
            "postgres://phoenix@db.example/phoenix",
            Path::new("/var/lib/phoenix/secrets/database-password"),
            Some(Path::new("/etc/phoenix/ca.pem")),
        )
        .unwrap();
        assert_eq!(
            out,
            "# the appliance\n[postgres]\n# tuned\nport = 5433\nurl = \"postgres://phoenix@db.example/phoenix\"\n\
             password_file = \"/var/lib/phoenix/secrets/database-password\"\nca_file = \"/etc/phoenix/ca.pem\"\n\n\
             [api]\nlisten = \"0.0.0.0:443\" # public\n"
        );
        let empty = switched_config("", "postgres://p@h/p", Path::new("/s"), None).unwrap();
        assert_eq!(
            empty,
            "[postgres]\nurl = \"postgres://p@h/p\"\npassword_file = \"/s\"\n"
        );
        assert!(
            switched_config("postgres = 1\n", "postgres://p@h/p", Path::new("/s"), None).is_err()
        );
    }

    #[test]
    fn row_counts_are_compared_table_by_table() {
        let here = parse_counts("users|3\naudit_log|10\n").unwrap();
        let there = parse_counts("audit_log|9\nusers|3\nextra|0\n").unwrap();
        assert_eq!(
            differences(&here, &there),
            ["audit_log: 10 here, 9 there", "extra: none here, 0 there"]
        );
        assert!(differences(&here, &here).is_empty());
        assert!(parse_counts("users\n").is_err());
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let r = MigrateRequest {
            url: "postgres://p@h/p".into(),
            password: "hunter2".into(),
            ca_file: None,
            dry_run: false,
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
