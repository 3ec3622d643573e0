//! The API's network edge on a real stack, with the clients people have:
//! answers to oversized bodies over HTTP/2 and HTTP/1.1, connection limits
//! and timeouts against idle connections, on both listeners, and what the
//! public listeners tell a client of another address.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use phoenix_tests::{
    Stack, StackPorts, Supervisor, connections_from, connections_on, curl, https_from,
    non_loopback_ipv4,
};
use serde_json::Value;

/// An oversized body used to end in a network error instead of its 413:
/// over HTTP/2 the stream was reset without the answer, over HTTP/1.1 the
/// connection closed while the client was still sending. curl is limited
/// to 16 MiB/s so that it is still sending when the answer comes, as on any
/// real network. The metric write, which bounds its own body, answers the
/// same way.
#[test]
fn an_oversized_body_gets_its_413_over_http2_and_http1() {
    let s = Stack::start("");
    let agent = s.enroll_one(&s.admin_token(), "edge-host");
    let mut body = tempfile::NamedTempFile::new().unwrap();
    body.write_all(&vec![b'x'; 6 * 1024 * 1024]).unwrap();
    let body_arg = format!("@{}", body.path().display());
    let cases: [(&str, &[&str], &str); 3] = [
        ("HTTP/2 (curl's default over TLS)", &[], "2"),
        (
            "HTTP/1.1 with Content-Length",
            &["--http1.1", "-H", "Expect:"],
            "1.1",
        ),
        (
            "HTTP/1.1 chunked",
            &[
                "--http1.1",
                "-H",
                "Expect:",
                "-H",
                "Transfer-Encoding: chunked",
            ],
            "1.1",
        ),
    ];
    let json = ["-X", "POST", "-H", "content-type: application/json"];
    let bearer = format!("authorization: Bearer {}", agent.credential);
    let write = [
        "-X",
        "POST",
        "-H",
        "content-type: application/x-protobuf",
        "-H",
        "content-encoding: snappy",
        "-H",
        &bearer,
    ];
    let targets: [(String, &[&str], &str); 3] = [
        (
            s.ports.api_url("/api/v1/auth/login"),
            &json,
            "body_too_large",
        ),
        (
            s.ports.agent_url("/api/v1/agents/enroll"),
            &json,
            "body_too_large",
        ),
        (
            s.ports.agent_url("/api/v1/agent/write"),
            &write,
            "metrics_too_large",
        ),
    ];
    for (url, request, code) in &targets {
        for (name, flags, version) in cases {
            let mut args = vec!["--limit-rate", "16M"];
            args.extend_from_slice(request);
            args.extend_from_slice(&[
                "--data-binary",
                &body_arg,
                "-w",
                "\n%{http_code} %{http_version}",
            ]);
            args.extend_from_slice(flags);
            args.push(url);
            let (exit, out, err) = curl(&args);
            assert_eq!(exit, 0, "{url} over {name}: curl failed: {err}");
            let (problem, status) = out.rsplit_once('\n').unwrap();
            assert_eq!(status, format!("413 {version}"), "{url} over {name}");
            let problem: Value = serde_json::from_str(problem).unwrap();
            assert_eq!(problem["code"], *code, "{url} over {name}");
        }
    }
}

const LIMIT: usize = 8;

