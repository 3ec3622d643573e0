//! The backup benchmark's tables: backup and restore times beside
//! pgBackRest by hand and pg_dump, the RPO, and API latency.

use std::time::Duration;

use super::{ApiLatency, Full, Results, Rpo};
use crate::load::LoadResult;
use crate::report::{Table, Verdict};
use crate::stats::{Summary, ms};

/// Targets of the project issue.
const OVERHEAD_TARGET_PERCENT: f64 = 5.0;
const RPO_TARGET: Duration = Duration::from_secs(60);

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

/// (Phoenix − hand) / hand, in percent, from medians.
pub fn overhead_percent(phoenix: &[Full], hand: &[Full]) -> f64 {
    let p = median(&phoenix.iter().map(|f| f.took).collect::<Vec<_>>()).as_secs_f64();
    let h = median(&hand.iter().map(|f| f.took).collect::<Vec<_>>()).as_secs_f64();
    if h > 0.0 {
        (p - h) / h * 100.0
    } else {
        f64::NAN
    }
}

fn full_row(name: &str, runs: &[Full], target: String, result: &str) -> Vec<String> {
    let times: Vec<Duration> = runs.iter().map(|f| f.took).collect();
    let sizes = |f: fn(&Full) -> u64| {
        let mut v: Vec<u64> = runs.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2)
            .map_or("-".into(), |b| format!("{:.1}", mib(*b)))
    };
    vec![
        name.into(),
        runs.len().to_string(),
        secs(median(&times)),
        times.iter().min().map_or("-".into(), |d| secs(*d)),
        times.iter().max().map_or("-".into(), |d| secs(*d)),
        sizes(|f| f.size),
        sizes(|f| f.repo_size),
        target,
        result.into(),
    ]
}

pub fn backup_table(r: &Results, verdicts: &mut Vec<Verdict>) -> Table {
    let mut t = Table::new(
        "Full backup: Phoenix beside pgBackRest by hand and pg_dump",
        vec![
            "method",
            "n",
            "median s",
            "min s",
            "max s",
            "size MiB",
            "stored MiB",
            "target",
            "result",
        ],
    );
    let overhead = overhead_percent(&r.phoenix, &r.hand);
    let v = Verdict::of(overhead <= OVERHEAD_TARGET_PERCENT);
    verdicts.push(v);
    t.row(full_row(
        "phoenixctl backup now --type full (verify off)",
        &r.phoenix,
        format!("overhead <= {OVERHEAD_TARGET_PERCENT:.0} %"),
        v.as_str(),
    ));
    t.row(full_row(
        "pgbackrest backup by hand, same configuration",
        &r.hand,
        "-".into(),
        "baseline",
    ));
    let med = |runs: &[Full]| median(&runs.iter().map(|f| f.took).collect::<Vec<_>>());
    let diff = med(&r.phoenix).as_secs_f64() - med(&r.hand).as_secs_f64();
    t.row(vec![
        "Phoenix overhead (medians)".into(),
        String::new(),
        format!("{diff:+.2} s ({overhead:+.1} %)"),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "phoenixctl backup verify (what verify = true adds to a full)".into(),
        "1".into(),
        secs(r.verify_took),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "pg_dump -Fc (database bench only)".into(),
        "1".into(),
        secs(r.dump_took),
        String::new(),
        String::new(),
        String::new(),
        format!("{:.1}", mib(r.dump_bytes)),
        "-".into(),
        "reviewed deployment".into(),
    ]);
    let rounds: Vec<String> = r
        .phoenix
        .iter()
        .zip(&r.hand)
        .enumerate()
        .map(|(i, (p, h))| {
            let first = if i % 2 == 0 { "phoenix" } else { "hand" };
            format!(
                "{}: {} / {} ({first} first)",
                i + 1,
                secs(p.took),
                secs(h.took)
            )
        })
        .collect();
    t.note(format!(
        "rounds, phoenix / hand in s: {}; each backup waits first until the WAL written before it is archived",
        rounds.join("; ")
    ));
    t.note(
        "Phoenix: `phoenixctl backup now --type full`, wall time of the command (pgBackRest \
         `--type=full --annotation=... backup`, with `pgbackrest info` before and after and the \
         audit row); by hand: `pgbackrest --config-path=<generated> --stanza=phoenix \
         --log-level-console=info --repo=1 --type=full backup` as user postgres",
    );
    t.note(
        "size: the cluster as pgBackRest counted it; stored: what the backup takes in the \
         repository (compressed), or the dump file",
    );
    t.note(format!("verification: {}", r.verify_said));
    t
}

pub fn restore_table(r: &Results) -> Table {
    let mut t = Table::new(
        "Restore: Phoenix beside pgBackRest by hand and pg_restore",
        vec!["method", "time s", "what it includes", "vs hand"],
    );
    let hand = r.hand_restore.promoted.as_secs_f64();
    let phoenix = r.phoenix_restore_took.as_secs_f64();
    t.row(vec![
        "phoenixctl restore --latest --yes".into(),
        secs(r.phoenix_restore_took),
        "archive the current WAL, stop the API and PostgreSQL, pgbackrest restore beside the \
         data directory, swap, start PostgreSQL, replay, promote, audit row, start the API"
            .into(),
        format!(
            "{:+.2} s ({:+.1} %)",
            phoenix - hand,
            (phoenix - hand) / hand * 100.0
        ),
    ]);
    t.row(vec![
        "pgbackrest restore by hand + PostgreSQL started until promoted".into(),
        secs(r.hand_restore.promoted),
        "the same backup and WAL into a scratch directory, a second PostgreSQL on it (unix \
         socket, no archiving) replaying until it promotes"
            .into(),
        "baseline".into(),
    ]);
    t.row(vec![
        "pgbackrest restore by hand, files only".into(),
        secs(r.hand_restore.files),
        "pgBackRest's part of the line above".into(),
        String::new(),
    ]);
    t.row(vec![
        "pg_restore into a fresh database".into(),
        secs(r.pg_restore_took),
        "the pg_dump -Fc file of bench, one job, indexes rebuilt".into(),
        String::new(),
    ]);
    t.note(format!("Phoenix said: {}", r.phoenix_restore_said));
    t.note(format!(
        "pgbench_accounts after the Phoenix restore: {}",
        if r.restored_rows_ok {
            "every row"
        } else {
            "ROWS MISSING"
        }
    ));
    t
}

