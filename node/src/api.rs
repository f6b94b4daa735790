//! The local HTTP API of a node or the seed: `GET /status` (the status as
//! `fleetmesh-node status --json` prints it) and `GET /metrics` (Prometheus
//! text). Off unless an address is configured; read-only; one request per
//! connection, at most [`MAX_CONNECTIONS`] at once, a request head of at
//! most [`MAX_HEAD`] bytes, and [`TIMEOUT`] for the whole exchange.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head read.
pub const MAX_HEAD: usize = 8 << 10;
/// Time allowed for one request and its response.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A metric's labels: (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Where a peer is, as metrics label it (in the order of [`PeerClass::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerClass {
    /// A node of this node's site.
    SameSite,
    /// A node of another site.
    CrossSite,
    /// The seed.
    Seed,
    /// A peer that has not said where it is yet.
    Unknown,
}

impl PeerClass {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            PeerClass::SameSite => "same_site",
            PeerClass::CrossSite => "cross_site",
            PeerClass::Seed => "seed",
            PeerClass::Unknown => "unknown",
        }
    }

    /// Every class, for gauges that must show zeros too.
    pub const ALL: [PeerClass; 4] = [
        PeerClass::SameSite,
        PeerClass::CrossSite,
        PeerClass::Seed,
        PeerClass::Unknown,
    ];

    fn labels(self) -> Labels {
        vec![("peer", self.name().to_owned())]
    }
}

/// The counters and gauges a daemon keeps, and the registry they are
/// exported from (libp2p's bandwidth counters join it when the swarm is
/// built).
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    chunk_bytes_in: Family<Labels, Counter>,
    chunk_bytes_out: Family<Labels, Counter>,
    manifest_bytes_out: Family<Labels, Counter>,
    chunks_verified: Counter,
    chunks_rejected: Counter,
    peers_refused: Counter,
    peers: Family<Labels, Gauge>,
    releases: Family<Labels, Gauge>,
    update_state: Family<Labels, Gauge>,
    window_open: Family<Labels, Gauge>,
    store: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("fleetmesh")),
            chunk_bytes_in: Family::default(),
            chunk_bytes_out: Family::default(),
            manifest_bytes_out: Family::default(),
            chunks_verified: Counter::default(),
            chunks_rejected: Counter::default(),
            peers_refused: Counter::default(),
            peers: Family::default(),
            releases: Family::default(),
            update_state: Family::default(),
            window_open: Family::default(),
            store: Family::default(),
        };
        {
            let mut r = m.registry();
            r.register(
                "chunk_bytes_received",
                "Chunk bytes received (compressed, as sent), by where the peer is",
                m.chunk_bytes_in.clone(),
            );
            r.register(
                "chunk_bytes_sent",
                "Chunk bytes sent to peers, by where the peer is",
                m.chunk_bytes_out.clone(),
            );
            r.register(
                "manifest_bytes_sent",
                "Manifest bytes sent to peers (parts of encoded signed manifests), by where the peer is",
                m.manifest_bytes_out.clone(),
            );
            r.register(
                "chunks_verified",
                "Received chunks that matched their id and were stored",
                m.chunks_verified.clone(),
            );
            r.register(
                "chunks_rejected",
                "Received chunks that did not match their id (the peer was banned)",
                m.chunks_rejected.clone(),
            );
            r.register(
                "peers_refused",
                "Peers disconnected for lacking a valid membership credential",
                m.peers_refused.clone(),
            );
            r.register(
                "peers",
                "Connected peers, by where they are",
                m.peers.clone(),
            );
            r.register(
                "release_chunks",
                "Chunks of each known release: held, and in total",
                m.releases.clone(),
            );
            r.register(
                "update_state",
                "1 for the updater's current state",
                m.update_state.clone(),
            );
            r.register(
                "store",
                "The chunk store under its cap: bytes used at the last check (used_bytes), the cap (max_bytes), and releases evicted (evicted, across restarts); absent without a cap",
                m.store.clone(),
            );
            r.register(
                "window_open",
                "1 inside a maintenance window of the signed policy (or none applies to this node), 0 outside; absent without a policy",
                m.window_open.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// The registry, to add metrics to or to encode.
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunk bytes received from a peer of `class`, of which `chunks`
    /// verified and `rejected` did not.
    pub fn received(&self, class: PeerClass, bytes: u64, chunks: u64, rejected: bool) {
        self.chunk_bytes_in
            .get_or_create(&class.labels())
            .inc_by(bytes);
        self.chunks_verified.inc_by(chunks);
        if rejected {
            self.chunks_rejected.inc();
        }
    }

    /// A peer was refused as a non-member.
    pub fn peer_refused(&self) {
        self.peers_refused.inc();
    }

    /// Chunk bytes sent to a peer of `class`.
    pub fn sent(&self, class: PeerClass, bytes: u64) {
        self.chunk_bytes_out
            .get_or_create(&class.labels())
            .inc_by(bytes);
    }

    /// Manifest bytes sent to a peer of `class`.
    pub fn sent_manifest(&self, class: PeerClass, bytes: u64) {
        self.manifest_bytes_out
            .get_or_create(&class.labels())
            .inc_by(bytes);
    }

    /// Connected peers by class.
    pub fn set_peers(&self, counts: impl Fn(PeerClass) -> usize) {
        for class in PeerClass::ALL {
            let n = i64::try_from(counts(class)).unwrap_or(i64::MAX);
            self.peers.get_or_create(&class.labels()).set(n);
        }
    }

    /// Refreshes the gauges that come from the status document, just
    /// before they are exported.
    fn set_from_status(&self, status: &serde_json::Value) {
        self.releases.clear();
        for r in status["releases"].as_array().into_iter().flatten() {
            let version = r["version"].as_str().unwrap_or_default().to_owned();
            for (kind, key) in [("held", "chunks_have"), ("total", "chunks_total")] {
                let n = r[key].as_i64().unwrap_or_default();
                let labels = vec![("version", version.clone()), ("chunks", kind.to_owned())];
                self.releases.get_or_create(&labels).set(n);
            }
        }
        self.update_state.clear();
        if let Some(state) = status["update"]["state"].as_str() {
            self.update_state
                .get_or_create(&vec![("state", state.to_owned())])
                .set(1);
        }
        self.store.clear();
        for key in ["used_bytes", "max_bytes", "evicted"] {
            if let Some(n) = status["store"][key].as_i64() {
                self.store
                    .get_or_create(&vec![("value", key.to_owned())])
                    .set(n);
            }
        }
        self.window_open.clear();
        if let Some(open) = status["window_open"].as_bool() {
            let policy = status["policy_version"].to_string();
            self.window_open
                .get_or_create(&vec![("policy", policy)])
                .set(open.into());
        }
    }

    /// The Prometheus text exposition, after refreshing from `status`.
    pub fn encode(&self, status: &serde_json::Value) -> String {
        self.set_from_status(status);
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry());
        out
    }
}

