//! The report: measurements beside their targets and the runit baseline.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::Config;
use crate::load::LoadResult;
use crate::measure::{self, IdleUsage};
use crate::phoenix;
use crate::report::{Table, Verdict};
use crate::scenarios::{FullStack, PhoenixTestPrograms, RunitTestPrograms, SERVICES};
use crate::stats::{Summary, ms};

/// Targets of the project issue.
const RESTART_P99_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_KIB: u64 = 15 * 1024;
const HEALTH_P99_TARGET: Duration = Duration::from_millis(5);
pub const HEALTH_TARGET_RATE: u32 = 500;
/// Share of the requested rate that must be achieved for the /health target.
const MIN_RATE_SHARE: f64 = 0.99;

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn restart_table(
    p: &PhoenixTestPrograms,
    r: &RunitTestPrograms,
    verdicts: &mut Vec<Verdict>,
) -> Result<Table> {
    let mut t = Table::new(
        "(a) Restart latency: kill -9 of the child until its port accepts again",
        vec![
            "supervisor",
            "restart delay",
            "n",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "target",
            "result",
        ],
    );
    let delay = phoenix::RESTART_DELAY;
    let ps = Summary::of(&p.restart).context("no phoenix restart samples")?;
    let rs = Summary::of(&r.restart).context("no runit restart samples")?;
    let verdict = Verdict::of(ps.p99 < RESTART_P99_TARGET + delay);
    verdicts.push(verdict);
    let row = |name: &str, delay: &str, s: &Summary, target: String, result: &str| {
        vec![
            name.to_string(),
            delay.to_string(),
            s.count.to_string(),
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max),
            target,
            result.to_string(),
        ]
    };
    t.row(row(
        "phoenix",
        &format!(
            "{} ms configured (initial = max, no jitter)",
            delay.as_millis()
        ),
        &ps,
        format!("p99 < {} ms", ms(RESTART_P99_TARGET + delay)),
        verdict.as_str(),
    ));
    t.row(row(
        "runit",
        "none configurable; inherent 0 s (1 s if the child ran < 1 s)",
        &rs,
        "-".into(),
        "baseline",
    ));
    let f = |d: Duration| d.as_secs_f64();
    t.row(vec![
        "phoenix / runit".into(),
        String::new(),
        String::new(),
        ratio(f(ps.p50), f(rs.p50)),
        ratio(f(ps.p95), f(rs.p95)),
        ratio(f(ps.p99), f(rs.p99)),
        ratio(f(ps.max), f(rs.max)),
        String::new(),
        String::new(),
    ]);
    t.note(
        "same child under both: `phoenix-testprog serve PORT`; runit starts it from a `run` \
         script (`#!/bin/sh` + `exec`), Phoenix directly",
    );
    t.note(format!(
        "the clock starts just before kill(2); readiness for both is a TCP connect to the port \
         polled every {} ms after the old process is dead; each child runs {} ms before it is killed",
        measure::POLL.as_millis(),
        measure::KILL_SPACING.as_millis()
    ));
    Ok(t)
}

pub fn memory_table(
    p: &PhoenixTestPrograms,
    r: &RunitTestPrograms,
    stack: Option<&FullStack>,
    verdicts: &mut Vec<Verdict>,
) -> Table {
    let mut t = Table::new(
        "(b) Supervisor memory and idle CPU",
        vec![
            "setup",
            "processes measured",
            "RSS MiB",
            "PSS MiB",
            "idle CPU % of one core",
            "CPU ticks",
            "target",
            "result",
        ],
    );
    let mut row = |setup: &str, procs: String, u: &IdleUsage, target: bool| {
        let (target, result) = if target {
            let v = Verdict::of(u.rss_kib < RSS_TARGET_KIB);
            verdicts.push(v);
            (format!("RSS < {} MiB", RSS_TARGET_KIB / 1024), v.as_str())
        } else {
            ("-".into(), "baseline")
        };
        vec![
            setup.into(),
            procs,
            mib(u.rss_kib),
            mib(u.pss_kib),
            if u.cpu_ticks == 0 {
                format!("< {:.2}", u.one_tick_percent())
            } else {
                format!("{:.2}", u.cpu_percent())
            },
            format!("{} in {:.1} s", u.cpu_ticks, u.window.as_secs_f64()),
            target,
            result.into(),
        ]
    };
    t.row(row(
        &format!("phoenix, {SERVICES} test programs"),
        "phoenix-supervisor".into(),
        &p.idle,
        true,
    ));
    t.row(row(
        &format!("runit, {SERVICES} test programs"),
        format!("runsvdir + {} runsv", r.processes - 1),
        &r.idle,
        false,
    ));
    t.row(vec![
        "phoenix / runit".into(),
        String::new(),
        ratio(p.idle.rss_kib as f64, r.idle.rss_kib as f64),
        ratio(p.idle.pss_kib as f64, r.idle.pss_kib as f64),
        ratio(p.idle.cpu_percent(), r.idle.cpu_percent()),
        String::new(),
        String::new(),
        String::new(),
    ]);
    if let Some(s) = stack {
        t.row(row(
            "phoenix, full stack",
            "phoenix-supervisor".into(),
            &s.idle,
            true,
        ));
    }
    t.note(format!(
        "RSS: largest of 1 s samples of VmRSS (summed over runit's processes) in the idle window; \
         PSS (smaps_rollup, shared pages divided among sharers) at its end — the fairer sum for \
         runit's {} small processes, whose RSS counts libc once per process",
        r.processes
    ));
    t.note(format!(
        "CPU: utime + stime from /proc/PID/stat over the window ({} ticks/s, so one tick is {:.2} % \
         over {} s); children (the test programs, the servers) are not included",
        p.idle.ticks_per_second,
        p.idle.one_tick_percent(),
        p.idle.window.as_secs()
    ));
    t.note(
        "runit cannot supervise the built-ins as Phoenix does (users, initdb, readiness, \
         dependencies), so the like-for-like rows supervise the same 6 test programs; the \
         full-stack row is Phoenix alone",
    );
    if stack.is_none() {
        t.note("full-stack row skipped (see stderr for why)");
    }
    t
}

