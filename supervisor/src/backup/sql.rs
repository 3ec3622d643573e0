//! SQL the supervisor runs itself, through `psql` as PostgreSQL's superuser
//! over the unix socket: the restore's checks and the audit rows of
//! backups, verifications and restores.

use super::job::Runner;

/// `psql` for one statement, unaligned and tuples only.
pub fn psql(runner: &Runner, database: &str, sql: &str) -> Vec<String> {
    let s = runner.settings();
    vec![
        s.pg_bin.join("psql").display().to_string(),
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-h".into(),
        s.pg_socket_dir.display().to_string(),
        "-p".into(),
        s.pg_port.to_string(),
        "-U".into(),
        s.superuser.clone(),
        "-d".into(),
        database.into(),
        "-c".into(),
        sql.into(),
    ]
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
