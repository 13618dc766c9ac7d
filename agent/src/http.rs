//! `GET /metrics` and `GET /healthz`, served by hyper (HTTP/1.1, one
//! request per connection) on the agent's tokio runtime.
//!
//! Nothing a client does costs more than [`ConnectionLimits`] allow: the request head
//! must arrive within `header_timeout`, a connection lives at most
//! `deadline` (a client that stops reading its response is cut off), its
//! buffer is 8 KiB, and at most `max_connections` are open. At the cap a
//! new connection evicts the oldest one that has not sent a request yet
//! (idle or slowloris), so a scraper that sends its request at once is
//! always served. The metrics text, and its gzip form, are rendered once
//! per snapshot, on the first scrape that asks for them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::health::Health;
use crate::metrics;
use crate::snapshot::Snapshot;

const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// hyper's smallest read buffer: the most a request head may take.
const MAX_REQUEST: usize = 8192;
/// Pause after a failed accept (EMFILE): the error would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the round thread publishes: the latest snapshot and how rounds go.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    health: Mutex<Health>,
}

impl Shared {
    /// Start from the first round's snapshot; rounds come every `interval`.
    pub fn new(first: Snapshot, interval: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(first)),
            health: Mutex::new(Health::new(interval, Instant::now())),
        })
    }

    /// A round succeeded: serve its snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("snapshot lock is never poisoned") = Arc::new(snapshot);
        self.health().succeeded(Instant::now());
    }

    /// A round failed (`error` is its chain, one line); the previous
    /// snapshot stays served.
    pub fn round_failed(&self, error: String) {
        self.health().failed(Instant::now(), error);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock is never poisoned").clone()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().expect("health lock is never poisoned")
    }
}

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub deadline: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    /// 512 connections at 8 KiB stay far below the unit's 256M MemoryMax
    /// and, with the agent's BPF fds, below systemd's 1024-file soft limit.
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// The server's state: what it serves, the rendered metrics, the open
/// connections.
pub struct Endpoint {
    shared: Arc<Shared>,
    filter: metrics::Filter,
    limits: ConnectionLimits,
    rendered: Mutex<Option<Arc<Rendered>>>,
    connections: Mutex<Connections>,
}

/// The metrics of one snapshot, kept with it (the key: `Arc::ptr_eq`, and
/// the snapshot cannot be freed and its address reused while held here).
struct Rendered {
    snapshot: Arc<Snapshot>,
    text: Bytes,
    gzip: OnceLock<Bytes>,
}

#[derive(Default)]
struct Connections {
    /// Connections accepted so far: the next one's number.
    accepted: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    /// Dropped to evict the connection.
    _evict: oneshot::Sender<()>,
    /// Set once the connection's request head has arrived.
    requested: Arc<AtomicBool>,
}

impl Connections {
    /// Make room for one more: drop the oldest connection that has not
    /// sent a request, else the oldest.
    fn evict(&mut self) {
        let oldest_silent = self.open.iter().find(|(_, o)| !o.requested.load(Ordering::Relaxed)).map(|(id, _)| *id);
        let victim = oldest_silent.or_else(|| self.open.keys().next().copied());
        if let Some(id) = victim {
            self.open.remove(&id);
        }
    }
}

impl Endpoint {
    pub fn new(shared: Arc<Shared>, filter: metrics::Filter, limits: ConnectionLimits) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            shared,
            filter,
            limits,
            rendered: Mutex::new(None),
            connections: Mutex::new(Connections::default()),
        })
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().expect("connections lock is never poisoned")
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => self.metrics(accepts_gzip(request.headers())),
            (&Method::GET, "/healthz") => {
                let (healthy, line) = self.shared.health().verdict(Instant::now());
                let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                plain(status, line)
            }
            (&Method::GET, _) => plain(StatusCode::NOT_FOUND, "pincg serves /metrics and /healthz\n".into()),
            _ => {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n".into());
                response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
                response
            }
        }
    }

    fn metrics(&self, gzip: bool) -> Response<Full<Bytes>> {
        let rendered = self.rendered(self.shared.snapshot());
        let body =
            if gzip { rendered.gzip.get_or_init(|| compress(&rendered.text)).clone() } else { rendered.text.clone() };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }

    /// The metrics of `snapshot`, rendered now if it is new.
    fn rendered(&self, snapshot: Arc<Snapshot>) -> Arc<Rendered> {
        let mut cached = self.rendered.lock().expect("render cache lock is never poisoned");
        match cached.as_ref() {
            Some(r) if Arc::ptr_eq(&r.snapshot, &snapshot) => r.clone(),
            _ => {
                let text = Bytes::from(metrics::render(&snapshot, &self.filter));
                let r = Arc::new(Rendered { snapshot, text, gzip: OnceLock::new() });
                *cached = Some(r.clone());
                r
            }
        }
    }
}

pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::logging::report(tracing::Level::WARN, format!("metrics endpoint: accepting a connection: {e}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (evict, evicted) = oneshot::channel();
        let requested = Arc::new(AtomicBool::new(false));
        let id = {
            let mut connections = endpoint.connections();
            if connections.open.len() >= endpoint.limits.max_connections {
                connections.evict();
            }
            let id = connections.accepted;
            connections.accepted += 1;
            connections.open.insert(id, Open { _evict: evict, requested: requested.clone() });
            id
        };
        tokio::spawn(connection(endpoint.clone(), id, stream, evicted, requested));
    }
}

/// Serve one connection until it is done, times out or is evicted.
async fn connection(
    endpoint: Arc<Endpoint>,
    id: u64,
    stream: TcpStream,
    evicted: oneshot::Receiver<()>,
    requested: Arc<AtomicBool>,
) {
    let _open = Registered { endpoint: endpoint.clone(), id };
    let service = service_fn(|request: Request<Incoming>| {
        requested.store(true, Ordering::Relaxed);
        let response = endpoint.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(endpoint.limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .serve_connection(TokioIo::new(stream), service);
    // A client that hangs up, times out or sends garbage is its own business.
    tokio::select! {
        result = tokio::time::timeout(endpoint.limits.deadline, served) => match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("metrics endpoint: connection {id}: {e}"),
            Err(_) => tracing::debug!("metrics endpoint: connection {id}: cut off after {:?}", endpoint.limits.deadline),
        },
        _ = evicted => tracing::debug!("metrics endpoint: connection {id}: evicted at the connection cap"),
    }
}

/// Removes a connection from the open ones when its task ends.
struct Registered {
    endpoint: Arc<Endpoint>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.endpoint.connections().open.remove(&self.id);
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Whether the client takes gzip (RFC 9110 12.5.3): `gzip` (or `x-gzip`)
/// with a non-zero q, or else `*` with a non-zero q.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()) {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

fn compress(text: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 8), flate2::Compression::default());
    encoder.write_all(text).expect("writing to memory cannot fail");
    Bytes::from(encoder.finish().expect("writing to memory cannot fail"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::SocketAddr;

    use pincg_cgroup_spec::Source;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinSet;

    use super::*;
    use crate::snapshot::CgroupRow;

    /// `cgroups` VMs with 1, 2, … MiB pinned through VFIO.
    fn snapshot(cgroups: u64) -> Snapshot {
        let row = |i: u64| CgroupRow {
            id: i + 1,
            ..CgroupRow::sample(&format!("machine.slice/vm-{i}.scope"), Source::Vfio, (i + 1) << 20)
        };
        Snapshot { rows: (0..cgroups).map(row).collect(), ..Snapshot::default() }
    }

    async fn start(snapshot: Snapshot, limits: ConnectionLimits) -> (SocketAddr, Arc<Endpoint>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint =
            Endpoint::new(Shared::new(snapshot, Duration::from_millis(100)), metrics::Filter::default(), limits);
        tokio::spawn(serve(listener, endpoint.clone()));
        (addr, endpoint)
    }

    /// What the endpoint serves for its current snapshot, rendered here.
    fn expected(endpoint: &Endpoint) -> String {
        metrics::render(&endpoint.shared.snapshot(), &metrics::Filter::default())
    }

    /// The one sample not taken from the snapshot: the agent's resident
    /// memory, read when the text is rendered.
    fn same_metrics(served: &[u8], expected: &str) -> bool {
        let samples = |text: &str| -> Vec<String> {
            text.lines().filter(|l| !l.starts_with("pincg_agent_resident_bytes ")).map(str::to_string).collect()
        };
        let served = String::from_utf8_lossy(served);
        served.lines().filter(|l| l.starts_with("pincg_agent_resident_bytes ")).count() == 1
            && served.ends_with('\n')
            && samples(&served) == samples(expected)
    }

    /// Send `request` as is; the response's head and body, read to the end.
    async fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        (String::from_utf8(response[..split].to_vec()).unwrap(), response[split + 4..].to_vec())
    }

    async fn get(addr: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: pincg\r\n{headers}\r\n")).await
    }

    /// Wait until the endpoint has accepted `accepted` connections and
    /// holds `open` of them.
    async fn settle(endpoint: &Endpoint, accepted: u64, open: usize) {
        let started = Instant::now();
        loop {
            let now = {
                let c = endpoint.connections();
                (c.accepted, c.open.len())
            };
            if now == (accepted, open) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "(accepted, open) = {now:?}, waiting for {:?}",
                (accepted, open)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the server closed `stream` (EOF or reset) within `within`.
    async fn closed(mut stream: TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("the server sent bytes to a client that asked nothing"),
            Err(_) => false,
        }
    }

    /// A slowloris: the head of a request, one byte per `pace`, never ending.
    fn trickle(mut stream: TcpStream, pace: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for byte in b"GET /metrics HTTP/1.1\r\nHost: pincg\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(pace).await;
            }
        })
    }

    #[tokio::test]
    async fn a_scrape_is_answered_exactly_while_hundreds_of_idle_and_slow_connections_are_held() {
        let (addr, endpoint) = start(snapshot(200), ConnectionLimits::default()).await;
        let text = expected(&endpoint);
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut slow = Vec::new();
        for _ in 0..100 {
            slow.push(trickle(TcpStream::connect(addr).await.unwrap(), Duration::from_secs(1)));
        }
        settle(&endpoint, 400, 400).await;
        // Every slowloris is a couple of bytes into its head.
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let started = Instant::now();
        let (head, body) = get(addr, "/metrics", "Connection: close\r\n").await;
        let took = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{head}");
        assert!(same_metrics(&body, &text), "the body is exactly the rendered snapshot");
        assert!(took < Duration::from_secs(1), "the scrape took {took:?} among 400 held connections");

        // As Prometheus asks: gzip, no Connection header.
        let (head, body) = get(addr, "/metrics", "Accept-Encoding: gzip\r\n").await;
        assert!(
            head.contains("\r\ncontent-encoding: gzip\r\n") && head.contains("\r\nvary: Accept-Encoding\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "one request per connection: {head}");
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut unzipped).unwrap();
        assert!(same_metrics(unzipped.as_bytes(), &text));

        let (head, body) = get(addr, "/healthz", "").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(String::from_utf8(body).unwrap().starts_with("ok: last successful round "));

        // The 400 are still held: the cap (512) was not reached, and none
        // has hit its header timeout (5 s) yet.
        settle(&endpoint, 403, 400).await;
        assert!(slow.iter().all(|s| !s.is_finished()), "every slowloris is still writing");
    }

    #[tokio::test]
    async fn idle_slow_and_stalled_clients_are_cut_off() {
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(4),
            max_connections: 512,
        };
        // About 12 MB of text: more than loopback buffers hold for a reader that never reads.
        let (addr, endpoint) = start(snapshot(10_000), limits).await;
        let text_len = expected(&endpoint).len();
        assert!(text_len > 8 << 20, "{text_len} bytes");

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stalled = socket.connect(addr).await.unwrap();
        stalled.write_all(b"GET /metrics HTTP/1.1\r\nHost: pincg\r\n\r\n").await.unwrap();
        settle(&endpoint, 1, 1).await;
        let started = Instant::now();

        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut slow = Vec::new();
        for _ in 0..50 {
            slow.push(trickle(TcpStream::connect(addr).await.unwrap(), Duration::from_millis(100)));
        }
        // The 100 heads are cut off at 500 ms; the stalled response is not.
        settle(&endpoint, 101, 1).await;
        let cut = started.elapsed();
        assert!(cut < Duration::from_secs(2), "idle and slow heads were cut off after {cut:?}");
        for stream in idle {
            assert!(closed(stream, Duration::from_millis(100)).await);
        }
        for s in slow {
            tokio::time::timeout(Duration::from_secs(1), s).await.expect("a slowloris stops once cut off").unwrap();
        }
        assert_eq!(endpoint.connections().open.len(), 1, "the stalled reader is within its deadline");
        settle(&endpoint, 101, 0).await;
        let gone = started.elapsed();
        assert!(gone < Duration::from_secs(5), "the stalled reader was cut off after {gone:?} (deadline 4 s)");
        let mut received = Vec::new();
        let _ = stalled.read_to_end(&mut received).await;
        assert!(received.len() < text_len, "{} of {text_len} bytes reached the reader that stalled", received.len());
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_evicts_the_oldest_that_sent_nothing() {
        let limits = ConnectionLimits { max_connections: 64, ..ConnectionLimits::default() };
        let (addr, endpoint) = start(snapshot(3), limits).await;
        let text = expected(&endpoint);
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        settle(&endpoint, 300, 64).await;
        let (head, body) = get(addr, "/metrics", "").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(same_metrics(&body, &text));
        // The scrape evicted the 237th idle connection; the newest 63 remain.
        settle(&endpoint, 301, 63).await;
        let survivors = idle.split_off(237);
        for stream in idle {
            assert!(closed(stream, Duration::from_secs(1)).await, "an evicted connection is closed");
        }
        let mut waits = JoinSet::new();
        for stream in survivors {
            waits.spawn(closed(stream, Duration::from_millis(200)));
        }
        let still_open = waits.join_all().await.iter().filter(|closed| !**closed).count();
        assert_eq!(still_open, 63);
    }

    #[tokio::test]
    async fn healthz_answers_503_once_rounds_stopped_and_other_paths_are_refused() {
        let (addr, endpoint) = start(snapshot(1), ConnectionLimits::default()).await;
        let minute_ago = Instant::now().checked_sub(Duration::from_secs(60)).expect("the clock is past a minute");
        *endpoint.shared.health() = Health::new(Duration::from_millis(100), minute_ago);
        // HTTP/1.0, as the tests' other helper and some probes send it.
        let (head, body) = exchange(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.0 503 Service Unavailable\r\n"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with("rounds stopped: none finished for 60.0 s (unhealthy after 5.0 s "), "{body}");
        endpoint.shared.publish(snapshot(1));
        let (head, _) = get(addr, "/healthz", "").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "a successful round makes it healthy: {head}");

        let (head, body) = get(addr, "/nothing?x=1", "").await;
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert_eq!(body, b"pincg serves /metrics and /healthz\n");
        let (head, _) = exchange(addr, "POST /metrics HTTP/1.1\r\nHost: pincg\r\nContent-Length: 0\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && head.contains("\r\nallow: GET\r\n"),
            "{head}"
        );
    }

    #[test]
    fn metrics_are_rendered_once_per_snapshot_and_gzipped_once_when_asked() {
        let shared = Shared::new(snapshot(2), Duration::from_millis(100));
        let endpoint = Endpoint::new(shared.clone(), metrics::Filter::default(), ConnectionLimits::default());
        let first = endpoint.rendered(shared.snapshot());
        assert!(Arc::ptr_eq(&first, &endpoint.rendered(shared.snapshot())), "the same snapshot is not rendered again");
        assert!(first.gzip.get().is_none(), "gzip only when a client asks");
        endpoint.metrics(true);
        let gzip = first.gzip.get().expect("gzipped for the first client that asked").clone();
        endpoint.metrics(true);
        assert_eq!(first.gzip.get().unwrap().as_ptr(), gzip.as_ptr(), "and kept");
        shared.publish(snapshot(3));
        let second = endpoint.rendered(shared.snapshot());
        assert!(!Arc::ptr_eq(&first, &second), "a new snapshot is rendered anew");
        assert!(same_metrics(&second.text, &metrics::render(&snapshot(3), &metrics::Filter::default())));
    }

    #[test]
    fn gzip_only_when_the_client_accepts_it() {
        let accepts = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            accepts_gzip(&headers)
        };
        assert!(!accepts(&[]));
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["deflate, GZIP;q=0.5"]));
        assert!(accepts(&["identity", "x-gzip"]));
        assert!(accepts(&["*"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["gzip; q=0.000, *"]), "an explicit refusal wins over *");
        assert!(!accepts(&["br, deflate"]));
        assert!(!accepts(&["*;q=0"]));
    }
}
