//! The one HTTP server under every listener of the node (instruction API, cluster internal
//! listener, `/metrics`): it bounds what one client can hold, so that clients that connect and
//! then send slowly, or nothing, cannot use up the file descriptors the device ports need.
//!
//! - At most `max_connections` open connections per listener; the next one is answered 503
//!   and closed at once (`iothub_http_connections_refused_total{listener}`).
//! - A request's head must arrive within `header_read_timeout` of its first byte (of the
//!   connection's start, for the first request).
//! - A request's body must arrive within `body_read_timeout` of its head; otherwise the
//!   request is answered 408 and the connection closed.
//! - A keep-alive connection on which no request starts within `idle_timeout` of the last
//!   response's end is closed. The idle clock runs only between requests: a response that
//!   streams for hours (a video viewer) is never cut by it.
//!
//! Each timeout is counted in `iothub_http_timeouts_total{listener, phase}`.
//!
//! A new listener binds its `TcpListener` and hands it to [`spawn`] with `config.http`, a
//! name for its metrics and its routes (a warp filter through `warp::service`).
//!
//! Connections are HTTP/1.1 served by hyper. hyper's own `header_read_timeout` is not used:
//! it starts when hyper begins waiting for the next request, so on a keep-alive connection
//! it also bounds the wait between requests, and an idle connection is closed after the
//! header time rather than `idle_timeout` (the keep-alive tests below fail with it set). The
//! timeouts here follow the connection's phase instead, which the service wrapper sets
//! (a request came in, its response ended) and the socket wrapper enforces on reads.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use warp::http::{header, HeaderValue, Request, Response, StatusCode};

use crate::config::HttpConfig;
use crate::tls::ReloadingTls;

/// Errors a request or response body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a connection past the cap gets before it is closed. Written without waiting: a
/// client that cannot take these bytes at once is closed without them.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// Pause after an accept error other than a refused client (out of file descriptors): the
/// listener retries once connections have closed instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `service` on `listener` (named `name` in logs and metrics) until `shutdown`
/// resolves; then stops accepting, lets open requests finish and returns when the last
/// connection has closed. Aborting the returned task closes every connection at once. With
/// `tls`, each connection's TLS handshake must end within the header read timeout, and the
/// certificate is the one `tls` holds when the connection comes in.
pub fn spawn<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpConfig,
    tls: Option<Arc<ReloadingTls>>,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()>
where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    tokio::spawn(accept_loop(name, listener, limits, tls, service, shutdown))
}