/// Idle TLS connections were kept without limit: anyone could hold as many
/// as the API had file descriptors.
#[test]
fn idle_connections_cannot_exhaust_the_listeners() {
    let s = Stack::start(&format!(
        "[services.api]\nenv = {{ PHOENIX_API_MAX_CONNECTIONS = \"{LIMIT}\", \
         PHOENIX_API_AGENT_MAX_CONNECTIONS = \"{LIMIT}\", \
         PHOENIX_API_TLS_HANDSHAKE_TIMEOUT = \"1s\", PHOENIX_API_HEADER_READ_TIMEOUT = \"1s\", \
         PHOENIX_API_IDLE_TIMEOUT = \"1s\" }}\n"
    ));
    let api = s.sup.pid_of("api");
    for (port, health) in [
        (s.ports.api, s.ports.api_url("/health")),
        (s.ports.agent, s.ports.agent_url("/health")),
    ] {
        // Connections that never start the TLS handshake.
        let silent: Vec<TcpStream> = (0..3 * LIMIT)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let most = most_connections(api, port, Duration::from_secs(1));
        assert!(most <= LIMIT, "port {port}: {most} connections held");
        // A fresh client is served once the silent ones time out, while
        // their clients still hold them open.
        let started = Instant::now();
        let r = phoenix_tests::https().get(&health).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        drop(silent);

        // TLS clients that make one request and keep their connection.
        let clients: Vec<_> = (0..2 * LIMIT)
            .map(|_| {
                let health = health.clone();
                std::thread::spawn(move || {
                    let client = phoenix_tests::https();
                    let status = client.get(&health).send().map(|r| r.status().as_u16());
                    (client, status.map_err(|e| e.to_string()))
                })
            })
            .collect();
        let most = most_connections(api, port, Duration::from_secs(2));
        assert!(most <= LIMIT, "port {port}: {most} connections held");
        let clients: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        for (_, status) in &clients {
            assert_eq!(status, &Ok(200), "every client is served in turn");
        }
        let started = Instant::now();
        let r = phoenix_tests::https().get(&health).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(started.elapsed() < Duration::from_secs(15));
        drop(clients);
    }
}

/// With only a global limit, one client could open as many silent
/// connections as the limit and keep everyone else waiting: each source has
/// a share of its own.
#[test]
fn one_source_cannot_take_every_connection() {
    let s = Stack::start(
        "[services.api]\nenv = { PHOENIX_API_MAX_CONNECTIONS = \"16\", \
         PHOENIX_API_MAX_CONNECTIONS_PER_SOURCE = \"4\", \
         PHOENIX_API_TLS_HANDSHAKE_TIMEOUT = \"30s\" }\n",
    );
    let api = s.sup.pid_of("api");
    let from = |source: [u8; 4]| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from((source, 0)).into())
            .unwrap();
        socket
            .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], s.ports.api)).into())
            .unwrap();
        socket
    };
    // Silent connections that would hold every slot for 30 s.
    let silent: Vec<_> = (0..40).map(|_| from([127, 0, 0, 2])).collect();
    let most = most_connections_from(
        api,
        s.ports.api,
        Ipv4Addr::new(127, 0, 0, 2),
        Duration::from_secs(1),
    );
    // Its four, and at most one more being closed as it is accepted.
    assert!(most <= 5, "{most} connections held for one source");
    let started = Instant::now();
    let r = phoenix_tests::https()
        .get(s.ports.api_url("/health"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "another source waited {:?}",
        started.elapsed()
    );
    assert!(
        s.sup
            .stderr()
            .contains("one source holds its whole share of connections"),
        "the refusal is logged"
    );
    drop(silent);
}

/// The most connections `pid` held on `port` over `during`.
fn most_connections(pid: i32, port: u16, during: Duration) -> usize {
    most_of(during, || connections_on(pid, port))
}

/// The most connections from `peer` that `pid` held on `port` over `during`.
fn most_connections_from(pid: i32, port: u16, peer: Ipv4Addr, during: Duration) -> usize {
    most_of(during, || connections_from(pid, port, peer))
}

fn most_of(during: Duration, count: impl Fn() -> usize) -> usize {
    let until = Instant::now() + during;
    let mut most = 0;
    while Instant::now() < until {
        // One look at /proc is not atomic: a socket closing while the next
        // is accepted can be seen in the same look. Held connections stay,
        // so a second look at once keeps them and drops such a passer-by.
        most = most.max(count().min(count()));
        std::thread::sleep(Duration::from_millis(20));
    }
    most
}

