//! `phoenix-bench backup`: backups of the appliance's PostgreSQL on a
//! pgbench database of about 1 GiB (`--scale 70`), in one run on one stack:
//!
//! - a full backup through Phoenix (`phoenixctl backup now --type full`)
//!   beside pgBackRest run by hand with the same configuration, in
//!   alternating rounds (the orchestration's overhead), and beside
//!   `pg_dump -Fc`; the test restore a default full adds
//!   (`phoenixctl backup verify`);
//! - a restore through Phoenix (`phoenixctl restore --latest --yes`)
//!   beside pgBackRest by hand into a scratch directory, and `pg_restore`;
//! - API latency during a full backup and its verification, against the
//!   same load without one;
//! - the recovery point under a steady write load when the machine dies
//!   and its data directory is lost (`rpo`).
//!
//! The stack runs with `[backup] verify = false` (so a Phoenix full is
//! like for like with pgBackRest's) and without schedules that could fire
//! during the run. Tools run by hand (`pg`) run as user `postgres`.

pub mod figures;
mod pg;
mod rpo;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use phoenix_tests::StackPorts;
use serde_json::Value;

use crate::load::{self, LoadResult};
use crate::phoenix::Phoenix;
use crate::scenarios::{self, Binaries, progress};
use crate::{Machine, interrupt};
use pg::{Group, Pg, pg_bin, timed};
pub use rpo::Rpo;

#[derive(clap::Args)]
pub struct Args {
    /// pgbench scale factor of the database backed up (70: about 1 GiB)
    #[arg(long, default_value_t = 70)]
    scale: u32,
    /// Rounds of one Phoenix and one hand-run full backup, alternating which goes first
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Authenticated API requests per second, during a backup and without one
    #[arg(long, default_value_t = 100)]
    api_rate: u32,
    /// INSERTs per second of the writer whose rows measure the RPO
    #[arg(long, default_value_t = 10)]
    write_rate: u32,
    /// Also print the tables as Markdown (for docs/benchmarks.md)
    #[arg(long)]
    markdown: bool,
}

pub struct Settings {
    pub scale: u32,
    pub rounds: usize,
    pub api_rate: u32,
    pub write_rate: u32,
    pub markdown: bool,
}

impl Settings {
    pub fn from_args(a: Args) -> Result<Settings> {
        ensure!(a.scale >= 1, "--scale must be at least 1");
        ensure!(
            (1..=20).contains(&a.rounds),
            "--rounds must be between 1 and 20"
        );
        ensure!(
            (1..=10_000).contains(&a.api_rate),
            "--api-rate must be between 1 and 10000"
        );
        ensure!(
            (1..=1000).contains(&a.write_rate),
            "--write-rate must be between 1 and 1000"
        );
        Ok(Settings {
            scale: a.scale,
            rounds: a.rounds,
            api_rate: a.api_rate,
            write_rate: a.write_rate,
            markdown: a.markdown,
        })
    }

    pub fn flags(&self) -> String {
        format!(
            "backup --scale {} --rounds {} --api-rate {} --write-rate {}",
            self.scale, self.rounds, self.api_rate, self.write_rate
        )
    }
}

/// No test restore after a full (so Phoenix's full is pgBackRest's full
/// plus orchestration), and no scheduled backup during the run: the full
/// schedule is required, so it is set to midnight of January 1st.
const BACKUP_SECTION: &str = "[backup]\nverify = false\nfull = \"0 0 1 1 *\"\ndiff = \"\"\n";
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Archiving the WAL of a pgbench load can take a while.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(900);
/// The longest a backup with API load beside it is let run.
const LOAD_MAX: Duration = Duration::from_secs(3600);
const API_PATH: &str = "/api/v1/users";

/// One full backup: how long it took, and what it holds.
pub struct Full {
    pub took: Duration,
    pub size: u64,
    pub repo_size: u64,
}