async fn accept_loop<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpConfig,
    tls: Option<Arc<ReloadingTls>>,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Owned here, so that aborting this task aborts every connection too.
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_client_error(&e) => continue,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "http: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("iothub_http_connections_refused_total", "listener" => name)
                .increment(1);
            let _ = stream.try_write(REFUSAL);
            continue;
        };
        let phase = Arc::new(PhaseCell::new(Instant::now()));
        let service = ConnService {
            inner: service.clone(),
            phase: phase.clone(),
            body_read_timeout: limits.body_read_timeout,
            name,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(true);
        let open = OpenConnection::new(name, permit);
        match &tls {
            None => {
                let io = TokioIo::new(GuardedStream::new(stream, phase, limits, name));
                let connection = graceful.watch(builder.serve_connection(io, service));
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(listener = name, error = %e, "http: connection ended");
                    }
                    drop(open);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let graceful_watcher = graceful.watcher();
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(
                        limits.header_read_timeout,
                        acceptor.accept(stream),
                    );
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            metrics::counter!("iothub_tls_handshake_failures_total", "listener" => name)
                                .increment(1);
                            tracing::debug!(listener = name, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("iothub_http_timeouts_total", "listener" => name, "phase" => "tls_handshake")
                                .increment(1);
                            return;
                        }
                    };
                    let io = TokioIo::new(GuardedStream::new(stream, phase, limits, name));
                    let connection =
                        graceful_watcher.watch(builder.serve_connection(io, service));
                    if let Err(e) = connection.await {
                        tracing::debug!(listener = name, error = %e, "https: connection ended");
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

/// One open connection: its place under the cap and in `iothub_http_connections`, both
/// given back when the connection's task ends or is aborted.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    gauge: metrics::Gauge,
}

impl OpenConnection {
    fn new(name: &'static str, permit: OwnedSemaphorePermit) -> OpenConnection {
        let gauge = metrics::gauge!("iothub_http_connections", "listener" => name);
        gauge.increment(1.0);
        OpenConnection {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Errors of one client's connection that surface at accept; the listener is fine.
fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Where a connection is between requests, which decides the read deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request under way since `since` (a response ended then).
    Idle { since: Instant },
    /// A request head started arriving at `since` (the connection opened then, for the
    /// first request).
    Head { since: Instant },
    /// The connection's `request`-th request is being handled or its response sent.
    Busy { request: u64 },
}

/// The phase of one connection, shared by its socket and its service.
struct PhaseCell(Mutex<PhaseState>);

struct PhaseState {
    phase: Phase,
    /// Requests begun on the connection.
    requests: u64,
    /// The connection task, as last seen waiting for bytes: a read pending while busy has
    /// no deadline, so the end of the response wakes it to take up the idle one.
    reader: Option<Waker>,
}

impl PhaseCell {
    fn new(opened: Instant) -> PhaseCell {
        PhaseCell(Mutex::new(PhaseState {
            phase: Phase::Head { since: opened },
            requests: 0,
            reader: None,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PhaseState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current phase; remembers `reader` as the task to wake when it changes.
    fn waiting(&self, reader: &Waker) -> Phase {
        let mut state = self.lock();
        match &mut state.reader {
            Some(known) => known.clone_from(reader),
            None => state.reader = Some(reader.clone()),
        }
        state.phase
    }

    /// A request's head was read; returns its number on this connection.
    fn begin_request(&self) -> u64 {
        let mut state = self.lock();
        state.requests += 1;
        state.phase = Phase::Busy {
            request: state.requests,
        };
        state.requests
    }

    /// The response to `request` ended: the connection is idle unless a later request began.
    fn end_request(&self, request: u64, now: Instant) {
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Busy { request: r } if r == request) {
            return;
        }
        state.phase = Phase::Idle { since: now };
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Bytes arrived: on an idle connection they are the next request's head.
    fn bytes_arrived(&self, now: Instant) {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Idle { .. }) {
            state.phase = Phase::Head { since: now };
        }
    }
}

/// The accepted socket (or its TLS session), failing a read that waits past the deadline
/// of the connection's phase, and a write that makes no progress for the idle timeout (a
/// client that stopped reading a streamed response); hyper then closes the connection.
struct GuardedStream<T = TcpStream> {
    stream: T,
    phase: Arc<PhaseCell>,
    limits: HttpConfig,
    name: &'static str,
    deadline: Pin<Box<Sleep>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> GuardedStream<T> {
    fn new(stream: T, phase: Arc<PhaseCell>, limits: HttpConfig, name: &'static str) -> Self {
        GuardedStream {
            stream,
            phase,
            limits,
            name,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
            write_deadline: None,
        }
    }

    /// A write is pending: fails it once it has waited the idle timeout.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limits.idle_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(deadline.as_mut().poll(cx));
        metrics::counter!("iothub_http_timeouts_total", "listener" => self.name, "phase" => "write")
            .increment(1);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "http write stalled",
        ))
    }

    /// The deadline of the current phase and its metric label; none while busy.
    fn read_deadline(&self, reader: &Waker) -> Option<(Instant, &'static str)> {
        match self.phase.waiting(reader) {
            Phase::Idle { since } => Some((since + self.limits.idle_timeout, "idle")),
            Phase::Head { since } => Some((since + self.limits.header_read_timeout, "header")),
            Phase::Busy { .. } => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.bytes_arrived(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, phase)) = this.read_deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if this.deadline.deadline() != deadline {
                    this.deadline.as_mut().reset(deadline);
                }
                ready!(this.deadline.as_mut().poll(cx));
                metrics::counter!("iothub_http_timeouts_total", "listener" => this.name, "phase" => phase)
                    .increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("http {phase} timeout"),
                )))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.write_stalled(cx).map(Err),
            done => {
                this.write_deadline = None;
                done
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_stalled(cx).map(Err),
            done => {
                this.write_deadline = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The hyper service of one connection: marks the connection busy for each request, gives
/// the handler a body bound by `body_read_timeout`, and marks it idle when the response ends.
struct ConnService<S> {
    inner: S,
    phase: Arc<PhaseCell>,
    body_read_timeout: Duration,
    name: &'static str,
}

/// The response of every listener: the handler's, or the server's own 408.
pub type ResponseBody<B> = TrackedBody<Either<B, Full<Bytes>>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let number = self.phase.begin_request();
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.body_read_timeout;
        let name = self.name;
        let request = request.map(|body| TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timed_out: timed_out.clone(),
            name,
        });
        let mut inner = self.inner.clone();
        let phase = self.phase.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let response = inner.call(request).await?;
            let response = if timed_out.load(Ordering::Relaxed) {
                request_timeout().map(Either::Right)
            } else {
                response.map(Either::Left)
            };
            Ok(response.map(|body| TrackedBody {
                inner: body,
                phase,
                request: number,
                ended: false,
            }))
        })
    }
}

