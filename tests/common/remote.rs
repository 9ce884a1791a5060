//! A small HTTP/1.1 server on 127.0.0.1 inside the test process: the "remote"
//! server of the files-by-URL tests. It answers fixed replies by path, takes
//! any PUT or POST elsewhere (200), records every request whole and counts
//! connections, so a test can prove what reached it and that nothing did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server answers on one path.
#[derive(Clone)]
pub enum Reply {
    /// Status, extra headers, body (with its Content-Length).
    Body(u16, Vec<(String, String)>, Vec<u8>),
    /// A 200 without Content-Length: `n` bytes, then the connection closes.
    Unsized(usize),
    /// A head claiming `length` bytes, then a few bytes and the close.
    Claims(u64),
    /// Answers this status as soon as the request head is in, reads none of
    /// the body and keeps the connection open for a minute.
    Early(u16),
    /// Never answers (the connection stays open for a minute).
    Stall,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    received: Vec<Received>,
    connections: usize,
}

pub struct Remote {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Remote {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.lock().unwrap().connections += 1;
                    tokio::spawn(serve(stream, Arc::clone(&shared)));
                }
            })
        };
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.shared
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), reply);
    }

    /// A 200 with `body`.
    pub fn file(&self, path: &str, body: &[u8]) {
        self.route(path, Reply::Body(200, Vec::new(), body.to_vec()));
    }

    /// A 302 to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        let headers = vec![("Location".to_string(), location.to_string())];
        self.route(path, Reply::Body(302, headers, Vec::new()));
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Mutex<Shared>>) {
    let Some((mut request, rest)) = read_head(&mut stream).await else {
        return;
    };
    let reply = shared
        .lock()
        .unwrap()
        .routes
        .get(request.path.split('?').next().unwrap_or(""))
        .cloned();
    if let Some(Reply::Stall) = reply {
        shared.lock().unwrap().received.push(request);
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        return;
    }
    if let Some(Reply::Early(status)) = reply {
        shared.lock().unwrap().received.push(request);
        let head = format!("HTTP/1.1 {status} X\r\nContent-Length: 4\r\n\r\nnope");
        let _ = stream.write_all(head.as_bytes()).await;
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        return;
    }
    request.body = match read_body(&mut stream, &request, rest).await {
        Some(body) => body,
        None => return,
    };
    let method = request.method.clone();
    shared.lock().unwrap().received.push(request);
    let reply = reply.unwrap_or_else(|| match method.as_str() {
        "PUT" | "POST" => Reply::Body(200, Vec::new(), b"stored".to_vec()),
        _ => Reply::Body(404, Vec::new(), b"no such object".to_vec()),
    });
    match reply {
        Reply::Body(status, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        }
        Reply::Unsized(n) => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            let piece = vec![b'z'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(piece.len());
                if stream.write_all(&piece[..k]).await.is_err() {
                    return;
                }
                left -= k;
            }
        }
        Reply::Early(_) | Reply::Stall => unreachable!("answered above"),
        Reply::Claims(length) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\nabc"
            );
            let _ = stream.write_all(head.as_bytes()).await;
        }
    }
    let _ = stream.shutdown().await;
}

/// A request head, and the bytes read past it; `None` when the connection
/// ends first.
async fn read_head(stream: &mut TcpStream) -> Option<(Received, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let request = Received {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    Some((request, buffer[end + 4..].to_vec()))
}

/// A Content-Length body (what the gateway sends).
async fn read_body(
    stream: &mut TcpStream,
    request: &Received,
    mut body: Vec<u8>,
) -> Option<Vec<u8>> {
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut piece = [0u8; 16 * 1024];
    while body.len() < length {
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&piece[..n]);
    }
    Some(body)
}

/// The parts of a multipart/form-data body, in order: (name, filename, bytes).
pub fn multipart(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim();
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    loop {
        let at = find(rest, delimiter.as_bytes()).expect("a delimiter");
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            return parts;
        }
        rest = &rest[2..]; // CRLF
        let head_end = find(rest, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let content = &rest[head_end + 4..];
        let next = find(content, format!("\r\n{delimiter}").as_bytes()).expect("part end");
        let field = |key: &str| {
            head.split(&format!("{key}=\""))
                .nth(1)
                .map(|v| v.split('"').next().unwrap().to_string())
        };
        let name = head
            .split("; name=\"")
            .nth(1)
            .map(|v| v.split('"').next().unwrap().to_string())
            .expect("a part name");
        parts.push((name, field("filename"), content[..next].to_vec()));
        rest = &content[next + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
