//! SQL the supervisor runs itself, through `psql` as PostgreSQL's superuser
//! over a unix socket: the restore's and the test restore's checks, and the
//! audit rows of backups, verifications and restores.

use std::time::Duration;

use super::job::Runner;

/// `psql` for one statement on the managed PostgreSQL, unaligned and
/// tuples only.
pub fn psql(runner: &Runner, database: &str, sql: &str) -> Vec<String> {
    psql_at(
        runner,
        &runner.settings().pg_socket_dir.display().to_string(),
        database,
        sql,
    )
}

/// [`psql`] on the server whose socket is in `socket` (a test restore's).
pub fn psql_at(runner: &Runner, socket: &str, database: &str, sql: &str) -> Vec<String> {
    let s = runner.settings();
    let server = [
        "-h".into(),
        socket.into(),
        "-p".into(),
        s.pg_port.to_string(),
        "-U".into(),
        s.superuser.clone(),
    ];
    psql_on(runner, &server, database, sql)
}

/// `psql` for one statement, unaligned and tuples only, on the server
/// `server` names (`-h ... -p ... -U ...`, or nothing when `database` is a
/// connection URL).
pub fn psql_on(runner: &Runner, server: &[String], database: &str, sql: &str) -> Vec<String> {
    let mut argv = vec![
        runner.settings().pg_bin.join("psql").display().to_string(),
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
    ];
    argv.extend(server.iter().cloned());
    argv.extend(["-d".into(), database.into(), "-c".into(), sql.into()]);
    argv
}

/// Waits until the server at `socket` has left recovery (reached its
/// target and promoted), asking every 500 ms for at most `within`; on time
/// out, what it last answered.
pub async fn wait_promoted(
    runner: &Runner,
    socket: &str,
    database: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match runner
            .run(
                psql_at(runner, socket, database, "SELECT pg_is_in_recovery()"),
                true,
            )
            .await
        {
            Ok(out) if out.trim() == "f" => return Ok(()),
            Ok(out) => format!("in recovery ({})", out.trim()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Appends a row to the API's audit log, actor `supervisor`: backups,
/// verifications and restores run in the supervisor, not the API, and
/// reach the log this way. Without the API's database (none managed here)
/// there is no log to write to.
pub async fn audit(
    runner: &Runner,
    action: &str,
    target: &str,
    success: bool,
    details: &serde_json::Value,
) -> Result<(), String> {
    let db = &runner.settings().database;
    if db == "postgres" {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO audit_log (actor, action, target, outcome, details) \
         VALUES ('supervisor', {}, {}, {}, {}::jsonb)",
        quote_literal(action),
        quote_literal(target),
        quote_literal(if success { "success" } else { "failure" }),
        quote_literal(&details.to_string())
    );
    runner
        .run(psql(runner, db, &sql), true)
        .await
        .map(|_| ())
        .map_err(|e| format!("writing {action} into the audit log: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_for_sql() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r#"{"a":"x'y"}"#), r#"'{"a":"x''y"}'"#);
    }
}