/// API load during a command, and the same load without it.
pub struct ApiLatency {
    pub path: &'static str,
    pub rate: u32,
    pub without: LoadResult,
    pub during_backup: LoadResult,
    pub during_verify: LoadResult,
}

/// A restore by hand into a scratch directory: pgBackRest's part, and
/// until the cluster on it has replayed WAL and promoted.
pub struct HandRestore {
    pub files: Duration,
    pub promoted: Duration,
}

pub struct Results {
    pub db_bytes: u64,
    pub cluster_bytes: u64,
    pub load_took: Duration,
    pub conf: Vec<String>,
    pub phoenix: Vec<Full>,
    pub hand: Vec<Full>,
    pub verify_took: Duration,
    pub verify_said: String,
    pub dump_took: Duration,
    pub dump_bytes: u64,
    pub pg_restore_took: Duration,
    pub hand_restore: HandRestore,
    pub phoenix_restore_took: Duration,
    pub phoenix_restore_said: String,
    pub restored_rows_ok: bool,
    pub api: ApiLatency,
    pub rpo: Rpo,
}

/// Why this mode cannot run here, if it cannot.
fn missing(bins: &Binaries) -> Option<String> {
    if let Some(why) = scenarios::full_stack_missing(bins) {
        return Some(why);
    }
    ["pgbench", "pg_dump", "pg_restore", "psql", "postgres"]
        .iter()
        .map(|n| pg_bin(n))
        .chain([Path::new(pg::PGBACKREST).to_path_buf()])
        .find(|p| !p.is_file())
        .map(|p| format!("{} is not installed", p.display()))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let settings = Settings::from_args(args)?;
    let bins = Binaries::locate()?;
    if let Some(why) = missing(&bins) {
        bail!("the backup benchmark needs the full stack and PostgreSQL 15's tools: {why}");
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the backup benchmark runs PostgreSQL's tools as user postgres: run it as root"
    );
    scenarios::ensure_phoenix_user()?;
    interrupt::install()?;
    let results = bench(&settings)?;

    let machine = Machine::probe();
    let header = [
        format!(
            "date: {}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        ),
        format!(
            "machine: {} CPUs, {}, Linux {}, {} GiB memory",
            machine.cpus,
            machine.model,
            machine.kernel,
            memory_gib()
        ),
        format!("tools: {}", tool_versions()),
        format!("flags: {}", settings.flags()),
        format!(
            "database: pgbench -i -s {} ({:.0} MiB; the cluster {:.0} MiB), loaded in {:.1} s",
            settings.scale,
            figures::mib(results.db_bytes),
            figures::mib(results.cluster_bytes),
            results.load_took.as_secs_f64()
        ),
        format!("pgBackRest: {}", results.conf.join(", ")),
    ];
    let mut verdicts = Vec::new();
    let tables = [
        figures::backup_table(&results, &mut verdicts),
        figures::restore_table(&results),
        figures::rpo_table(&results.rpo, &mut verdicts),
        figures::api_table(&results.api),
    ];
    Ok(crate::report::print(
        "Phoenix backup benchmark",
        &header,
        &tables,
        &verdicts,
        settings.markdown,
    ))
}

fn memory_gib() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0}", kib as f64 / 1024.0 / 1024.0)
        })
}

fn tool_versions() -> String {
    let first_line = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{}, {}",
        first_line(pg::PGBACKREST, "version"),
        first_line(&pg_bin("postgres").display().to_string(), "--version")
    )
}

