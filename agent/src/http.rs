//! A deliberately small HTTP/1.1 server for `GET /metrics` and
//! `GET /healthz`: one request per connection, nothing else.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics;
use crate::snapshot::Snapshot;

/// The latest snapshot, swapped in whole by the agent loop.
pub type Shared = Arc<RwLock<Arc<Snapshot>>>;

const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Shared, filter: Arc<metrics::Filter>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (shared, filter) = (shared.clone(), filter.clone());
        tokio::spawn(async move {
            // A client that hangs up early is its own business.
            let _ = handle(stream, shared, &filter).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: Shared, filter: &metrics::Filter) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request_line = String::from_utf8_lossy(&buf);
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let snapshot = shared.read().expect("snapshot lock is never poisoned").clone();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics::render(&snapshot, filter))
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "pincg serves /metrics and /healthz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET is supported\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
