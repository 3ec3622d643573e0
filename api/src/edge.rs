//! The network edge of both listeners: accepting connections under a limit,
//! TLS with a handshake timeout, HTTP/1.1 and HTTP/2 with header-read and
//! idle timeouts, and the lingering read of request bodies that an early
//! answer (a 413, a 401) left unread.
//!
//! Invariants: a listener holds at most `max_connections` connections (more
//! clients wait in the kernel's accept queue until one closes), and every
//! connection ends on a timeout once its client goes quiet. The request
//! timeout itself is a layer of the router (`lib.rs`), so that long polls
//! keep their budget below it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task,
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
};
use axum_server::tls_rustls::RustlsConfig;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use phoenix_backoff::Backoff;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch},
    time::Instant,
};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// Connection limits and timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Connections held at once; more wait to be accepted.
    pub max_connections: usize,
    /// Connections one source ([`crate::peer::source_block`]) may hold at
    /// once; more are closed as soon as they are accepted, so that one
    /// client cannot take every slot.
    pub max_connections_per_source: usize,
    /// From accept to the end of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// From when a connection is ready for a request to the end of its
    /// headers; for HTTP/1.1 this also bounds a kept-alive connection
    /// waiting for its next request, and for either protocol the wait for
    /// the first request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// gracefully (HTTP/2 connections that only answer pings included).
    pub idle_timeout: Duration,
}

/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2 pings find peers that vanished without closing.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Accept errors are mostly exhausted file descriptors (EMFILE): retrying
/// at once would spin, and the condition passes only as connections close.
const ACCEPT_BACKOFF: Backoff =
    match Backoff::try_new(Duration::from_millis(10), Duration::from_secs(1), 0.0) {
        Ok(backoff) => backoff,
        Err(_) => panic!("invalid accept backoff"),
    };

/// How often reaching the connection limit is logged, at most.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Most of an unread request body read and discarded after the answer.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Longest time spent reading and discarding an unread request body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, then lets open connections
/// finish for up to `grace`. HTTPS when `tls` is set.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    app: Router,
    limits: EdgeLimits,
    shutdown: Shutdown,
    grace: Duration,
    who: &'static str,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let listen = listener.local_addr()?;
    match &tls {
        Some(_) => {
            info!(%listen, for_whom = who, max_connections = limits.max_connections, "serving HTTPS")
        }
        None => warn!(
            %listen,
            for_whom = who,
            "serving plain HTTP because --tls-cert and --tls-key are not set; \
             use this only for development or behind a TLS-terminating proxy"
        ),
    }
    let site = Site {
        tls,
        app,
        http: Arc::new(http_builder(&limits)),
        limits,
        shutdown: shutdown.clone(),
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // A share as large as the whole is no share: the global limit then
    // queues a source's extra connections instead of closing them.
    let per_source = (limits.max_connections_per_source < limits.max_connections)
        .then(|| PerSource::new(limits.max_connections_per_source));
    let mut accept_failures = 0u32;
    let mut last_limit_warning: Option<Instant> = None;
    let mut last_source_warning: Option<Instant> = None;
    loop {
        if permits.available_permits() == 0
            && last_limit_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL)
        {
            warn!(
                %listen,
                for_whom = who,
                max_connections = limits.max_connections,
                "connection limit reached: new connections wait to be accepted until open ones \
                 close; raise the limit if these are legitimate clients"
            );
            last_limit_warning = Some(Instant::now());
        }
        let permit = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    let delay = ACCEPT_BACKOFF.base_delay(accept_failures);
                    accept_failures = accept_failures.saturating_add(1);
                    warn!(
                        %listen,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "could not accept a connection (out of file descriptors?); retrying"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        accept_failures = 0;
        let slot = match &per_source {
            Some(per_source) => per_source.take(peer.ip()),
            None => Some(None),
        };
        let Some(slot) = slot else {
            if last_source_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                warn!(
                    %listen,
                    for_whom = who,
                    source = %crate::peer::source_block(peer.ip()),
                    max_connections_per_source = limits.max_connections_per_source,
                    "one source holds its whole share of connections: its new ones are closed"
                );
                last_source_warning = Some(Instant::now());
            }
            continue;
        };
        // Responses are small and written whole: do not wait to coalesce them.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        let held = Held {
            _permit: permit,
            _slot: slot,
        };
        tokio::spawn(connection(tcp, peer, site.clone(), held));
    }
    // New clients are refused from here on instead of queued.
    drop(listener);
    info!(%listen, grace_ms = grace.as_millis() as u64, "finishing in-flight requests");
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, permits.acquire_many(all)).await {
        Ok(_) => debug!(%listen, "every connection closed"),
        Err(_) => warn!(
            %listen,
            open = limits.max_connections - permits.available_permits(),
            grace_ms = grace.as_millis() as u64,
            "connections still open after the grace period are cut off"
        ),
    }
    Ok(())
}

/// HTTP/1.1 and HTTP/2, whichever the client speaks, with their timeouts.
fn http_builder(limits: &EdgeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Site {
    tls: Option<RustlsConfig>,
    app: Router,
    http: Arc<auto::Builder<TokioExecutor>>,
    limits: EdgeLimits,
    shutdown: Shutdown,
}

/// What an open connection holds until it closes: its place under the
/// listener's limit and under its source's.
struct Held {
    _permit: OwnedSemaphorePermit,
    _slot: Option<SourceSlot>,
}

/// Connections open per source.
struct PerSource {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    limit: usize,
}

impl PerSource {
    fn new(limit: usize) -> Self {
        PerSource {
            open: Arc::default(),
            limit,
        }
    }

    /// A place for one more connection of `ip`'s source, if it has one left.
    fn take(&self, ip: IpAddr) -> Option<Option<SourceSlot>> {
        let source = crate::peer::source_block(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(source).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Some(SourceSlot {
            open: self.open.clone(),
            source,
        }))
    }
}

struct SourceSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// One accepted connection, holding its places until it closes.
async fn connection(tcp: TcpStream, peer: SocketAddr, site: Site, _held: Held) {
    let Some(tls) = &site.tls else {
        return serve_http(tcp, peer, &site).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.get_inner());
    let timeout = site.limits.tls_handshake_timeout;
    let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        () = site.shutdown.requested() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                debug!(%peer, timeout_ms = timeout.as_millis() as u64, "TLS handshake timed out");
                return;
            }
        },
    };
    serve_http(stream, peer, &site).await;
}