pub fn health_table(
    config: &Config,
    p: &PhoenixTestPrograms,
    stack: Option<&FullStack>,
    verdicts: &mut Vec<Verdict>,
) -> Table {
    let mut t = Table::new(
        "(c) GET /health under open-loop load",
        vec![
            "setup",
            "rate req/s",
            "achieved req/s",
            "ok",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms",
            "target",
            "result",
        ],
    );
    let mut row = |setup: &str, l: &LoadResult| {
        let s = Summary::of(&l.latencies);
        let achieved = l.achieved_rate();
        let met = s.is_some_and(|s| s.p99 < HEALTH_P99_TARGET)
            && l.errors == 0
            && achieved >= config.rate as f64 * MIN_RATE_SHARE;
        let v = Verdict::of(met);
        verdicts.push(v);
        let cell = |f: fn(&Summary) -> Duration| s.as_ref().map_or("-".into(), |s| ms(f(s)));
        t.row(vec![
            setup.into(),
            config.rate.to_string(),
            format!("{achieved:.1}"),
            l.latencies.len().to_string(),
            l.errors.to_string(),
            cell(|s| s.p50),
            cell(|s| s.p99),
            cell(|s| s.max),
            format!("p99 < {} ms, no errors", ms(HEALTH_P99_TARGET)),
            v.as_str().into(),
        ]);
    };
    row(&format!("phoenix, {SERVICES} test programs"), &p.health);
    if let Some(s) = stack {
        row("phoenix, full stack", &s.health);
    }
    t.row(vec![
        "runit".into(),
        "n/a".into(),
        "n/a".into(),
        String::new(),
        String::new(),
        "n/a".into(),
        "n/a".into(),
        "n/a".into(),
        "-".into(),
        "no health endpoint".into(),
    ]);
    let lag = stack.map_or(p.health.max_lag, |s| s.health.max_lag.max(p.health.max_lag));
    t.note(format!(
        "open loop: one request every {:.2} ms on its own task, keep-alive connections, at most \
         64 in flight; latency from send to full body; worst send lag behind schedule {} ms",
        1000.0 / config.rate as f64,
        ms(lag)
    ));
    if config.rate != HEALTH_TARGET_RATE {
        t.note(format!(
            "the target is stated at {HEALTH_TARGET_RATE} req/s; this run used {}",
            config.rate
        ));
    }
    t
}

pub fn status_cli_table(p: &PhoenixTestPrograms, r: &RunitTestPrograms) -> Result<Table> {
    let mut t = Table::new(
        "Extra: status query from the command line, process spawn included",
        vec!["command", "n", "p50 ms", "p99 ms", "max ms"],
    );
    let ps = Summary::of(&p.status_cli).context("no phoenixctl samples")?;
    let rs = Summary::of(&r.status_cli).context("no sv samples")?;
    for (name, s) in [
        (
            format!("phoenixctl --json status ({SERVICES} services)"),
            &ps,
        ),
        (format!("sv status ({SERVICES} services)"), &rs),
    ] {
        t.row(vec![
            name,
            s.count.to_string(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
        ]);
    }
    let f = |d: Duration| d.as_secs_f64();
    t.row(vec![
        "phoenixctl / sv".into(),
        String::new(),
        ratio(f(ps.p50), f(rs.p50)),
        ratio(f(ps.p99), f(rs.p99)),
        ratio(f(ps.max), f(rs.max)),
    ]);
    t.note(
        "runit has no health endpoint; this is the nearest like-for-like query, run sequentially",
    );
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_zero_baseline_is_not_a_number() {
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(ratio(3.0, 2.0), "1.50x");
    }
}