/// Out of file descriptors, every accept fails until connections close: the
/// listener must wait between attempts instead of spinning on a core.
#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // The API with few file descriptors, and no connection limit below them.
    let s = Stack::start(&format!(
        "[services.api]\ncommand = [\"prlimit\", \"--nofile=64:64\", \"--\", \"{}\"]\n\
         env = {{ PHOENIX_API_MAX_CONNECTIONS = \"1000\" }}\n",
        phoenix_tests::bin("phoenix-api").display()
    ));
    let api = s.sup.pid_of("api");
    let waiting: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(("127.0.0.1", s.ports.api)).unwrap())
        .collect();
    phoenix_tests::wait_until("accept errors", Duration::from_secs(10), || {
        s.sup
            .stderr()
            .contains("could not accept a connection")
            .then_some(())
    });
    let before = cpu_ticks(api);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(api) - before;
    assert!(spent < 50, "{spent} ticks of CPU in 2 s");
    drop(waiting);
    let r = phoenix_tests::https()
        .get(s.ports.api_url("/health"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "accepting again");
}

/// User and system CPU time of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `/metrics` asked by a stranger over the real listeners, both bound to
/// every address as in production: without a token, a peer outside
/// loopback is refused by the API's user listener (401 `missing_token`) and
/// by the supervisor's health listener (403), with no metric in the answer,
/// while the local Prometheus (loopback) gets them and the stranger still
/// gets `/health`. The stranger is this machine's own address outside
/// 127.0.0.0/8, bound by the client before it connects.
#[test]
fn metrics_are_refused_to_a_peer_off_loopback_on_both_public_listeners() {
    let stranger = IpAddr::V4(non_loopback_ipv4());
    let lo = IpAddr::from([127, 0, 0, 1]);
    let ports = StackPorts::free();
    let sup = Supervisor::config(&on_every_address(&ports.config(""), "[api]\nlisten"));
    let config = std::fs::read_to_string(&sup.config).unwrap();
    std::fs::write(&sup.config, on_every_address(&config, "[health]\nlisten")).unwrap();
    let s = Stack::started(sup, ports);
    let get = |from: IpAddr, url: String| {
        let r = https_from(from)
            .get(&url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url} from {from}: {e}"));
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let api = |to: IpAddr| format!("https://{to}:{}/metrics", ports.api);
    let health = |to: IpAddr, path: &str| format!("http://{to}:{}{path}", s.sup.health_port);

    let (code, body) = get(lo, api(lo));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("phoenix_api_"), "{body}");
    let (code, body) = get(lo, health(lo, "/metrics"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("phoenix_supervisor_service_state"), "{body}");

    for to in [lo, stranger] {
        let (code, body) = get(stranger, api(to));
        assert_eq!(code, 401, "from {stranger} to {to}: {body}");
        assert!(body.contains(r#""code":"missing_token""#), "{body}");
        assert!(!body.contains("phoenix_api_"), "{body}");
    }
    let (code, body) = get(stranger, health(lo, "/metrics"));
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("phoenix_supervisor"), "{body}");
    // Refused for what it asked, not unreachable.
    let (code, body) = get(stranger, health(lo, "/health"));
    assert!(
        [200, 503].contains(&code) && body.contains("\"checks\""),
        "{code} {body}"
    );
    // A peer with the very address it connected to is a process of this
    // machine (a packet from outside cannot carry it), as Prometheus is when
    // it scrapes a health listener bound to one address: served, as over
    // loopback.
    let (code, body) = get(stranger, health(stranger, "/metrics"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("phoenix_supervisor_service_state"), "{body}");
}

/// `config` with the listener that follows `key` (`[api]\nlisten`) moved
/// from 127.0.0.1 to every address.
fn on_every_address(config: &str, key: &str) -> String {
    let from = format!("{key} = \"127.0.0.1:");
    assert!(config.contains(&from), "{key} in:\n{config}");
    config.replacen(&from, &format!("{key} = \"0.0.0.0:"), 1)
}