/// 408 with `connection: close`: the rest of a late body is never read.
fn request_timeout() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"request body not received in time\n",
    )));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request body that fails once its deadline passes before its end; the server then
/// answers 408 whatever the handler made of the error.
pub struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
    name: &'static str,
}

/// The error a [`TimedBody`] yields past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the body read timeout")]
pub struct BodyTimedOut;

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                this.timed_out.store(true, Ordering::Relaxed);
                metrics::counter!("iothub_http_timeouts_total", "listener" => this.name, "phase" => "body")
                    .increment(1);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its connection idle when it ends (or is dropped unfinished,
/// when hyper stops sending it), which starts the idle clock.
pub struct TrackedBody<B> {
    inner: B,
    phase: Arc<PhaseCell>,
    request: u64,
    ended: bool,
}

impl<B> TrackedBody<B> {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.phase.end_request(self.request, Instant::now());
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures::StreamExt;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, StreamBody};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::sync::oneshot;

    use super::*;

    const HEADER: Duration = Duration::from_secs(2);
    const BODY: Duration = Duration::from_secs(2);
    const IDLE: Duration = Duration::from_secs(3);
    /// Scheduling and timer granularity allowed past a deadline.
    const SLACK: Duration = Duration::from_millis(1500);
    /// Allowed before a deadline: the deadline starts at accept, the clock here a moment later.
    const EARLY: Duration = Duration::from_millis(200);
    const STREAM_CHUNKS: usize = 12;
    const STREAM_INTERVAL: Duration = Duration::from_millis(500);
    /// How long `/wait` takes to answer: past the header and the idle timeouts, as a
    /// sendInstruct waiting for its device does.
    const HANDLER_WAIT: Duration = Duration::from_secs(4);

    fn limits(max_connections: usize) -> HttpConfig {
        HttpConfig {
            header_read_timeout: HEADER,
            body_read_timeout: BODY,
            idle_timeout: IDLE,
            max_connections,
        }
    }

    type TestBody = UnsyncBoxBody<Bytes, BoxError>;

    fn text(status: StatusCode, body: String) -> Response<TestBody> {
        let mut response = Response::new(
            Full::new(Bytes::from(body))
                .map_err(Into::into)
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response
    }

    /// `/health` answers at once, `/echo` reads the whole body and answers its length,
    /// `/wait` answers after [`HANDLER_WAIT`], `/stream` sends [`STREAM_CHUNKS`] chunks [`STREAM_INTERVAL`] apart (longer than the
    /// idle timeout in all).
    #[derive(Clone)]
    struct TestRoutes;

    impl tower_service::Service<Request<TimedBody>> for TestRoutes {
        type Response = Response<TestBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<TimedBody>) -> Self::Future {
            Box::pin(async move {
                let response = match request.uri().path() {
                    "/health" => text(StatusCode::OK, "ok".into()),
                    "/echo" => match request.into_body().collect().await {
                        Ok(body) => text(StatusCode::OK, body.to_bytes().len().to_string()),
                        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                    },
                    "/wait" => {
                        tokio::time::sleep(HANDLER_WAIT).await;
                        text(StatusCode::OK, "waited".into())
                    }
                    "/stream" => {
                        let chunks = futures::stream::iter(0..STREAM_CHUNKS).then(|i| async move {
                            tokio::time::sleep(STREAM_INTERVAL).await;
                            Ok::<_, BoxError>(Frame::data(Bytes::from(format!("part{i};"))))
                        });
                        Response::new(StreamBody::new(chunks).boxed_unsync())
                    }
                    _ => text(StatusCode::NOT_FOUND, String::new()),
                };
                Ok(response)
            })
        }
    }

    struct TestServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start(name: &'static str, limits: HttpConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = spawn(name, listener, limits, None, TestRoutes, async move {
            let _ = stopped.await;
        });
        TestServer { addr, stop, task }
    }

    /// Writes `bytes` one per second, as a client on a bad link (or an attacker) would.
    fn trickle(mut write: OwnedWriteHalf, bytes: &'static [u8]) -> JoinHandle<()> {
        tokio::spawn(async move {
            for byte in bytes {
                if write.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Keep the connection open: only the server may close it.
            std::future::pending::<()>().await;
        })
    }

    /// Reads until the server closes the connection (end of stream or reset); returns how
    /// long that took and what was read. Panics if it stays open for `limit`.
    async fn read_until_closed(
        read: &mut (impl AsyncRead + Unpin),
        limit: Duration,
    ) -> (Duration, Vec<u8>) {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(started + limit, read.read(&mut buf)).await {
                Err(_) => panic!(
                    "server kept the connection open for {limit:?}; read {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads one response with a `content-length`; returns its status line and body.
    async fn read_response(stream: &mut TcpStream) -> (String, String) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("a response within 10 s")
                .expect("read");
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .expect("content-length");
            if got.len() >= end + 4 + length {
                let status = text.lines().next().unwrap_or_default().to_string();
                return (status, text[end + 4..end + 4 + length].to_string());
            }
        }
    }

    const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n";

    #[tokio::test]
    async fn head_sent_one_byte_a_second_is_closed_after_the_header_timeout() {
        let server = start("slow-head", limits(16)).await;
        let (mut read, write) = TcpStream::connect(server.addr)
            .await
            .expect("connect")
            .into_split();
        let writer = trickle(write, HEALTH);
        let (elapsed, got) = read_until_closed(&mut read, HEADER * 5).await;
        writer.abort();
        assert!(
            got.is_empty(),
            "no answer to a head that never completed: {got:?}"
        );
        assert!(
            elapsed + EARLY >= HEADER,
            "closed before the header timeout: {elapsed:?}"
        );
        assert!(elapsed <= HEADER + SLACK, "closed too late: {elapsed:?}");
    }

    #[tokio::test]
    async fn silent_connection_is_closed_after_the_header_timeout() {
        let server = start("silent", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let (elapsed, _) = read_until_closed(&mut stream, HEADER * 5).await;
        assert!(
            elapsed + EARLY >= HEADER,
            "closed before the header timeout: {elapsed:?}"
        );
        assert!(elapsed <= HEADER + SLACK, "closed too late: {elapsed:?}");
    }

    #[tokio::test]
    async fn head_sent_at_once_is_answered_and_the_connection_outlives_the_header_timeout() {
        let server = start("whole-head", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(
            read_response(&mut stream).await,
            ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
        );
        tokio::time::sleep(HEADER + Duration::from_millis(300)).await;
        stream.write_all(HEALTH).await.expect("second request");
        assert_eq!(read_response(&mut stream).await.0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn curl_gets_an_answer() {
        let server = start("curl", limits(16)).await;
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", " %{http_code}"])
            .arg(format!("http://{}/health", server.addr))
            .output()
            .await
            .expect("curl must be installed (apt-get install curl)");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "ok 200");
    }

    #[tokio::test]
    async fn body_sent_one_byte_a_second_is_answered_408_after_the_body_timeout() {
        let server = start("slow-body", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n")
            .await
            .expect("head");
        let (mut read, write) = stream.into_split();
        let writer = trickle(write, &[b'x'; 100]);
        let (elapsed, got) = read_until_closed(&mut read, BODY * 5).await;
        writer.abort();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 408"), "answer: {got:?}");
        assert!(
            elapsed + EARLY >= BODY,
            "answered before the body timeout: {elapsed:?}"
        );
        assert!(elapsed <= BODY + SLACK, "answered too late: {elapsed:?}");
    }

    #[tokio::test]
    async fn body_sent_in_time_is_read_whole() {
        let server = start("whole-body", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .expect("request");
        assert_eq!(
            read_response(&mut stream).await,
            ("HTTP/1.1 200 OK".to_string(), "5".to_string())
        );
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let server = start("idle", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut stream).await.0, "HTTP/1.1 200 OK");
        let (elapsed, got) = read_until_closed(&mut stream, IDLE * 5).await;
        assert!(got.is_empty(), "nothing after the response: {got:?}");
        assert!(
            elapsed + EARLY >= IDLE,
            "closed before the idle timeout: {elapsed:?}"
        );
        assert!(elapsed <= IDLE + SLACK, "closed too late: {elapsed:?}");
    }

    #[tokio::test]
    async fn handler_slower_than_the_header_and_idle_timeouts_is_answered() {
        let server = start("wait", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /wait HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(
            read_response(&mut stream).await,
            ("HTTP/1.1 200 OK".to_string(), "waited".to_string())
        );
    }

    #[tokio::test]
    async fn streaming_response_longer_than_the_idle_timeout_is_not_cut() {
        let server = start("stream", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("the stream goes on")
                .expect("read");
            assert!(
                n > 0,
                "stream cut after {:?}: {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        assert_eq!(got.matches("part").count(), STREAM_CHUNKS, "{got:?}");
        assert!(
            started.elapsed() > IDLE + HEADER,
            "the stream must outlast both timeouts"
        );
    }

    #[tokio::test]
    async fn connection_past_the_cap_is_refused_at_once_and_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recorder = metrics::set_default_local_recorder(&recorder);
        let server = start("cap", limits(2)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            stream.write_all(HEALTH).await.expect("write");
            assert_eq!(read_response(&mut stream).await.0, "HTTP/1.1 200 OK");
            held.push(stream);
        }
        let mut third = TcpStream::connect(server.addr).await.expect("connect");
        let (elapsed, got) = read_until_closed(&mut third, HEADER * 5).await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 503"), "answer: {got:?}");
        // Not cut by the header timeout: refused as soon as it was accepted.
        assert!(elapsed < HEADER, "refused at once, took {elapsed:?}");
        let text = metrics.render();
        assert!(
            text.contains("iothub_http_connections_refused_total{listener=\"cap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("iothub_http_connections{listener=\"cap\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_closed_connection_frees_its_place_under_the_cap() {
        let server = start("cap-freed", limits(1)).await;
        let mut first = TcpStream::connect(server.addr).await.expect("connect");
        first.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut first).await.0, "HTTP/1.1 200 OK");
        drop(first);
        // The server notices the close on its next read, at once on loopback.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut second = TcpStream::connect(server.addr).await.expect("connect");
        second.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut second).await.0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn shutdown_lets_a_response_under_way_finish_and_stops_accepting() {
        let server = start("shutdown", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).await.expect("the response starts");
        assert!(n > 0);
        server.stop.send(()).expect("server running");
        let (_, rest) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(
            rest.ends_with(b"0\r\n\r\n"),
            "the stream ran to its end: {:?}",
            String::from_utf8_lossy(&rest)
        );
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("the server ends once its last connection closed")
            .expect("no panic");
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[tokio::test]
    async fn aborting_the_server_closes_its_connections() {
        let server = start("abort", limits(16)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).await.expect("the response starts");
        assert!(n > 0);
        server.task.abort();
        let (elapsed, rest) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "the stream was cut, not finished"
        );
        assert!(
            elapsed < STREAM_INTERVAL * 4,
            "closed at once, took {elapsed:?}"
        );
    }
}
