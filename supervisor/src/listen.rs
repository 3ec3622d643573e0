//! The supervisor's own listeners (the health port, the plain-HTTP port and
//! the control socket): one accept loop with a connection limit and a
//! backoff on accept errors, and HTTP/1 serving with timeouts.
//!
//! Anyone who can reach the health or plain-HTTP port can open connections.
//! Each listener holds at most [`connection_limit`] of them; a connection
//! beyond it is closed at once, and an idle or slow one is closed after
//! [`HEADER_READ_TIMEOUT`]. Together the listeners stay well inside the
//! supervisor's open-files limit, so the rest of the limit is a reserve for
//! its own work (spawning, checks, logs) that clients cannot take.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use phoenix_backoff::Backoff;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutLayer;

/// Between failed accepts: 10 ms doubling to 1 s. Errors such as EMFILE
/// last until something else closes a file; retrying at once would spin
/// a core and starve the loop that could close one.
const ACCEPT_RETRY: Backoff =
    match Backoff::try_new(Duration::from_millis(10), Duration::from_secs(1), 0.0) {
        Ok(b) => b,
        Err(_) => panic!("valid backoff"),
    };

/// A client must send a request's headers within this time of connecting,
/// or of the previous response on a kept-alive connection (an idle
/// connection is closed then).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// From the headers to the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is asked to close after this long, whatever it does (a
/// slow body, a client that never reads); forced closed 5 s later.
pub const CONNECTION_MAX_AGE: Duration = Duration::from_secs(60);
/// Connections of the control socket (root only; `phoenixctl` makes one per
/// command), and how long one may stay silent between requests.
pub const CONTROL_CONNECTIONS: usize = 16;
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the same listener problem is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Connections one TCP listener may hold: an eighth of the open-files
/// limit, at least 4 and at most 256. With the soft limit raised to the
/// hard one at start (1024 on most systems, far more under systemd) that is
/// 128 to 256; the health and plain-HTTP listeners together never hold
/// more than a quarter of the limit.
pub fn connection_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    limit_for(soft)
}

fn limit_for(open_files: u64) -> usize {
    (open_files / 8).clamp(4, 256) as usize
}

/// What the accept loop needs of a listener.
pub trait Accept: Send + 'static {
    type Stream: Send + 'static;
    type Addr: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        UnixListener::accept(self)
    }
}

/// Errors of one connection that the peer caused; the next accept is fine.
fn peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// At most one log line per [`LOG_EVERY`], with the count of the others.
struct Quiet {
    last: Option<Instant>,
    suppressed: u64,
}

impl Quiet {
    fn new() -> Self {
        Quiet {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when it is time to log.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections for the life of the process and runs `handle` on
/// each in its own task, at most `max_connections` at a time; one more is
/// closed at once. An accept error other than the peer's backs off (10 ms
/// doubling to 1 s) instead of retrying at once.
pub async fn accept_loop<L, F, Fut>(
    name: &'static str,
    listener: L,
    max_connections: usize,
    handle: F,
) where
    L: Accept,
    F: Fn(L::Stream, L::Addr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut failures: u32 = 0;
    let (mut error_log, mut full_log) = (Quiet::new(), Quiet::new());
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                failures = 0;
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let serve = handle(stream, addr);
                        tokio::spawn(async move {
                            serve.await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // Closed rather than left waiting: a client learns
                        // at once, and the backlog does not fill up with
                        // connections that would only wait their turn.
                        drop(stream);
                        if let Some(suppressed) = full_log.due() {
                            tracing::warn!(
                                listener = name,
                                max_connections,
                                suppressed,
                                "connection limit reached: closing new connections until some end"
                            );
                        }
                    }
                }
            }
            Err(e) if peer_error(&e) => {}
            Err(e) => {
                let delay = ACCEPT_RETRY.base_delay(failures);
                failures = failures.saturating_add(1);
                if let Some(suppressed) = error_log.due() {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        retry_in = ?delay,
                        suppressed,
                        "cannot accept connections (out of file descriptors or memory?); retrying with backoff"
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Both ends of a TCP connection; in every request's extensions as
/// `ConnectInfo<Ends>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub peer: SocketAddr,
    /// The address the client connected to; unspecified when unknown.
    pub local: SocketAddr,
}

/// Serves `app` over HTTP/1 on `listener` for the life of the process,
/// with the connection limit and the timeouts above. Handlers can read the
/// connection's addresses as `ConnectInfo<Ends>`.
pub async fn serve_http(name: &'static str, listener: TcpListener, app: Router) {
    let app = app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    accept_loop(name, listener, connection_limit(), move |stream, peer| {
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let ends = Ends { peer, local };
        let service = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(ends));
                request
            });
        serve_connection(stream, service)
    })
    .await;
}

async fn serve_connection<S>(stream: tokio::net::TcpStream, service: S)
where
    S: tower::Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = tokio::time::sleep(CONNECTION_MAX_AGE) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A listener whose every accept fails with EMFILE, counting attempts.
    struct OutOfFiles(Arc<AtomicU32>);

    impl Accept for OutOfFiles {
        type Stream = ();
        type Addr = ();
        fn accept(&self) -> impl Future<Output = io::Result<((), ())>> + Send {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Err(io::Error::from_raw_os_error(libc::EMFILE)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let attempts = Arc::new(AtomicU32::new(0));
        let listener = OutOfFiles(attempts.clone());
        tokio::spawn(accept_loop("test", listener, 4, |(), ()| async {}));
        // 10, 20, 40, ... 640 ms, then 1 s apart: 8 tries in the first
        // 1.27 s, one a second after that.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let n = attempts.load(Ordering::Relaxed);
        assert!((15..=18).contains(&n), "{n} accepts in 10 s");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_the_rest_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Each connection echoes one byte, then holds on until the client goes.
        tokio::spawn(accept_loop(
            "test",
            listener,
            2,
            |mut stream, _| async move {
                let mut b = [0u8; 1];
                while stream.read(&mut b).await.is_ok_and(|n| n > 0) {
                    let _ = stream.write_all(&b).await;
                }
            },
        ));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"x").await.unwrap();
            c.read_exact(&mut [0u8; 1]).await.unwrap();
            held.push(c);
        }
        // The third is accepted and closed at once: the read sees the end.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // One ends: a new connection is served again.
        drop(held.pop());
        let mut again = None;
        for _ in 0..100 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"y").await.unwrap();
            if matches!(c.read(&mut buf).await, Ok(1)) {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(again.is_some(), "a freed slot serves a new connection");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_http_connections_are_closed_after_the_header_timeout() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve_http("test", listener, app));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let n = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(5),
            idle.read(&mut [0u8; 256]),
        )
        .await
        .expect("the server closes an idle connection");
        // hyper answers 408 or just closes; either way the connection ends.
        assert!(n.is_ok(), "{n:?}");
        assert!(t0.elapsed() >= HEADER_READ_TIMEOUT, "{:?}", t0.elapsed());
    }

    #[test]
    fn listeners_get_an_eighth_of_the_open_files_limit() {
        assert_eq!(limit_for(1024), 128);
        assert_eq!(limit_for(128), 16);
        assert_eq!(limit_for(16), 4);
        assert_eq!(limit_for(1 << 20), 256);
    }
}
