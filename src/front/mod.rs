//! The HTTP front: accepts connections and serves the API over HTTP/1.1 with
//! the limits warp's own server lacks.
//!
//! Why it exists: `warp::serve` gives hyper no timer, so hyper's header read
//! timeout never runs, and it accepts connections without bound. Anyone who
//! reached the port could hold connections open forever with half a request
//! head each; 1,100 of them from one host used up the gateway's file
//! descriptors and `/health` stopped answering for everyone. Here every
//! connection is tracked, in one of three phases:
//!
//! - `Head`: a request head is arriving (from the accept, or from the first
//!   byte after a keep-alive pause); it must be complete within `header_timeout`;
//! - `Idle`: a keep-alive connection between requests; closed after `idle_timeout`;
//! - `Busy`: a request is in flight (handler running or response being sent);
//!   its body is bounded by the rule of [`body`], the handler by its own timeouts.
//!
//! At most `max_connections` are open. When a new one comes at the limit, the
//! connection that has waited longest without a complete request (the oldest
//! `Head` or `Idle`) is closed to make room; only when every connection has a
//! request in flight is the newcomer refused, with a minimal 503. So a flood
//! of slow clients can never shut out `/health` or a user's next request.
//!
//! The clock of hyper's own `header_read_timeout` (hyper 1.x, `proto/h1/conn.rs`)
//! starts when hyper begins to read a head: on a keep-alive connection right
//! after the previous response, so it covers the idle pause and the head
//! together and cannot give them different limits, and it knows nothing of
//! other connections. The front keeps its own clocks instead.

pub mod body;
pub mod nofile;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

pub use body::{BodyRule, BodyTimeout, TimedBody};

use crate::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of the answer to a connection refused at the limit (every slot
/// has a request in flight).
const REFUSAL_BODY: &str = r#"{"detail":"too many open connections; try again shortly"}"#;
/// Refused connections answered at once at most; past that they are just closed.
const MAX_REFUSALS: usize = 64;
/// How long a refused connection may take to receive its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about the connection itself.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Accept failures are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Pause after evicting a connection for want of descriptors, so that it is
/// closed before the next accept tries again.
const EVICT_PAUSE: Duration = Duration::from_millis(5);

/// The front's limits, from `[server]` of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte of a request head (or the accept) to its end.
    pub header_timeout: Duration,
    /// Longest pause of a keep-alive connection between requests.
    pub idle_timeout: Duration,
    /// How slowly a request body may arrive.
    pub body: BodyRule,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is arriving, since the instant.
    Head(Instant),
    /// Between requests of a keep-alive connection, since the instant.
    Idle(Instant),
    /// A request is in flight.
    Busy,
}

impl Phase {
    /// Since when the connection has waited without a complete request.
    fn waiting_since(self) -> Option<Instant> {
        match self {
            Phase::Head(since) | Phase::Idle(since) => Some(since),
            Phase::Busy => None,
        }
    }

    /// When the connection is closed unless something happens first.
    fn deadline(self, limits: &Limits) -> Option<Instant> {
        match self {
            Phase::Head(since) => Some(since + limits.header_timeout),
            Phase::Idle(since) => Some(since + limits.idle_timeout),
            Phase::Busy => None,
        }
    }
}

/// The connection to close to make room: the one that has waited longest
/// without a complete request; `None` when every one has a request in flight.
fn choose_victim(connections: impl IntoIterator<Item = (u64, Phase)>) -> Option<u64> {
    connections
        .into_iter()
        .filter_map(|(id, phase)| phase.waiting_since().map(|since| (since, id)))
        .min()
        .map(|(_, id)| id)
}

/// One connection's shared state: its phase, and how its task is told of changes.
struct Tracker {
    phase: Mutex<Phase>,
    /// Some bytes ever arrived: a connection without any may be dropped at shutdown.
    received_any: AtomicBool,
    /// The phase changed: the connection task recomputes its deadline.
    changed: Notify,
    /// Closed to make room for a newcomer.
    evicted: Notify,
}