/// Serves requests on one connection until the client closes it, it is idle
/// for too long, or the service shuts down (both: after in-flight requests).
async fn serve_http<I>(io: I, peer: SocketAddr, site: &Site)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (in_flight, mut in_flight_changes) = watch::channel(0usize);
    let in_flight = Arc::new(in_flight);
    let app = site.app.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let guard = InFlight::new(in_flight.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(guard);
            response
        }
    });
    let connection = site.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = site.shutdown.requested(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = idle(&mut in_flight_changes, site.limits.header_read_timeout, site.limits.idle_timeout), if !closing => {
                debug!(%peer, "closing an idle connection");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Counts a request in flight on its connection while it lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no request has been in flight for `then`; before the first
/// request, for `first`.
async fn idle(in_flight: &mut watch::Receiver<usize>, first: Duration, then: Duration) {
    let mut quiet_for = first;
    loop {
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(quiet_for, in_flight.changed()).await {
            Ok(Ok(())) => quiet_for = then,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Middleware: when the answer is ready and the handler left part of the
/// request body unread (a 413 on Content-Length, a refusal before reading),
/// the rest is read and discarded in the background, up to
/// [`DRAIN_MAX_BYTES`] for up to [`DRAIN_MAX_TIME`]. Closing a connection
/// (HTTP/1.1) or resetting a stream (HTTP/2) while the client still sends
/// makes many clients (curl, browsers) report a network error instead of the
/// answer, and a client that retries network errors retries forever. This is
/// the lingering close of nginx; the answer goes out first, as HTTP/2 wants
/// (RFC 9113 §8.1).
pub async fn drain_unread_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let (unread, mut left) = oneshot::channel();
    let body = Body::new(Unread {
        body,
        ended: false,
        unread: Some(unread),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    if let Ok(rest) = left.try_recv() {
        tokio::spawn(drain(rest));
    }
    response
}

/// Reads and discards `body` within the bounds.
async fn drain(mut body: Body) {
    let mut read: u64 = 0;
    let reading = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return "client error";
            };
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if read > DRAIN_MAX_BYTES {
                    return "too large";
                }
            }
        }
        "complete"
    };
    let outcome = tokio::time::timeout(DRAIN_MAX_TIME, reading)
        .await
        .unwrap_or("out of time");
    debug!(
        read_bytes = read,
        outcome, "discarded the unread rest of a request body"
    );
}

/// A request body that, dropped before its end, hands itself back.
struct Unread {
    body: Body,
    ended: bool,
    unread: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Unread {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> task::Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        // After its end or an error there is nothing left to drain.
        if matches!(frame, task::Poll::Ready(None | Some(Err(_)))) {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            return;
        }
        if let Some(unread) = self.unread.take() {
            // The receiver is gone when the answer left without waiting for
            // this body; then it is simply dropped.
            let _ = unread.send(std::mem::take(&mut self.body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{http::StatusCode, middleware, routing::post};
    use http_body_util::channel::Channel;

    /// A route that refuses before reading the body, like the body limit on
    /// a Content-Length that is too large; its request body comes from the
    /// returned sender, as from a client still writing.
    async fn refused_early() -> (http_body_util::channel::Sender<Bytes>, StatusCode) {
        let app = Router::new()
            .route("/", post(|| async { StatusCode::PAYLOAD_TOO_LARGE }))
            .layer(middleware::from_fn(drain_unread_body));
        let (client, body) = Channel::<Bytes>::new(1);
        let request = Request::post("/").body(Body::new(body)).unwrap();
        let response = app.oneshot(request).await.unwrap();
        (client, response.status())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_unread_by_the_answer_is_still_read_for_a_bounded_time() {
        let (mut client, status) = refused_early().await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let kib = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..100 {
            client
                .send_data(kib.clone())
                .await
                .expect("the body is read after the answer");
        }
        tokio::time::sleep(DRAIN_MAX_TIME - Duration::from_millis(100)).await;
        assert!(client.send_data(kib.clone()).await.is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            client.send_data(kib).await.is_err(),
            "a client that neither ends nor stops is given up on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_unread_by_the_answer_is_still_read_up_to_a_bounded_size() {
        let (mut client, _) = refused_early().await;
        let mib = Bytes::from(vec![b'x'; 1024 * 1024]);
        let mut sent: u64 = 0;
        while client.send_data(mib.clone()).await.is_ok() {
            sent += mib.len() as u64;
            assert!(sent <= DRAIN_MAX_BYTES + 2 * mib.len() as u64, "{sent}");
        }
        assert!(sent >= DRAIN_MAX_BYTES, "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let (count, mut changes) = watch::channel(0usize);
        let count = Arc::new(count);
        let started = Instant::now();
        idle(&mut changes, Duration::from_secs(1), Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "before a request"
        );

        let started = Instant::now();
        tokio::spawn({
            let count = count.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let request = InFlight::new(count);
                // A long poll: in flight far longer than the idle timeout.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(request);
            }
        });
        idle(&mut changes, Duration::from_secs(1), Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(35_500));
    }
}
