//! `[backup]`: pgBackRest for the managed PostgreSQL. WAL is archived
//! continuously (PostgreSQL's `archive_command` runs `pgbackrest
//! archive-push`), the stanza is created once PostgreSQL is up
//! (`backup-stanza`), and the supervisor takes backups on the schedules
//! given here. pgBackRest reads one generated `pgbackrest.conf`; nothing
//! of it is edited by hand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use super::context::{
    API_DB_NAME, Archive, Context, Contribution, POSTGRES_SUPERUSER, arg, path_str,
};
use super::s3;
use crate::config::file::BackupSection;
use crate::config::spec::*;
use crate::config::{ConfigError, Located};

/// pgBackRest's name for the one cluster it backs up.
pub(super) const STANZA: &str = "phoenix";

/// What `[backup]` contributes: the stanza service, what the PostgreSQL
/// server needs to archive WAL, and the settings the supervisor's backup
/// task runs on. All empty when there is nothing to back up here.
#[derive(Default)]
pub(super) struct Expanded {
    pub(super) contribution: Contribution,
    pub(super) archive: Archive,
    pub(super) settings: Option<BackupSettings>,
}

pub(super) fn expand(
    raw: &BackupSection,
    ctx: &Context<'_>,
    tls: &TlsSettings,
) -> Result<Expanded, ConfigError> {
    let loc = ctx.loc;
    let pg = &ctx.postgres;
    if !raw.enable.unwrap_or(true) {
        return Ok(Expanded::default());
    }
    if !pg.managed {
        if raw.enable == Some(true) {
            return Err(loc.error(
                &["backup", "enable"],
                "backups are of the PostgreSQL managed here ([postgres] enable = true); \
                 back up an external database where it runs",
            ));
        }
        return Ok(Expanded::default());
    }
    let schedules = schedules(raw, loc)?;
    let compress = raw.compress.as_deref().unwrap_or("zst");
    if !matches!(compress, "zst" | "lz4" | "gz" | "bz2" | "none") {
        return Err(loc.error(
            &["backup", "compress"],
            format!("`{compress}` is not one of zst, lz4, gz, bz2, none"),
        ));
    }
    let backup_dir = ctx.state.join("backup");
    let repo = raw.repo.clone().unwrap_or_else(|| backup_dir.join("repo"));
    let spool = backup_dir.join("spool");
    let log = backup_dir.join("log");
    let lock = ctx.run_dir.join("pgbackrest");
    let conf = ctx.generated_file("pgbackrest", "pgbackrest.conf");
    let config_path = conf
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let retention_full_days = raw.retention_full_days.map_or(7, |d| d.0);
    let retention_full_count = raw.retention_full_count.map(|n| n.0);
    if raw.retention_full_days.is_some() && retention_full_count.is_some() {
        return Err(loc.error(
            &["backup", "retention_full_count"],
            "set retention_full_days or retention_full_count, not both",
        ));
    }
    let s3 = raw
        .s3
        .as_ref()
        .map(|t| s3::expand(t, ctx, tls, retention_full_days))
        .transpose()?;
    let settings = BackupSettings {
        pgbackrest: raw
            .pgbackrest
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/bin/pgbackrest")),
        stanza: STANZA.into(),
        config_path: config_path.clone(),
        repo: repo.clone(),
        verify_dir: backup_dir.join("verify"),
        user: pg.user.clone(),
        pg_bin: pg.bin.clone(),
        pg_port: pg.port,
        pg_socket_dir: pg.socket_dir.clone(),
        pg_data: pg.data.clone(),
        superuser: POSTGRES_SUPERUSER.into(),
        superuser_password: pg.superuser_password.clone(),
        database: if ctx.api.enabled {
            API_DB_NAME
        } else {
            "postgres"
        }
        .into(),
        schedules,
        retention_full_days,
        retention_full_count,
        verify: raw.verify.unwrap_or(true),
        process_max: raw.process_max.map_or(1, |n| n.0),
        s3,
    };
    let file = GeneratedFile {
        path: conf,
        contents: pgbackrest_conf(
            &settings,
            &spool,
            &log,
            &lock,
            compress,
            raw.archive_async.unwrap_or(true),
        ),
    };
    let archive_timeout = raw.archive_timeout.map_or(Duration::from_secs(60), |d| d.0);
    let archive_command = format!(
        "{} {} --stanza={STANZA} archive-push %p",
        archive_quote(&path_str(&settings.pgbackrest)),
        archive_quote(&arg("--config-path", config_path.display())),
    );
    let archive = Archive {
        settings: vec![
            ("archive_mode", "on".into()),
            ("archive_command", archive_command),
            (
                "archive_timeout",
                archive_timeout.as_secs().max(1).to_string(),
            ),
        ],
        files: vec![file.clone()],
        dirs: vec![repo.clone(), spool.clone(), log.clone(), lock.clone()],
    };
    let mut stanza = ServiceSpec::new(
        "backup-stanza",
        vec![
            path_str(&settings.pgbackrest),
            arg("--config-path", config_path.display()),
            format!("--stanza={STANZA}"),
            "--log-level-console=info".into(),
            "stanza-create".into(),
        ],
    );
    stanza.oneshot = true;
    stanza.user = pg.user.clone();
    stanza.depends_on = vec!["postgres".into()];
    stanza.dirs = vec![repo, spool, log, lock, settings.verify_dir.clone()];
    stanza.files = vec![file];
    stanza.secret_env = [("PGPASSWORD".to_string(), pg.superuser_password.clone())].into();
    stanza.restart.policy = RestartPolicy::OnFailure;
    Ok(Expanded {
        contribution: Contribution {
            services: vec![stanza],
            secrets: Vec::new(),
        },
        archive,
        settings: Some(settings),
    })
}