/// `phoenixctl --json backup list`: the backups, oldest first.
fn backups(sup: &Phoenix) -> Result<Vec<Value>> {
    let out = sup.ctl(&["--json", "backup", "list"]);
    ensure!(
        out.status.success(),
        "phoenixctl backup list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).context("backup list JSON")?;
    Ok(doc["backups"].as_array().cloned().unwrap_or_default())
}

/// Runs a backup command and finds the backup it added.
fn full_backup(sup: &Phoenix, mut cmd: std::process::Command, what: &str) -> Result<Full> {
    let before: Vec<String> = backups(sup)?
        .iter()
        .filter_map(|b| b["label"].as_str().map(str::to_string))
        .collect();
    let (took, _) = timed(&mut cmd, what)?;
    let after = backups(sup)?;
    let new = after
        .iter()
        .rev()
        .find(|b| {
            b["label"]
                .as_str()
                .is_some_and(|l| !before.iter().any(|k| k == l))
        })
        .with_context(|| format!("{what} succeeded but no new backup is listed"))?;
    ensure!(
        new["type"] == "full",
        "{what} made a {} backup",
        new["type"]
    );
    Ok(Full {
        took,
        size: new["size_bytes"].as_u64().unwrap_or(0),
        repo_size: new["repo_size_bytes"].as_u64().unwrap_or(0),
    })
}

/// The settings of the generated pgBackRest configuration that decide a
/// backup's speed.
fn conf_summary(pg: &Pg) -> Result<Vec<String>> {
    let path = pg.config_path.join("pgbackrest.conf");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| {
            [
                "compress-type",
                "compress-level",
                "process-max",
                "start-fast",
                "archive-async",
            ]
            .iter()
            .any(|k| l.starts_with(&format!("{k}=")))
        })
        .map(str::to_string)
        .collect())
}

fn admin_token(sup: &Phoenix, ports: &StackPorts) -> Result<String> {
    let password = std::fs::read_to_string(sup.path("state/secrets/initial-admin-password"))
        .context("the initial admin password")?;
    let reply: Value = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()?
        .post(ports.api_url("/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": "admin", "password": password.trim() }))
        .send()
        .and_then(|r| r.error_for_status())
        .context("log in as admin")?
        .json()
        .context("login reply")?;
    Ok(reply["access_token"]
        .as_str()
        .context("no access_token in the login reply")?
        .to_string())
}