pub fn rpo_table(r: &Rpo, verdicts: &mut Vec<Verdict>) -> Table {
    let mut t = Table::new(
        "RPO: the machine dies under a steady write load and its data directory is lost",
        vec![
            "writes/s",
            "archive_timeout s",
            "killed s after an archived segment",
            "acknowledged rows",
            "rows back",
            "RPO s",
            "restored by",
            "target",
            "result",
        ],
    );
    let seconds = r.seconds();
    let v = Verdict::of(seconds.is_some_and(|s| s <= RPO_TARGET.as_secs_f64()));
    verdicts.push(v);
    t.row(vec![
        r.rate.to_string(),
        r.archive_timeout.as_secs().to_string(),
        format!("{:.1}", r.killed_after_archive.as_secs_f64()),
        r.acked.rows.to_string(),
        r.restored.map_or("-".into(), |(n, _)| n.to_string()),
        seconds.map_or("-".into(), |s| format!("{s:.1}")),
        r.restored_by.clone(),
        format!("RPO <= {} s", RPO_TARGET.as_secs()),
        v.as_str().into(),
    ]);
    let latency: Vec<String> = r.archive_latency.iter().map(|d| ms(*d)).collect();
    let worst = r.archive_latency.iter().max().copied().unwrap_or_default();
    t.note(format!(
        "RPO = the newest acknowledged commit's clock_timestamp() minus the newest row back after \
         the restore (both the server's clock); one INSERT per {:.0} ms over one psql connection",
        1000.0 / r.rate as f64
    ));
    t.note(format!(
        "the kill (SIGKILL to PostgreSQL, the supervisor and every process of the stack) came {} s \
         before the next archive_timeout switch was due: near the worst moment; the bound is \
         archive_timeout + the push: {:.1} s (switch-to-archived latency of forced switches: {} ms)",
        super::rpo::KILL_BEFORE_SWITCH.as_secs(),
        (r.archive_timeout + worst).as_secs_f64(),
        latency.join(", ")
    ));
    t.note(format!(
        "after the loss the supervisor started on an empty data directory (initdb); \
         backup-stanza was `{}`",
        r.stanza_after_loss
    ));
    for a in &r.attempts {
        t.note(format!(
            "{} ({:.1} s): {}",
            a.what,
            a.took.as_secs_f64(),
            match &a.outcome {
                Ok(said) => format!("ok: {said}"),
                Err(e) => format!("FAILED: {}", e.replace('\n', " / ")),
            }
        ));
    }
    t
}

fn load_row(name: &str, l: &LoadResult, without_p99: Option<Duration>) -> Vec<String> {
    let s = Summary::of(&l.latencies);
    let cell = |f: fn(&Summary) -> Duration| s.as_ref().map_or("-".into(), |s| ms(f(s)));
    vec![
        name.into(),
        format!("{:.1}", l.elapsed.as_secs_f64()),
        format!("{:.1}", l.achieved_rate()),
        l.latencies.len().to_string(),
        l.errors.to_string(),
        cell(|s| s.p50),
        cell(|s| s.p99),
        cell(|s| s.max),
        match (s, without_p99) {
            (Some(s), Some(w)) if !w.is_zero() => {
                format!("{:.2}x", s.p99.as_secs_f64() / w.as_secs_f64())
            }
            _ => String::new(),
        },
    ]
}

pub fn api_table(a: &ApiLatency) -> Table {
    let mut t = Table::new(
        format!(
            "API latency: GET {} during a full backup, against without one",
            a.path
        ),
        vec![
            "load",
            "s",
            "achieved req/s",
            "ok",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms",
            "p99 / without",
        ],
    );
    let without = Summary::of(&a.without.latencies).map(|s| s.p99);
    t.row(load_row("no backup", &a.without, None));
    t.row(load_row(
        "during phoenixctl backup now --type full",
        &a.during_backup,
        without,
    ));
    t.row(load_row(
        "during phoenixctl backup verify (test restore)",
        &a.during_verify,
        without,
    ));
    t.note(format!(
        "open loop at {} req/s over HTTPS keep-alive connections as the admin (bearer token; \
         the API checks the session in PostgreSQL and reads the users); latency from send to \
         full body; worst send lag {} ms; the run without a backup lasts as long as the backup did, at least 10 s",
        a.rate,
        ms(a.without
            .max_lag
            .max(a.during_backup.max_lag)
            .max(a.during_verify.max_lag))
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: u64) -> Full {
        Full {
            took: Duration::from_secs(s),
            size: 0,
            repo_size: 0,
        }
    }

    #[test]
    fn overhead_is_from_medians() {
        assert_eq!(
            median(&[3, 1, 2].map(Duration::from_secs)),
            Duration::from_secs(2)
        );
        assert_eq!(
            median(&[4, 1, 2, 3].map(Duration::from_secs)),
            Duration::from_millis(2500)
        );
        let p = [full(11), full(30), full(10)];
        let h = [full(10), full(10), full(1)];
        assert!((overhead_percent(&p, &h) - 10.0).abs() < 1e-9);
    }
}