/// The schedules, defaults filled in: a full backup daily at 02:00 and a
/// differential one every hour; `""` turns a type off.
fn schedules(raw: &BackupSection, loc: &Located<'_>) -> Result<Vec<Schedule>, ConfigError> {
    let mut out = Vec::new();
    for kind in BackupKind::ALL {
        let (given, default) = match kind {
            BackupKind::Full => (&raw.full, Some("0 2 * * *")),
            BackupKind::Diff => (&raw.diff, Some("0 * * * *")),
            BackupKind::Incr => (&raw.incr, None),
        };
        let Some(cron) = given
            .as_deref()
            .or(default)
            .filter(|c| !c.trim().is_empty())
        else {
            continue;
        };
        parse_cron(cron).map_err(|why| {
            loc.error(
                &["backup", kind.name()],
                format!(
                    "`{cron}` is not a cron expression ({why}); write five fields, \
                     minute hour day month weekday, in UTC, like \"0 2 * * *\""
                ),
            )
        })?;
        out.push(Schedule {
            kind,
            cron: cron.to_string(),
        });
    }
    if !out.iter().any(|s| s.kind == BackupKind::Full) {
        return Err(loc.error(
            &["backup", "full"],
            "a schedule for full backups is needed: differential and incremental ones build \
             on a full, and retention counts fulls",
        ));
    }
    Ok(out)
}

/// A five-field cron expression (no seconds), as the schedule reads it.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!("{} fields, not 5", text.split_whitespace().count()));
    }
    croner::Cron::from_str(text).map_err(|e| e.to_string())
}

/// PostgreSQL runs archive_command through the shell after replacing `%`
/// escapes: quote for the shell, then double every `%` of the text.
fn archive_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''")).replace('%', "%%")
}

/// How long archive-push waits on S3 without progress before it gives up
/// on a segment there (PostgreSQL retries it).
const ARCHIVE_PUSH_IO_TIMEOUT_S: u32 = 5;

fn pgbackrest_conf(
    s: &BackupSettings,
    spool: &Path,
    log: &Path,
    lock: &Path,
    compress: &str,
    archive_async: bool,
) -> String {
    let mut out = String::from(
        "# Written by phoenix-supervisor from [backup] of phoenix.toml; edits here are replaced.\n\
         [global]\n",
    );
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k}={v}");
    };
    line("repo1-path", &s.repo.display());
    match s.retention_full_count {
        Some(count) => {
            line("repo1-retention-full-type", &"count");
            line("repo1-retention-full", &count);
        }
        None => {
            line("repo1-retention-full-type", &"time");
            line("repo1-retention-full", &s.retention_full_days);
        }
    }
    // Expiry is the supervisor's call, after a backup whose newest full
    // is verified: it never removes the newest verified backup.
    line("expire-auto", &"n");
    line("lock-path", &lock.display());
    line("spool-path", &spool.display());
    line("archive-async", &if archive_async { "y" } else { "n" });
    line("compress-type", &compress);
    line("process-max", &s.process_max);
    line("start-fast", &"y");
    // The supervisor captures pgBackRest's output; no log files of its own.
    line("log-level-file", &"off");
    line("log-level-console", &"warn");
    line("log-level-stderr", &"off");
    if let Some(s3) = &s.s3 {
        out.push_str(&s3::repo2_lines(s3));
    }
    // WAL goes to every repository; a dead S3 must not hold it back from
    // the local one: each push to S3 gives up after a few seconds
    // (PostgreSQL tries the segment again), several segments move at once,
    // and what the asynchronous pusher (which has no console) meets is
    // written to <state_dir>/backup/log.
    let _ = writeln!(out, "\n[global:archive-push]");
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k}={v}");
    };
    line("log-path", &log.display());
    line("log-level-file", &"warn");
    if s.s3.is_some() {
        line("io-timeout", &ARCHIVE_PUSH_IO_TIMEOUT_S);
        line("process-max", &s.process_max.max(2));
    }
    // With S3 down, PostgreSQL retries a failed archive_command about once
    // a minute: a backup's own segments may take that long to reach the
    // local repository.
    if s.s3.is_some() {
        let _ = writeln!(out, "\n[global:backup]\narchive-timeout=300");
    }
    // Restores fetch WAL one segment at a time from the repository they
    // name: the asynchronous fetcher waits on every repository, S3 too.
    let _ = writeln!(out, "\n[global:archive-get]\narchive-async=n");
    let _ = writeln!(out, "\n[{}]", s.stanza);
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k}={v}");
    };
    line("pg1-path", &s.pg_data.display());
    line("pg1-port", &s.pg_port);
    line("pg1-socket-path", &s.pg_socket_dir.display());
    line("pg1-user", &s.superuser);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_command_text_survives_the_shell_and_percent_escapes() {
        assert_eq!(archive_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(archive_quote("/x%y"), "'/x%%y'");
    }

    #[test]
    fn cron_takes_five_fields_only() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("*/15 * * * 1-5").is_ok());
        assert!(parse_cron("0 0 2 * * *").is_err(), "seconds are not taken");
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("daily").is_err());
    }
}