impl Tracker {
    fn new(now: Instant) -> Self {
        Self {
            phase: Mutex::new(Phase::Head(now)),
            received_any: AtomicBool::new(false),
            changed: Notify::new(),
            evicted: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap()
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap() = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: a pause between requests ends, the next head begins.
    fn bytes_arrived(&self) {
        self.received_any.store(true, Ordering::Relaxed);
        let mut phase = self.phase.lock().unwrap();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }
}

/// Every open connection, for the limit and the choice of whom to evict.
struct Table {
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    /// The last connection closed (shutdown waits for it).
    emptied: Notify,
    metrics: Arc<Metrics>,
}

impl Table {
    /// Registers a new connection, evicting a waiting one at the limit;
    /// `None` when the limit is reached and nobody can be evicted.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Tracker>)> {
        let mut connections = self.connections.lock().unwrap();
        if connections.len() >= max && !self.evict_locked(&mut connections) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(Tracker::new(Instant::now()));
        connections.insert(id, Arc::clone(&tracker));
        self.metrics
            .connections_open
            .store(connections.len() as u64, Ordering::Relaxed);
        Some((id, tracker))
    }

    /// Evicts the connection that has waited longest; false if none waits.
    fn evict_one(&self) -> bool {
        let mut connections = self.connections.lock().unwrap();
        self.evict_locked(&mut connections)
    }

    fn evict_locked(&self, connections: &mut HashMap<u64, Arc<Tracker>>) -> bool {
        let victim = choose_victim(connections.iter().map(|(id, t)| (*id, t.phase())));
        let Some(tracker) = victim.and_then(|id| connections.remove(&id)) else {
            return false;
        };
        tracker.evicted.notify_one();
        Metrics::bump(&self.metrics.connections_evicted);
        true
    }

    fn remove(&self, id: u64) {
        let mut connections = self.connections.lock().unwrap();
        connections.remove(&id);
        self.metrics
            .connections_open
            .store(connections.len() as u64, Ordering::Relaxed);
        if connections.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn is_empty(&self) -> bool {
        self.connections.lock().unwrap().is_empty()
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops
/// accepting, closes connections that wait for a request, lets requests in
/// flight finish, and returns when every connection is closed (the caller
/// bounds that wait).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<
            http::Request<TimedBody>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let table = Arc::new(Table {
        connections: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        emptied: Notify::new(),
        metrics: Arc::clone(&metrics),
    });
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warning = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or memory: make room
                // by closing the longest-waiting connection, else pause.
                if table.evict_one() {
                    tokio::time::sleep(EVICT_PAUSE).await;
                } else {
                    if last_warning.is_none_or(|at: Instant| at.elapsed() >= WARN_EVERY) {
                        tracing::warn!("accept failed: {e}");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        Metrics::bump(&metrics.connections_accepted);
        let Some((id, tracker)) = table.admit(limits.max_connections) else {
            Metrics::bump(&metrics.connections_refused);
            if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        let connection = Connection {
            id,
            tracker,
            table: Arc::clone(&table),
            limits,
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(connection.run(stream, service.clone(), stopping.clone()));
    }
    drop(listener);
    let _ = stop.send(true);
    loop {
        let emptied = table.emptied.notified();
        if table.is_empty() {
            break;
        }
        emptied.await;
    }
}

/// Accept errors that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection refused at the limit with 503, then closes it.
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread
        // data would reset the connection and could lose the answer.
        let mut sink = [0u8; 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    })
    .await;
}

/// One accepted connection and what it needs to enforce its limits.
struct Connection {
    id: u64,
    tracker: Arc<Tracker>,
    table: Arc<Table>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn run<S, B>(self, stream: TcpStream, service: S, mut stopping: watch::Receiver<bool>)
    where
        S: tower_service::Service<
                http::Request<TimedBody>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = TokioIo::new(Watched {
            inner: stream,
            tracker: Arc::clone(&self.tracker),
        });
        let front = FrontService {
            inner: service,
            tracker: Arc::clone(&self.tracker),
            rule: self.limits.body,
            metrics: Arc::clone(&self.metrics),
        };
        let conn = http1::Builder::new()
            // The front's own clocks replace hyper's header read timeout.
            .header_read_timeout(None)
            .serve_connection(io, front);
        let mut conn = std::pin::pin!(conn);
        let mut draining = *stopping.borrow();
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let phase = self.tracker.phase();
            // At shutdown hyper closes idle connections and finishes requests
            // in flight; one that never sent a byte is closed here (hyper
            // would wait for its head), a partial head gets its timeout.
            if draining && !self.tracker.received_any.load(Ordering::Relaxed) {
                break;
            }
            let deadline = phase.deadline(&self.limits);
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut conn => {
                    if let Err(e) = result {
                        tracing::debug!("connection closed: {e}");
                    }
                    break;
                }
                () = self.tracker.changed.notified() => {}
                () = self.tracker.evicted.notified() => break,
                () = expired => {
                    if self.tracker.phase() == phase {
                        let counter = match phase {
                            Phase::Head(_) => &self.metrics.header_timeouts,
                            _ => &self.metrics.idle_timeouts,
                        };
                        Metrics::bump(counter);
                        break;
                    }
                }
                changed = stopping.changed(), if !draining => {
                    // A dropped sender means the server is gone: stop too.
                    let _ = changed;
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        self.table.remove(self.id);
    }
}

/// The socket, telling the tracker when bytes arrive.
struct Watched {
    inner: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.tracker.bytes_arrived();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The API as hyper calls it: marks the connection busy for the request,
/// bounds the request body, and marks it idle when the response is done.
struct FrontService<S> {
    inner: S,
    tracker: Arc<Tracker>,
    rule: BodyRule,
    metrics: Arc<Metrics>,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for FrontService<S>
where
    S: tower_service::Service<
            http::Request<TimedBody>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
{
    type Response = http::Response<Tracked<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.tracker.set(Phase::Busy);
        let metrics = Arc::clone(&self.metrics);
        let rule = self.rule;
        let request = request.map(|body| TimedBody::new(body, rule, metrics));
        let mut inner = self.inner.clone();
        let tracker = Arc::clone(&self.tracker);
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let response = inner.call(request).await?;
            Ok(response.map(|body| Tracked {
                inner: body,
                tracker,
            }))
        })
    }
}

/// A response body; when hyper is done with it, the connection is idle.
struct Tracked<B> {
    inner: B,
    tracker: Arc<Tracker>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.tracker.set(Phase::Idle(Instant::now()));
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    use super::*;

    #[test]
    fn the_longest_waiting_connection_is_evicted() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let victim = choose_victim([
            (1, Phase::Busy),
            (2, Phase::Idle(t0 + s(5))),
            (3, Phase::Head(t0 + s(2))),
            (4, Phase::Head(t0 + s(9))),
            (5, Phase::Busy),
        ]);
        assert_eq!(victim, Some(3));
        let idle_first = choose_victim([(7, Phase::Idle(t0)), (8, Phase::Head(t0 + s(1)))]);
        assert_eq!(idle_first, Some(7));
    }

    #[test]
    fn nobody_is_evicted_when_every_connection_is_busy() {
        assert_eq!(choose_victim([(1, Phase::Busy), (2, Phase::Busy)]), None);
        assert_eq!(choose_victim([]), None);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let t0 = Instant::now();
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body: BodyRule {
                max_gap: Duration::from_secs(30),
                grace: Duration::from_secs(30),
                min_rate: 0,
            },
            max_connections: 2,
        };
        assert_eq!(
            Phase::Head(t0).deadline(&limits),
            Some(t0 + Duration::from_secs(10))
        );
        assert_eq!(
            Phase::Idle(t0).deadline(&limits),
            Some(t0 + Duration::from_secs(60))
        );
        assert_eq!(Phase::Busy.deadline(&limits), None);
    }

    #[test]
    fn a_new_connection_at_the_limit_evicts_a_waiting_one_or_is_refused() {
        let table = Table {
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            emptied: Notify::new(),
            metrics: Arc::new(Metrics::default()),
        };
        let (first, first_tracker) = table.admit(2).unwrap();
        let (_, second_tracker) = table.admit(2).unwrap();
        second_tracker.set(Phase::Busy);
        // Full: the waiting one (first) makes room.
        let (_, third_tracker) = table.admit(2).unwrap();
        assert!(!table.connections.lock().unwrap().contains_key(&first));
        assert_eq!(table.metrics.connections_evicted.load(Ordering::Relaxed), 1);
        // The evicted connection's task is told (the permit waits for it).
        let notified = first_tracker.evicted.notified();
        futures_util::pin_mut!(notified);
        assert!(futures_util::FutureExt::now_or_never(notified).is_some());
        // Full and everyone busy: refused.
        third_tracker.set(Phase::Busy);
        assert!(table.admit(2).is_none());
    }

    /// The accept loop over loopback with a one-line warp filter: a request
    /// at the limit gets in, the oldest half-open connection is closed.
    #[tokio::test]
    async fn a_newcomer_at_the_limit_is_served_in_place_of_the_oldest_waiting() {
        use tokio::io::AsyncReadExt;
        use warp::Filter;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            body: BodyRule {
                max_gap: Duration::from_secs(5),
                grace: Duration::from_secs(5),
                min_rate: 0,
            },
            max_connections: 2,
        };
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = warp::service(warp::any().map(|| "ok"));
        let server = tokio::spawn(serve(
            listener,
            service,
            limits,
            Arc::clone(&metrics),
            async {
                let _ = stopped.await;
            },
        ));
        let mut half_open = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            half_open.push(stream);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut newcomer = TcpStream::connect(addr).await.unwrap();
        newcomer
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        newcomer.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        // The oldest was closed for it; the other still waits.
        let mut buf = [0u8; 16];
        let oldest = tokio::time::timeout(Duration::from_secs(1), half_open[0].read(&mut buf));
        assert_eq!(oldest.await.unwrap().unwrap_or(0), 0);
        let other = tokio::time::timeout(Duration::from_millis(200), half_open[1].read(&mut buf));
        assert!(
            other.await.is_err(),
            "the younger connection was closed too"
        );
        assert_eq!(metrics.connections_evicted.load(Ordering::Relaxed), 1);
        drop(half_open);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the server stops once its connections are gone")
            .unwrap();
    }

    /// The API behind the front: a stalled body is a JSON 408 (the real
    /// routes, no worker needed: the body is read before any session).
    #[tokio::test]
    async fn a_stalled_body_is_answered_408_by_the_api() {
        use tokio::io::AsyncReadExt;

        let (state, _dir) = crate::api::test_state();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            body: BodyRule {
                max_gap: Duration::from_secs(5),
                grace: Duration::from_millis(300),
                min_rate: 1000,
            },
            max_connections: 8,
        };
        let metrics = Arc::clone(&state.metrics);
        let service = warp::service(crate::api::routes(Arc::clone(&state)));
        let server = tokio::spawn(serve(
            listener,
            service,
            limits,
            Arc::clone(&metrics),
            std::future::pending(),
        ));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        stream
            .write_all(
                b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Auth-Token: test-token-0123456789\r\n\
                  Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
            )
            .await
            .unwrap();
        let mut answer = String::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut answer));
        read.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains(r#"{"detail":"the request body arrived too slowly"#),
            "{answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(metrics.body_timeouts.load(Ordering::Relaxed), 1);
        server.abort();
    }
}