/// What the API serves: the daemon's status document, built on demand (it
/// may read files), its metrics, and any further pages.
pub struct Api {
    /// Builds the status document.
    pub status: Box<dyn Fn() -> anyhow::Result<serde_json::Value> + Send + Sync>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// More read-only resources (the seed's dashboard); one at `/` replaces
    /// the default index.
    pub pages: Vec<Page>,
}

/// A further resource served at a fixed path.
pub struct Page {
    /// Its path, `/…`.
    pub path: &'static str,
    /// Its content type.
    pub kind: &'static str,
    /// Builds its body.
    pub body: Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Page {
    /// A page whose body never changes.
    pub fn fixed(path: &'static str, kind: &'static str, body: &'static str) -> Page {
        Page {
            path,
            kind,
            body: Box::new(move || Ok(body.to_owned())),
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// Binds the API's address; the error names it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the API on {addr}: {e}"))
}

/// The API serving on `runtime` until this is dropped.
#[derive(Debug)]
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` at once (a taken port is an error before the daemon
/// starts) and serves `api` there on `runtime`.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    api: Api,
) -> anyhow::Result<Running> {
    let listener = runtime.block_on(bind(addr))?;
    Ok(Running(runtime.spawn(serve(listener, api))))
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, api: Api) {
    let api = Arc::new(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, for example: do not spin.
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(TIMEOUT, exchange(stream, &api)).await {
                tracing::debug!("API request: {e}");
            }
            drop(permit);
        });
    }
}

/// One request and its response.
async fn exchange(mut stream: TcpStream, api: &Arc<Api>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() >= MAX_HEAD {
            break false;
        }
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]);
    };
    let head_only = head.starts_with(b"HEAD ");
    let (code, kind, body) = if complete {
        let api = api.clone();
        tokio::task::spawn_blocking(move || respond(&head, &api))
            .await
            .unwrap_or_else(|e| (500, TEXT, format!("{e}\n")))
    } else {
        (431, TEXT, "request head too large or incomplete\n".into())
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nContent-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await?;
    // Read what the client still sends (a head cut at MAX_HEAD) until it
    // closes, so that closing does not reset the connection before the
    // client has read the response.
    let mut sink = [0u8; 1024];
    let mut left = 64usize << 10;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// Pages may load scripts and styles from this server only, and nothing
/// may frame them.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'";
/// Plain text.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// JSON.
pub const JSON: &str = "application/json";
const PROMETHEUS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status code, content type and body for a request head.
fn respond(head: &[u8], api: &Api) -> (u16, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    let status = || (api.status)();
    if let Some(page) = api.pages.iter().find(|p| p.path == path) {
        return match (page.body)() {
            Ok(body) => (200, page.kind, body),
            Err(e) => (500, TEXT, format!("{e:#}\n")),
        };
    }
    match path {
        "/status" => match status().and_then(|s| Ok(serde_json::to_string_pretty(&s)?)) {
            Ok(body) => (200, JSON, body + "\n"),
            Err(e) => (500, TEXT, format!("{e:#}\n")),
        },
        "/metrics" => {
            // Metrics still count when the status cannot be read.
            let s = status().unwrap_or_default();
            (200, PROMETHEUS, api.metrics.encode(&s))
        }
        "/" => (
            200,
            TEXT,
            "GET /status (JSON) or /metrics (Prometheus)\n".into(),
        ),
        _ => (404, TEXT, format!("no {path}; try /status or /metrics\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_status_and_metrics_and_refuses_the_rest() {
        let metrics = Arc::new(Metrics::default());
        metrics.received(PeerClass::Seed, 1000, 3, false);
        metrics.received(PeerClass::SameSite, 500, 1, true);
        metrics.sent(PeerClass::CrossSite, 700);
        metrics.set_peers(|c| usize::from(c == PeerClass::SameSite) * 2);
        let api = Api {
            status: Box::new(|| {
                Ok(serde_json::json!({
                    "releases": [{"version": "1.2.3", "chunks_have": 5, "chunks_total": 9}],
                    "update": {"state": "idle"},
                    "window_open": false,
                    "policy_version": 7,
                }))
            }),
            metrics,
            pages: vec![Page::fixed("/", "text/html", "<p>hi</p>")],
        };
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, api));

        let status = get(addr, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(status.starts_with("HTTP/1.1 200 OK\r\n"), "{status}");
        let body = status.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["update"]["state"], "idle");

        let page = get(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(page.ends_with("\r\n\r\n<p>hi</p>"), "{page}");
        let head = get(addr, "HEAD /status HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );

        let m = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        for line in [
            "fleetmesh_chunk_bytes_received_total{peer=\"seed\"} 1000",
            "fleetmesh_chunk_bytes_received_total{peer=\"same_site\"} 500",
            "fleetmesh_chunk_bytes_sent_total{peer=\"cross_site\"} 700",
            "fleetmesh_chunks_verified_total 4",
            "fleetmesh_chunks_rejected_total 1",
            "fleetmesh_peers{peer=\"same_site\"} 2",
            "fleetmesh_peers{peer=\"seed\"} 0",
            "fleetmesh_release_chunks{version=\"1.2.3\",chunks=\"held\"} 5",
            "fleetmesh_release_chunks{version=\"1.2.3\",chunks=\"total\"} 9",
            "fleetmesh_update_state{state=\"idle\"} 1",
            "fleetmesh_window_open{policy=\"7\"} 0",
        ] {
            assert!(m.contains(line), "missing {line:?} in\n{m}");
        }

        assert!(get(addr, "POST /status HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        let huge = format!(
            "GET /status HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
        server.abort();
    }
}