/// The API load while `cmd` runs (until it ends).
fn load_during(
    target: &load::Target,
    rate: u32,
    mut cmd: std::process::Command,
    what: &'static str,
) -> Result<(LoadResult, Duration)> {
    let done = Arc::new(AtomicBool::new(false));
    let job = {
        let done = done.clone();
        std::thread::spawn(move || {
            let r = timed(&mut cmd, what);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let result = load::run_while(target, rate, LOAD_MAX, || !done.load(Ordering::SeqCst));
    let (took, _) = job
        .join()
        .map_err(|_| anyhow::anyhow!("{what} panicked"))??;
    Ok((result?, took))
}

/// A directory only `postgres` may use.
fn postgres_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    let user = nix::unistd::User::from_name("postgres")?.context("no user postgres")?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

/// pgBackRest restores backup `set` (the newest when `None`) and all WAL
/// after it into `scratch`, as Phoenix's `--latest` does; a second
/// PostgreSQL starts on it (unix socket in `scratch` only, no archiving)
/// and replays until it promotes; `query` runs against it; it stops and
/// the directory is removed.
fn hand_restore<T>(
    pg: &Pg,
    scratch: &Path,
    set: Option<&str>,
    query: impl FnOnce(&Path) -> Result<T>,
) -> Result<(HandRestore, T)> {
    let data = scratch.join("data");
    postgres_dir(scratch)?;
    postgres_dir(&data)?;
    let set_arg = set.map(|s| format!("--set={s}"));
    let pg1 = format!("--pg1-path={}", data.display());
    let mut args = vec![
        "--log-level-console=info",
        "--repo=1",
        pg1.as_str(),
        "--type=default",
        "--archive-mode=off",
    ];
    if let Some(s) = &set_arg {
        args.push(s.as_str());
    }
    args.push("restore");
    let start = Instant::now();
    let (files, _) = timed(&mut pg.pgbackrest(&args), "pgbackrest restore")?;
    let mut server = pg.command(pg_bin("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c"])
        .arg(format!("port={}", pg.port))
        .arg("-c")
        .arg(format!("unix_socket_directories={}", scratch.display()))
        .args(["-c", "archive_mode=off"]);
    let server: Group = pg::spawn_group(&mut server, "the scratch PostgreSQL")?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        interrupt::check()?;
        if pg
            .psql_at(scratch, "postgres", "SELECT pg_is_in_recovery()")
            .is_ok_and(|r| r == "f")
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the PostgreSQL restored into {} did not promote within 30 min",
            scratch.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let promoted = start.elapsed();
    let answer = query(scratch);
    // Fast shutdown; the group is killed if it does not stop.
    server.signal(nix::sys::signal::Signal::SIGINT);
    let pid = server.pid();
    let stop_deadline = Instant::now() + Duration::from_secs(120);
    while phoenix_tests::process_alive(pid) && Instant::now() < stop_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    std::fs::remove_dir_all(scratch).with_context(|| format!("remove {}", scratch.display()))?;
    Ok((HandRestore { files, promoted }, answer?))
}

/// Removes what a Phoenix restore keeps aside (`data.before-restore-*`):
/// the disk is needed for the next steps.
fn remove_kept_data(sup: &Phoenix) -> Result<()> {
    let dir = sup.path("state/postgres");
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("data.before-restore-")
        {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

fn bench(settings: &Settings) -> Result<Results> {
    let ports = StackPorts::free();
    progress("starting the full stack with [backup] verify = false");
    let mut sup = Phoenix::start(&ports.config(BACKUP_SECTION));
    sup.wait_ready(READY_TIMEOUT)?;
    sup.wait_state("backup-stanza", "exited", Duration::from_secs(120))?;
    let pg = Pg::new(&sup.path(""), ports.pg)?;
    let conf = conf_summary(&pg)?;
    let work = sup.path("bench-work");
    postgres_dir(&work)?;

    progress(&format!("loading pgbench -i -s {}", settings.scale));
    pg.psql("postgres", "CREATE DATABASE bench")?;
    let (load_took, _) = timed(
        pg.command(pg_bin("pgbench")).args([
            "-i",
            "-q",
            "-s",
            &settings.scale.to_string(),
            "bench",
        ]),
        "pgbench -i",
    )?;
    let bytes = |sql: &str| -> Result<u64> { Ok(pg.psql("postgres", sql)?.parse()?) };
    let db_bytes = bytes("SELECT pg_database_size('bench')")?;
    let cluster_bytes = bytes("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?;

    // pg_dump and pg_restore first: the WAL of the restored copy is
    // archived before any backup, and no restore below replays it.
    progress("pg_dump -Fc bench");
    let dump = work.join("bench.dump");
    let (dump_took, _) = timed(
        pg.command(pg_bin("pg_dump"))
            .args(["-Fc", "-f"])
            .arg(&dump)
            .arg("bench"),
        "pg_dump",
    )?;
    let dump_bytes = std::fs::metadata(&dump)?.len();
    progress("pg_restore into a fresh database");
    pg.psql("postgres", "CREATE DATABASE bench_restored")?;
    let (pg_restore_took, _) = timed(
        pg.command(pg_bin("pg_restore"))
            .args(["-d", "bench_restored"])
            .arg(&dump),
        "pg_restore",
    )?;
    pg.psql("postgres", "DROP DATABASE bench_restored")?;
    std::fs::remove_file(&dump)?;
    progress("waiting until the WAL written so far is archived");
    pg.wait_archived(ARCHIVE_TIMEOUT)?;

    let mut phoenix = Vec::new();
    let mut hand = Vec::new();
    for round in 0..settings.rounds {
        let phoenix_first = round % 2 == 0;
        for phoenix_turn in [phoenix_first, !phoenix_first] {
            interrupt::check()?;
            pg.wait_archived(ARCHIVE_TIMEOUT)?;
            if phoenix_turn {
                progress(&format!(
                    "round {}: phoenixctl backup now --type full",
                    round + 1
                ));
                phoenix.push(full_backup(
                    &sup,
                    sup.ctl_command(&["backup", "now", "--type", "full"]),
                    "phoenixctl backup now",
                )?);
            } else {
                progress(&format!("round {}: pgbackrest backup by hand", round + 1));
                hand.push(full_backup(
                    &sup,
                    pg.pgbackrest(&[
                        "--log-level-console=info",
                        "--repo=1",
                        "--type=full",
                        "backup",
                    ]),
                    "pgbackrest backup",
                )?);
            }
        }
    }
    progress("phoenixctl backup verify (the test restore of the newest full)");
    let (verify_took, verify_out) = timed(
        &mut sup.ctl_command(&["backup", "verify"]),
        "phoenixctl backup verify",
    )?;

    progress(&format!(
        "API: GET {API_PATH} at {}/s during a full backup, its verification, and without",
        settings.api_rate
    ));
    let target = load::Target {
        url: ports.api_url(API_PATH),
        bearer: Some(admin_token(&sup, &ports)?),
    };
    pg.wait_archived(ARCHIVE_TIMEOUT)?;
    let (during_backup, backup_took) = load_during(
        &target,
        settings.api_rate,
        sup.ctl_command(&["backup", "now", "--type", "full"]),
        "phoenixctl backup now",
    )?;
    let (during_verify, _) = load_during(
        &target,
        settings.api_rate,
        sup.ctl_command(&["backup", "verify"]),
        "phoenixctl backup verify",
    )?;
    let without = load::run_while(
        &target,
        settings.api_rate,
        backup_took.max(Duration::from_secs(10)),
        || true,
    )?;
    let api = ApiLatency {
        path: API_PATH,
        rate: settings.api_rate,
        without,
        during_backup,
        during_verify,
    };

    progress("pgbackrest restore by hand into a scratch directory, then PostgreSQL on it");
    pg.wait_archived(ARCHIVE_TIMEOUT)?;
    let expected_rows = u64::from(settings.scale) * 100_000;
    let (hand_restore, rows) = hand_restore(&pg, &work.join("restore"), None, |socket| {
        Ok(pg
            .psql_at(socket, "bench", "SELECT count(*) FROM pgbench_accounts")?
            .parse::<u64>()?)
    })?;
    ensure!(
        rows == expected_rows,
        "the hand restore holds {rows} pgbench_accounts rows, not {expected_rows}"
    );

    progress("phoenixctl restore --latest --yes");
    let (phoenix_restore_took, said) = timed(
        &mut sup.ctl_command(&["restore", "--latest", "--yes"]),
        "phoenixctl restore --latest --yes",
    )?;
    sup.wait_ready(READY_TIMEOUT)?;
    let restored_rows_ok = pg
        .psql("bench", "SELECT count(*) FROM pgbench_accounts")?
        .parse::<u64>()?
        == expected_rows;
    remove_kept_data(&sup)?;
    progress("a full backup after the restore, as the operations guide says");
    timed(
        &mut sup.ctl_command(&["backup", "now", "--type", "full"]),
        "phoenixctl backup now",
    )?;

    let rpo = rpo::measure(&mut sup, &pg, settings.write_rate, &work)?;

    Ok(Results {
        db_bytes,
        cluster_bytes,
        load_took,
        conf,
        phoenix,
        hand,
        verify_took,
        verify_said: verify_out.trim().to_string(),
        dump_took,
        dump_bytes,
        pg_restore_took,
        hand_restore,
        phoenix_restore_took,
        phoenix_restore_said: said.lines().last().unwrap_or_default().to_string(),
        restored_rows_ok,
        api,
        rpo,
    })
}
