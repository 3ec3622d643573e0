//! The agents' metric path, `POST /api/v1/agent/write`, end to end against
//! the real Prometheus: remote-write batches with old timestamps land at
//! those timestamps with the API's labels, a batch sent twice is stored
//! once, malformed batches get their problem documents, experiment
//! batches follow the running window, a batch Prometheus refuses is
//! refused alone when it shared a request with others, and a receiver far
//! behind has batches shed with `Retry-After` rather than queued without end.
//!
//! The requests are built here, byte by byte, from the remote-write 1.0
//! protobuf definition (`prompb`) and compressed with the snappy crate, as a
//! client of the protocol would: the tests link none of Phoenix's crates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phoenix_tests::{Agent, Reply, Stack, curl, get_text, wait_until};
use serde_json::{Value, json};

const CPU: &str = "phoenix_process_cpu_percent";
const MEMORY: &str = "phoenix_process_memory_bytes";

/// A fast experiment driver.
const FAST_DRIVER: &str = "[services.api]\nenv = { PHOENIX_EXPERIMENT_TICK = \"300ms\" }\n";

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn field(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(tag << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `prometheus.TimeSeries`: labels (field 1: name 1, value 2) and samples
/// (field 2: value 1 as a double, timestamp 2 as an int64 in ms).
fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in labels {
        let mut label = Vec::new();
        field(1, name.as_bytes(), &mut label);
        field(2, value.as_bytes(), &mut label);
        field(1, &label, &mut out);
    }
    for (value, timestamp) in samples {
        let mut sample = vec![0x09];
        sample.extend_from_slice(&value.to_le_bytes());
        sample.push(0x10);
        varint(*timestamp as u64, &mut sample);
        field(2, &sample, &mut out);
    }
    out
}

/// `prometheus.WriteRequest` of `series`, uncompressed.
fn write_request(series: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in series {
        field(1, s, &mut out);
    }
    out
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("snappy compresses")
}

/// A ready body: `series` as a snappy-compressed WriteRequest.
fn batch(series: &[Vec<u8>]) -> Vec<u8> {
    snappy(&write_request(series))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Whole seconds `ago` before now, in ms: timestamps Prometheus shows
/// back exactly.
fn seconds_ago(ago: Duration) -> i64 {
    (now_ms() - ago.as_millis() as i64) / 1000 * 1000
}

/// A write with the remote-write headers, or the ones given.
fn write_with(
    s: &Stack,
    agent: &Agent,
    query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = s
        .agent(
            reqwest::Method::POST,
            &format!("/api/v1/agent/write{query}"),
        )
        .bearer_auth(&agent.credential);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    s.reply(req.body(body))
}

const REMOTE_WRITE: [(&str, &str); 3] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

fn write(s: &Stack, agent: &Agent, query: &str, body: Vec<u8>) -> Reply {
    write_with(s, agent, query, &REMOTE_WRITE, body)
}

/// A shed batch: 503 `remote_write_busy`, `Retry-After: 5`, and a detail
/// that says `why`.
fn shed_saying(r: &Reply, why: &str) {
    let problem = refused(r, 503, "remote_write_busy");
    assert_eq!(r.headers["retry-after"], "5", "{r:?}");
    assert!(
        problem["detail"].as_str().unwrap().contains(why),
        "{problem}"
    );
}

/// A refusal: the status, a problem document, the code; the problem.
fn refused(r: &Reply, status: u16, code: &str) -> Value {
    assert_eq!((r.status, r.code()), (status, code), "{r:?}");
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{r:?}"
    );
    r.body.clone()
}

/// An instant query (at `time` seconds, or now) in Prometheus: the result.
fn query(s: &Stack, promql: &str, time: Option<f64>) -> Vec<Value> {
    let mut params = vec![("query", promql.to_string())];
    if let Some(t) = time {
        params.push(("time", format!("{t:.3}")));
    }
    let r: Value = reqwest::blocking::Client::new()
        .post(s.ports.prometheus_url("/api/v1/query"))
        .form(&params)
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
    assert_eq!(r["status"], "success", "{promql}: {r}");
    r["data"]["result"].as_array().unwrap().clone()
}

/// The samples of each series `selector` picks within the last `range`:
/// labels and (timestamp in ms, value) pairs, by series.
fn stored(s: &Stack, selector: &str, range: &str) -> Vec<(Value, Vec<(i64, f64)>)> {
    let mut out: Vec<(Value, Vec<(i64, f64)>)> = query(s, &format!("{selector}[{range}]"), None)
        .into_iter()
        .map(|series| {
            let values = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        (v[0].as_f64().unwrap() * 1000.0).round() as i64,
                        v[1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            (series["metric"].clone(), values)
        })
        .collect();
    out.sort_by_key(|(metric, _)| metric.to_string());
    out
}

/// `count_over_time` of each series `selector` picks, by `process`.
fn counts(s: &Stack, selector: &str, range: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> =
        query(s, &format!("count_over_time({selector}[{range}])"), None)
            .into_iter()
            .map(|r| {
                (
                    r["metric"]["process"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn old_samples_land_at_their_timestamps_with_the_agents_labels_and_once_however_often_sent() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agent = s.enroll_one(&admin, "web-1");
    let (t1, t2) = (
        seconds_ago(Duration::from_secs(600)),
        seconds_ago(Duration::from_secs(300)),
    );
    // Labels in any order, an empty one that counts as none.
    let body = batch(&[
        series(
            &[
                ("pid", "812"),
                ("__name__", CPU),
                ("process", "nginx"),
                ("zone", ""),
            ],
            &[(3.5, t1), (4.25, t2)],
        ),
        series(
            &[("__name__", MEMORY), ("process", "nginx"), ("pid", "812")],
            &[(52428800.0, t1), (53477376.0, t2)],
        ),
    ]);
    let r = write(&s, &agent, "", body.clone());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!({ "series": 2, "samples": 4, "experiment": "none", "variant": "none" })
    );

    let selector = format!("{{agent=\"{}\"}}", agent.id);
    let got = stored(&s, &selector, "15m");
    let labels = |name: &str| {
        json!({
            "__name__": name, "agent": agent.id, "experiment": "none", "variant": "none",
            "job": "phoenix-agent", "pid": "812", "process": "nginx",
        })
    };
    assert_eq!(
        got,
        vec![
            (labels(CPU), vec![(t1, 3.5), (t2, 4.25)]),
            (labels(MEMORY), vec![(t1, 52428800.0), (t2, 53477376.0)]),
        ],
        "exact timestamps and values, with the API's labels"
    );

    // The same batch again (a lost answer): taken, stored once.
    let r = write(&s, &agent, "", body);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        counts(&s, &format!("{CPU}{selector}"), "15m"),
        [("nginx".to_string(), 2.0)]
    );

    // A sample older than the newest of its series arrives late (the
    // agent's queue after an outage): stored out of order, where it belongs.
    let between = (t1 + t2) / 2;
    let r = write(
        &s,
        &agent,
        "",
        batch(&[series(
            &[("__name__", CPU), ("process", "nginx"), ("pid", "812")],
            &[(9.0, between)],
        )]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let got = stored(&s, &format!("{CPU}{selector}"), "15m");
    assert_eq!(got[0].1, [(t1, 3.5), (between, 9.0), (t2, 4.25)]);

    // The agents listing counts the series of its last batch.
    let r = s.get(Some(&admin), &format!("/api/v1/agents/{}", agent.id));
    assert_eq!(r.body["pushed_series"], 1, "{r:?}");

    // Another value at a timestamp Prometheus holds: it refuses, the agent
    // drops the batch.
    let conflicting = batch(&[series(
        &[("__name__", CPU), ("process", "nginx"), ("pid", "812")],
        &[(5.0, t2)],
    )]);
    let r = write(&s, &agent, "", conflicting);
    let problem = refused(&r, 400, "samples_rejected");
    assert!(
        problem["detail"].as_str().unwrap().contains("duplicate"),
        "Prometheus's reason is passed on: {problem}"
    );

    // Prometheus away: 502, the agent keeps the batch; once it is back the
    // same batch is taken.
    let later = batch(&[series(
        &[("__name__", CPU), ("process", "nginx"), ("pid", "812")],
        &[(6.0, seconds_ago(Duration::from_secs(60)))],
    )]);
    let out = s.sup.ctl(&["stop", "prometheus"]);
    assert!(out.status.success(), "{out:?}");
    s.sup
        .wait_state("prometheus", "stopped", Duration::from_secs(60));
    let r = write(&s, &agent, "", later.clone());
    refused(&r, 502, "remote_write_unavailable");
    let out = s.sup.ctl(&["start", "prometheus"]);
    assert!(out.status.success(), "{out:?}");
    s.sup
        .wait_state("prometheus", "ready", Duration::from_secs(60));
    let r = write(&s, &agent, "", later);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        counts(&s, &format!("{CPU}{selector}"), "15m"),
        [("nginx".to_string(), 4.0)],
        "what was stored before the restart is still there"
    );
}

/// A counter's value in an exposition; 0 before it was first counted.
fn counter(exposition: &str, series: &str) -> f64 {
    phoenix_tests::agents::metric_in(exposition, series).unwrap_or(0.0)
}

/// Prometheus stops answering (SIGSTOP): four batches hold the forwarder's
/// four requests, four of 50 000 samples fill its backlog, and the next
/// batch is answered 503 `remote_write_busy` with `Retry-After` at once,
/// while the others still wait. Prometheus comes back: the waiting batches
/// are answered, the shed one is taken when sent again, and every sample is
/// stored.
#[test]
fn a_receiver_far_behind_sheds_batches_with_retry_after_and_loses_none() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let s = Stack::start("");
    let admin = s.admin_token();
    let agent = s.enroll_one(&admin, "host-busy");
    // An agent sends one batch at a time and holds at most a quarter of
    // the backlog: four fill it.
    let fillers = s.enroll(&admin, &["fill-0", "fill-1", "fill-2", "fill-3"]);
    let at = seconds_ago(Duration::from_secs(120));
    // 10 series of 5 000 samples each (10 ms apart): 50 000 samples, cheap
    // to decode, so that the backlog fills well within the forwarder's
    // 10 s timeout.
    let long = |tag: &str| {
        batch(
            &(0..10)
                .map(|i| {
                    let samples: Vec<(f64, i64)> =
                        (0..5_000).map(|k| (k as f64, at + k * 10)).collect();
                    series(
                        &[("__name__", CPU), ("process", tag), ("pid", &i.to_string())],
                        &samples,
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    let one = |tag: &str| batch(&[series(&[("__name__", CPU), ("process", tag)], &[(1.0, at)])]);
    let gauge = |name: &str| counter(&get_text(&s.ports.api_url("/metrics")), name);
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| long(&format!("long-{i}"))).collect();

    /// Prometheus stopped until dropped, even when an assertion fails.
    struct Stopped(Pid);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let prometheus = Pid::from_raw(s.sup.pid_of("prometheus"));
    kill(prometheus, Signal::SIGSTOP).unwrap();
    let stopped = Stopped(prometheus);
    let (waited, greedy, shed) = std::thread::scope(|scope| {
        let (s, agent) = (&s, &agent);
        // One at a time, so that each takes a request of its own.
        let opened = gauge("phoenix_api_remote_write_forward_wait_seconds_count");
        let mut waiting = Vec::new();
        for i in 0..4 {
            waiting.push(scope.spawn(move || write(s, agent, "", one(&format!("slot-{i}")))));
            wait_until(
                "the batch's request is open",
                Duration::from_secs(5),
                || {
                    (gauge("phoenix_api_remote_write_forward_wait_seconds_count")
                        >= opened + 1.0 + i as f64)
                        .then_some(())
                },
            );
        }
        let mut bodies = bodies.into_iter().zip(&fillers);
        let (body, first) = bodies.next().unwrap();
        waiting.push(scope.spawn(move || write(s, first, "", body)));
        wait_until("the first long batch waits", Duration::from_secs(5), || {
            (gauge("phoenix_api_remote_write_waiting_samples") >= 50_000.0).then_some(())
        });
        // Its agent, sending a second batch at once, is past its share.
        let greedy = write(s, first, "", one("greedy"));
        waiting
            .extend(bodies.map(|(body, filler)| scope.spawn(move || write(s, filler, "", body))));
        wait_until("the backlog is full", Duration::from_secs(5), || {
            (gauge("phoenix_api_remote_write_waiting_samples") >= 200_000.0).then_some(())
        });
        let shed = write(s, agent, "", one("shed"));
        let still_waiting = waiting.iter().filter(|h| !h.is_finished()).count();
        drop(stopped);
        assert_eq!(
            still_waiting, 8,
            "the shed batch did not wait behind the others"
        );
        let waited: Vec<Reply> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
        (waited, greedy, shed)
    });
    shed_saying(
        &greedy,
        "this agent's batches waiting to be sent hold 50000 samples in 1 ",
    );
    shed_saying(&shed, "keep the batch");
    assert_eq!(
        gauge("phoenix_api_remote_write_batches_shed_total"),
        2.0,
        "counted"
    );
    // A batch that waited is stored, or (its request timed out while
    // Prometheus was stopped) answered 502 for the agent to send again.
    for (i, r) in waited.iter().enumerate() {
        assert!(
            r.status == 200 || (r.status, r.code()) == (502, "remote_write_unavailable"),
            "batch {i}: {r:?}"
        );
    }
    // What was not stored is sent again, as the agent's queue does.
    assert_eq!(write(&s, &agent, "", one("shed")).status, 200);
    assert_eq!(write(&s, &fillers[0], "", one("greedy")).status, 200);
    for (i, r) in waited.iter().enumerate() {
        if r.status != 200 {
            let (body, from) = match i {
                0..4 => (one(&format!("slot-{i}")), &agent),
                _ => (long(&format!("long-{}", i - 4)), &fillers[i - 4]),
            };
            let again = write(&s, from, "", body);
            assert_eq!(again.status, 200, "batch {i}: {again:?}");
        }
    }
    // Every sample of every batch, once: 4 × 50 000, the 4 slots', the
    // shed one and the greedy one.
    let selector = format!("{CPU}{{process=~\"long-.*|slot-.*|shed|greedy\"}}");
    wait_until(
        "every sample in Prometheus",
        Duration::from_secs(60),
        || {
            let result = query(&s, &format!("sum(count_over_time({selector}[10m]))"), None);
            let n: f64 = result
                .first()
                .and_then(|r| r["value"][1].as_str())
                .map_or(0.0, |v| v.parse().unwrap());
            (n == 200_006.0).then_some(())
        },
    );
}

/// A body that sends a little, then nothing until `release` is dropped:
/// a client that holds its writes open.
struct Stalling {
    first: bool,
    release: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::mem::take(&mut self.first) {
            buf[0] = 0x0a;
            return Ok(1);
        }
        let _ = self.release.recv();
        Ok(0)
    }
}

/// An agent that opens more writes at once than it may, each holding its
/// body back: past 4 the next is answered 503 with `Retry-After` at once,
/// before its body is read, while another agent still writes; once the
/// held writes end, the agent writes again.
#[test]
fn an_agent_holding_writes_open_is_refused_more_and_others_still_write() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agents = s.enroll(&admin, &["hostile", "honest"]);
    let (hostile, honest) = (&agents[0], &agents[1]);
    let at = seconds_ago(Duration::from_secs(60));
    let one = |tag: &str| batch(&[series(&[("__name__", CPU), ("process", tag)], &[(1.0, at)])]);
    let shed = || {
        counter(
            &get_text(&s.ports.api_url("/metrics")),
            "phoenix_api_remote_write_batches_shed_total",
        )
    };
    let shed_before = shed();
    let (probe, held) = std::thread::scope(|scope| {
        // Five writes that hold their bodies: four are read, the fifth is
        // refused at once (it cannot end before its body is released).
        let mut releases = Vec::new();
        let mut held = Vec::new();
        for _ in 0..5 {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            releases.push(tx);
            let s = &s;
            held.push(scope.spawn(move || {
                let mut req = s
                    .agent(reqwest::Method::POST, "/api/v1/agent/write")
                    .bearer_auth(&hostile.credential);
                for (name, value) in REMOTE_WRITE {
                    req = req.header(name, value);
                }
                s.reply(req.body(reqwest::blocking::Body::new(Stalling {
                    first: true,
                    release: rx,
                })))
            }));
        }
        wait_until("one of the five is shed", Duration::from_secs(10), || {
            (shed() >= shed_before + 1.0).then_some(())
        });
        // Four are held: one more is refused too, another agent writes.
        let probe = write(&s, hostile, "", one("probe"));
        assert_eq!(
            write(&s, honest, "", one("honest")).status,
            200,
            "another agent still writes"
        );
        drop(releases);
        let held: Vec<Reply> = held.into_iter().map(|h| h.join().unwrap()).collect();
        (probe, held)
    });
    for r in held.iter().chain([&probe]).filter(|r| r.status == 503) {
        shed_saying(r, "this agent already has 4 writes in progress");
    }
    assert_eq!(probe.status, 503, "{probe:?}");
    let mut statuses: Vec<u16> = held.iter().map(|r| r.status).collect();
    statuses.sort();
    // The four read were cut short: refused as what they are.
    assert_eq!(statuses, [400, 400, 400, 400, 503], "{held:?}");
    assert_eq!(write(&s, hostile, "", one("after")).status, 200);
}

/// Many agents write at once, so that batches share requests to
/// Prometheus; half of them send a value at a timestamp Prometheus already
/// holds. Each of those is refused alone, and every other batch is stored
/// once, also when it went in the same request as a refused one.
#[test]
fn a_refused_batch_sharing_a_request_with_others_is_refused_alone() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agents: Vec<Agent> = (0..16)
        .map(|i| s.enroll_one(&admin, &format!("host-{i}")))
        .collect();
    let held_at = seconds_ago(Duration::from_secs(1200));
    let held = |value: f64| {
        batch(&[series(
            &[("__name__", CPU), ("process", "held"), ("pid", "1")],
            &[(value, held_at)],
        )])
    };
    let conflicting = |i: usize| i.is_multiple_of(2);
    for (_, agent) in agents.iter().enumerate().filter(|(i, _)| conflicting(*i)) {
        assert_eq!(write(&s, agent, "", held(1.0)).status, 200);
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        let at = held_at + rounds * 1000;
        let replies: Vec<Reply> = std::thread::scope(|scope| {
            let handles: Vec<_> = agents
                .iter()
                .enumerate()
                .map(|(i, agent)| {
                    let body = if conflicting(i) {
                        held(2.0)
                    } else {
                        batch(&[series(
                            &[("__name__", CPU), ("process", "fresh"), ("pid", "1")],
                            &[(i as f64, at)],
                        )])
                    };
                    let s = &s;
                    scope.spawn(move || write(s, agent, "", body))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in replies.iter().enumerate() {
            if conflicting(i) {
                refused(r, 400, "samples_rejected");
            } else {
                assert_eq!(r.status, 200, "round {rounds}, agent {i}: {r:?}");
            }
        }
        let m = get_text(&s.ports.api_url("/metrics"));
        let requests = counter(
            &m,
            "phoenix_api_remote_write_requests_total{outcome=\"refused\"}",
        );
        let batches = counter(
            &m,
            "phoenix_api_remote_write_batches_total{outcome=\"refused\"}",
        );
        // A request of several batches was refused (and then sent again
        // one batch at a time).
        if batches > requests {
            break;
        }
        assert!(
            rounds < 40,
            "in {rounds} rounds of 16 concurrent writes no refused request held several \
             batches: {m}"
        );
    }
    for (i, agent) in agents.iter().enumerate() {
        let selector = format!("{CPU}{{agent=\"{}\"}}", agent.id);
        let got = stored(&s, &selector, "30m");
        let samples = &got[0].1;
        if conflicting(i) {
            assert_eq!(
                samples,
                &[(held_at, 1.0)],
                "agent {i}: the held value stays"
            );
        } else {
            let want: Vec<(i64, f64)> = (1..=rounds)
                .map(|round| (held_at + round * 1000, i as f64))
                .collect();
            assert_eq!(samples, &want, "agent {i}: every round's sample, once");
        }
    }
}

#[test]
fn malformed_batches_get_their_problem_documents() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let agent = s.enroll_one(&admin, "web-1");
    let now = seconds_ago(Duration::ZERO);
    let good = |labels: &[(&str, &str)]| series(labels, &[(1.0, now)]);
    let cpu = good(&[("__name__", CPU), ("process", "a")]);

    // Not snappy: the protobuf as it is.
    let r = write(&s, &agent, "", write_request(std::slice::from_ref(&cpu)));
    let problem = refused(&r, 400, "invalid_write_request");
    assert!(
        problem["detail"].as_str().unwrap().contains("snappy"),
        "{problem}"
    );
    // Snappy, but not a WriteRequest inside.
    let r = write(&s, &agent, "", snappy(b"\xff\xff\xff\xff"));
    let problem = refused(&r, 400, "invalid_write_request");
    assert!(
        problem["detail"].as_str().unwrap().contains("WriteRequest"),
        "{problem}"
    );
    // A bomb: 40 MiB of zeros compress to less than 4 MiB.
    let bomb = snappy(&vec![0u8; 40 << 20]);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let r = write(&s, &agent, "", bomb);
    let problem = refused(&r, 413, "metrics_too_large");
    assert!(
        problem["detail"].as_str().unwrap().contains("uncompresses"),
        "{problem}"
    );
    // Amplifiers, refused on their counts before they are decoded: empty
    // series (2 bytes each, about 100 once decoded) and empty labels.
    let r = write(&s, &agent, "", snappy(&[0x0a, 0x00].repeat(60_000)));
    refused(&r, 400, "too_many_series");
    let labels = [0x0a, 0x00].repeat(50_000 * 32 + 1);
    let mut one_series = Vec::new();
    field(1, &labels, &mut one_series);
    let r = write(&s, &agent, "", snappy(&one_series));
    let problem = refused(&r, 400, "too_many_labels");
    assert!(
        problem["detail"].as_str().unwrap().contains("1600001"),
        "{problem}"
    );
    // Not remote write 1.0.
    let r = write_with(
        &s,
        &agent,
        "",
        &[
            ("content-type", "text/plain"),
            ("content-encoding", "snappy"),
        ],
        batch(std::slice::from_ref(&cpu)),
    );
    refused(&r, 415, "unsupported_media_type");
    let r = write_with(
        &s,
        &agent,
        "",
        &[("content-type", "application/x-protobuf")],
        write_request(std::slice::from_ref(&cpu)),
    );
    refused(&r, 415, "unsupported_media_type");
    // A misspelt group parameter would send the batch to the live group.
    let r = write(
        &s,
        &agent,
        "?experiment=demo&varaint=baseline",
        batch(std::slice::from_ref(&cpu)),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["detail"].as_str().unwrap().contains("varaint"),
        "{r:?}"
    );
    // Labels: the API's own, Prometheus's own, twice the same series; the
    // problem names the series by its index.
    for (labels, code) in [
        (
            &[("__name__", CPU), ("agent", "spoofed")][..],
            "reserved_label",
        ),
        (&[("__name__", CPU), ("job", "other")][..], "reserved_label"),
        (
            &[("__name__", CPU), ("__tenant", "x")][..],
            "invalid_label_name",
        ),
        (&[("__name__", "cpu-percent")][..], "invalid_metric_name"),
        (&[("process", "no-name")][..], "invalid_metric_name"),
        (
            &[("process", "a"), ("__name__", CPU)][..],
            "duplicate_series",
        ),
    ] {
        let r = write(&s, &agent, "", batch(&[cpu.clone(), good(labels)]));
        let problem = refused(&r, 400, code);
        assert_eq!(problem["index"], 1, "{labels:?}: {problem}");
    }
    // Timestamps: out of order, older than the out-of-order window (6 h),
    // ahead of the clock.
    for (samples, code) in [
        (vec![(1.0, now), (2.0, now - 1000)], "samples_out_of_order"),
        (vec![(1.0, now - 7 * 3600 * 1000)], "sample_too_old"),
        (vec![(1.0, now + 10 * 60 * 1000)], "sample_in_future"),
    ] {
        let r = write(
            &s,
            &agent,
            "",
            batch(&[series(&[("__name__", MEMORY)], &samples)]),
        );
        let problem = refused(&r, 400, code);
        assert_eq!(problem["index"], 0, "{problem}");
    }
    // Without a credential, as every agent route.
    let r = s.reply(
        s.agent(reqwest::Method::POST, "/api/v1/agent/write")
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(batch(std::slice::from_ref(&cpu))),
    );
    refused(&r, 401, "missing_credential");

    // A body past 4 MiB, sent by curl over HTTP/2 as users' clients do: the
    // 413 arrives as a problem document, the rest of the body is read.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.snappy");
    let noise: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &noise).unwrap();
    let url = s.ports.agent_url("/api/v1/agent/write");
    let (code, out, err) = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &format!("authorization: Bearer {}", agent.credential),
        "-H",
        "content-type: application/x-protobuf",
        "-H",
        "content-encoding: snappy",
        "--data-binary",
        &format!("@{}", file.display()),
        "-w",
        "\n%{http_code} %{http_version} %{content_type}",
    ]);
    assert_eq!(code, 0, "curl: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "413 2 application/problem+json", "{out}");
    let problem: Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["code"], "metrics_too_large", "{problem}");

    // Nothing of it reached Prometheus.
    assert!(
        query(&s, &format!("{{agent=\"{}\"}}", agent.id), None).is_empty(),
        "refused batches are not stored"
    );
}

fn wait_state(s: &Stack, token: &str, id: &str, state: &str) {
    wait_until(
        &format!("experiment {id} {state}"),
        Duration::from_secs(60),
        || {
            let r = s.get(Some(token), &format!("/api/v1/experiments/{id}"));
            (r.body["state"] == state).then_some(())
        },
    );
}

#[test]
fn experiment_batches_are_taken_while_it_runs_and_later_only_from_its_running_window() {
    let s = Stack::start(FAST_DRIVER);
    let u = s.users();
    let agents = s.enroll(&u.admin, &["web-1", "cache-1"]);
    let (member, stranger) = (&agents[0], &agents[1]);
    let r = s.post(
        Some(&u.operator),
        "/api/v1/experiments",
        &json!({
            "name": "late batches",
            "baseline": { "spec": { "stages": [] } },
            "candidate": { "spec": { "stages": [] } },
            "agents": [member.id],
            "duration": "1h",
        }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();
    let group = format!("?experiment={id}&variant=baseline");
    let sample = |process: &str, t: i64| {
        batch(&[series(
            &[("__name__", CPU), ("process", process)],
            &[(1.0, t)],
        )])
    };

    // Not yet deploying: refused.
    let before_start = seconds_ago(Duration::ZERO) - 1000;
    let r = write(&s, member, &group, sample("early", before_start));
    refused(&r, 409, "experiment_not_running");

    let r = s.post(
        Some(&u.operator),
        &format!("/api/v1/experiments/{id}/start"),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let tasks = s.poll(&member.credential, "wait=5");
    let task = &tasks.body["tasks"][0];
    assert_eq!(task["kind"], "run_experiment", "{tasks:?}");
    let r = s.report(
        &member.credential,
        task["id"].as_str().unwrap(),
        &json!({ "result_id": uuid::Uuid::new_v4(), "outcome": "succeeded" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    wait_state(&s, &u.viewer, &id, "running");
    std::thread::sleep(Duration::from_millis(1100));

    // Running: taken from its agents only.
    let while_running = seconds_ago(Duration::ZERO);
    let r = write(&s, member, &group, sample("live", while_running));
    assert_eq!(r.status, 200, "{r:?}");
    let r = write(&s, stranger, &group, sample("live", while_running));
    refused(&r, 409, "not_in_experiment");

    std::thread::sleep(Duration::from_millis(1100));
    let r = s.post(
        Some(&u.operator),
        &format!("/api/v1/experiments/{id}/stop"),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "stopped");

    // Stopped: a batch queued while it ran is still taken, one with any
    // sample from before or after the running window is not.
    let r = write(&s, member, &group, sample("queued", while_running));
    assert_eq!(r.status, 200, "{r:?}");
    let r = write(&s, member, &group, sample("after", now_ms()));
    refused(&r, 409, "experiment_not_running");
    let r = write(
        &s,
        member,
        &group,
        batch(&[
            series(
                &[("__name__", CPU), ("process", "a")],
                &[(1.0, while_running)],
            ),
            series(
                &[("__name__", CPU), ("process", "b")],
                &[(1.0, before_start)],
            ),
        ]),
    );
    let problem = refused(&r, 409, "experiment_not_running");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("running window"),
        "{problem}"
    );

    let selector = format!("{CPU}{{experiment=\"{id}\",variant=\"baseline\"}}");
    assert_eq!(
        counts(&s, &selector, "10m"),
        [("live".to_string(), 1.0), ("queued".to_string(), 1.0)]
    );
}
