//! ZeroMQ's wire protocol (ZMTP 3.0, NULL security) for a client with one
//! peer on a unix socket, with every length the peer announces checked
//! before anything is allocated.
//!
//! Everything a kernel sends comes from the user's code, which holds the
//! kernel's sockets: a frame may announce 2^50 bytes, a message may have a
//! million parts, a command may be garbage. So this reader keeps at most what
//! the caller allows for one message (`keep`), reads and throws away what the
//! caller allows past that (`discard`), and calls anything else a
//! [`WireError::Violation`]: the worker is then destroyed. Its state lives in
//! the struct, so a `recv` cancelled by `select!` loses nothing.
//!
//! Why our own framing rather than a ZeroMQ library: the `zeromq` crate's
//! decoder allocates whatever a frame announces, with no hook to bound it;
//! libzmq's `ZMQ_MAXMSGSIZE` bounds one frame but neither the number of parts
//! nor "drop this message but keep the connection", and brings a C++ build
//! and a blocking API. The gateway needs only DEALER and SUB towards a single
//! kernel socket, which is a few hundred lines of ZMTP that unit tests cover.

use std::path::Path;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Parts one message may have (a Jupyter message has 6 plus routing ids and buffers).
pub const MAX_PARTS: usize = 64;
/// Largest command (the peer's READY carries its socket type and metadata).
const MAX_COMMAND: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// Why a connection can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The connection closed or failed: the kernel process is gone.
    Closed(String),
    /// The peer broke the protocol or a bound: the worker misbehaves.
    Violation(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Closed(why) => write!(f, "the kernel's connection closed: {why}"),
            WireError::Violation(why) => write!(f, "the worker broke the protocol: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

fn violation(why: impl Into<String>) -> WireError {
    WireError::Violation(why.into())
}

/// The ZeroMQ socket type we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Dealer,
    Sub,
}

impl SocketType {
    fn name(self) -> &'static [u8] {
        match self {
            SocketType::Dealer => b"DEALER",
            SocketType::Sub => b"SUB",
        }
    }

    /// Socket types a kernel may use opposite us.
    fn accepts(self, peer: &[u8]) -> bool {
        match self {
            SocketType::Dealer => matches!(peer, b"ROUTER" | b"REP" | b"DEALER"),
            SocketType::Sub => matches!(peer, b"PUB" | b"XPUB"),
        }
    }
}

/// What one `recv` produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole message within `keep`: its parts.
    Message(Vec<Bytes>),
    /// A message larger than `keep`, read and thrown away: its size.
    Discarded(u64),
}

impl Incoming {
    /// Bytes the message had on the wire (payload only).
    pub fn size(&self) -> u64 {
        match self {
            Incoming::Message(parts) => parts.iter().map(|p| p.len() as u64).sum(),
            Incoming::Discarded(size) => *size,
        }
    }
}

/// Connects to the ZeroMQ socket at `path` and completes the ZMTP handshake.
/// The caller bounds the time (the peer may never answer).
pub async fn connect(
    path: impl AsRef<Path>,
    kind: SocketType,
) -> Result<(Reader, Writer), WireError> {
    let path = path.as_ref();
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| WireError::Closed(format!("connecting to {}: {e}", path.display())))?;
    let (read, write) = stream.into_split();
    let mut reader = Reader::new(read);
    let mut writer = Writer { write };
    writer.write_raw(&greeting()).await?;
    reader.read_greeting().await?;
    writer.write_raw(&ready_command(kind.name())).await?;
    reader.read_ready(kind).await?;
    if kind == SocketType::Sub {
        // ZMTP 3.0 subscribes with a message: 0x01 and the topic prefix (all).
        writer.send(&[Bytes::from_static(&[1])]).await?;
    }
    Ok((reader, writer))
}

/// A greeting: signature, version 3.0, mechanism NULL (also the fake kernel's).
pub(crate) fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xFF;
    g[8] = 0x01;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// The NULL mechanism's READY command naming `socket_type` (e.g. `b"DEALER"`).
pub(crate) fn ready_command(socket_type: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(5);
    body.extend_from_slice(b"READY");
    let name = b"Socket-Type";
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type);
    let mut frame = vec![FLAG_COMMAND, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// One multipart message as frames on the wire.
pub(crate) fn encode(parts: &[Bytes]) -> BytesMut {
    let total: usize = parts.iter().map(|p| p.len() + 9).sum();
    let mut out = BytesMut::with_capacity(total);
    for (i, part) in parts.iter().enumerate() {
        let more = if i + 1 < parts.len() { FLAG_MORE } else { 0 };
        if part.len() <= 255 {
            out.put_u8(more);
            out.put_u8(part.len() as u8);
        } else {
            out.put_u8(more | FLAG_LONG);
            out.put_u64(part.len() as u64);
        }
        out.put_slice(part);
    }
    out
}

/// The sending half.
pub struct Writer {
    write: OwnedWriteHalf,
}

impl Writer {
    /// Sends one multipart message.
    pub async fn send(&mut self, parts: &[Bytes]) -> Result<(), WireError> {
        self.write_raw(&encode(parts)).await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.write
            .write_all(bytes)
            .await
            .map_err(|e| WireError::Closed(format!("writing: {e}")))
    }
}

/// The receiving half, with the state of a partly read message.
pub struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    /// Parts of the message being read (while it stays within `keep`).
    parts: Vec<Bytes>,
    /// Parts seen of the message being read, kept or not.
    part_count: usize,
    /// Payload bytes of the message being read so far.
    size: u64,
    /// The message outgrew `keep`: its parts are thrown away as they come.
    discarding: bool,
    /// A frame being skipped: bytes of it still to come, and whether more parts follow.
    skipping: Option<(u64, bool)>,
    /// A frame or command whose header is read and whose body is awaited.
    body: Option<Body>,
}

/// The body a header announced (at most `keep` or `MAX_COMMAND` bytes).
#[derive(Clone, Copy)]
enum Body {
    Part { len: usize, more: bool },
    Command { len: usize },
}

impl Reader {
    fn new(read: OwnedReadHalf) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(8 * 1024),
            parts: Vec::new(),
            part_count: 0,
            size: 0,
            discarding: false,
            skipping: None,
            body: None,
        }
    }

    /// Reads more bytes into the buffer, room for at least `want` more bytes
    /// (capped: a large frame arrives over several reads).
    async fn fill(&mut self, want: usize) -> Result<(), WireError> {
        self.buf.reserve(want.clamp(1, READ_CHUNK));
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) => Err(WireError::Closed("the peer closed the connection".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(WireError::Closed(format!("reading: {e}"))),
        }
    }

    async fn read_exact_buf(&mut self, n: usize) -> Result<Bytes, WireError> {
        while self.buf.len() < n {
            let want = n - self.buf.len();
            self.fill(want).await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    async fn read_greeting(&mut self) -> Result<(), WireError> {
        let g = self.read_exact_buf(64).await?;
        if g[0] != 0xFF || g[9] & 1 != 1 {
            return Err(violation("the peer's greeting has no ZMTP signature"));
        }
        if g[10] < 3 {
            return Err(violation(format!("the peer speaks ZMTP {}.x", g[10])));
        }
        let mechanism = &g[12..32];
        if &mechanism[..4] != b"NULL" || mechanism[4..].iter().any(|&b| b != 0) {
            return Err(violation(
                "the peer asks for a security mechanism other than NULL",
            ));
        }
        Ok(())
    }

    /// Reads the peer's READY command and checks its socket type.
    async fn read_ready(&mut self, kind: SocketType) -> Result<(), WireError> {
        let (flags, len) = self.read_frame_header().await?;
        if flags & FLAG_COMMAND == 0 {
            return Err(violation(
                "the peer sent a message before its READY command",
            ));
        }
        if len > MAX_COMMAND as u64 {
            return Err(violation(format!(
                "the peer's handshake command has {len} bytes"
            )));
        }
        let body = self.read_exact_buf(len as usize).await?;
        let (name, mut props) = split_command(&body)?;
        if name == b"ERROR" {
            return Err(violation("the peer refused the handshake (ERROR)"));
        }
        if name != b"READY" {
            return Err(violation("the peer's first command is not READY"));
        }
        let mut socket_type = None;
        while !props.is_empty() {
            let (key, value, rest) = split_property(props)?;
            if key.eq_ignore_ascii_case(b"Socket-Type") {
                socket_type = Some(value);
            }
            props = rest;
        }
        match socket_type {
            Some(peer) if kind.accepts(peer) => Ok(()),
            Some(peer) => Err(violation(format!(
                "the peer is a {} socket",
                String::from_utf8_lossy(peer)
            ))),
            None => Err(violation("the peer's READY has no Socket-Type")),
        }
    }

    /// Reads one frame header: flags and announced length. Reserved bits must be clear.
    async fn read_frame_header(&mut self) -> Result<(u8, u64), WireError> {
        loop {
            if let Some(header) = parse_frame_header(&self.buf)? {
                let (flags, len, consumed) = header;
                self.buf.advance(consumed);
                return Ok((flags, len));
            }
            self.fill(9).await?;
        }
    }

    /// Receives the next message. At most `keep` payload bytes of it are held;
    /// a larger message is read on and thrown away as long as it stays within
    /// `keep + discard` bytes, and is a violation past that. Commands between
    /// messages (a ZMTP 3.1 PING) are skipped; any other command is a violation.
    pub async fn recv(&mut self, keep: usize, discard: u64) -> Result<Incoming, WireError> {
        let ceiling = keep as u64 + discard;
        loop {
            if let Some((left, more)) = self.skipping {
                if left > 0 {
                    if self.buf.is_empty() {
                        self.fill(left.min(READ_CHUNK as u64) as usize).await?;
                    }
                    let n = left.min(self.buf.len() as u64);
                    self.buf.advance(n as usize);
                    self.skipping = Some((left - n, more));
                    continue;
                }
                self.skipping = None;
                if !more {
                    return Ok(self.finish(true));
                }
                continue;
            }
            if let Some(body) = self.body {
                let len = match body {
                    Body::Part { len, .. } | Body::Command { len } => len,
                };
                while self.buf.len() < len {
                    let want = len - self.buf.len();
                    self.fill(want).await?;
                }
                let bytes = self.buf.split_to(len).freeze();
                self.body = None;
                match body {
                    Body::Command { .. } => check_command(&bytes)?,
                    Body::Part { more, .. } => {
                        self.parts.push(bytes);
                        if !more {
                            return Ok(self.finish(false));
                        }
                    }
                }
                continue;
            }
            let (flags, len) = self.read_frame_header().await?;
            if flags & FLAG_COMMAND != 0 {
                if flags & FLAG_MORE != 0 || self.part_count > 0 {
                    return Err(violation("a command inside a multipart message"));
                }
                if len > MAX_COMMAND as u64 {
                    return Err(violation(format!("a command of {len} bytes")));
                }
                self.body = Some(Body::Command { len: len as usize });
                continue;
            }
            let more = flags & FLAG_MORE != 0;
            self.part_count += 1;
            if self.part_count > MAX_PARTS {
                return Err(violation(format!(
                    "a message has more than {MAX_PARTS} parts"
                )));
            }
            self.size = self.size.saturating_add(len);
            if self.size > ceiling {
                return Err(violation(format!(
                    "a message of at least {} bytes, more than the {ceiling} it may still send",
                    self.size
                )));
            }
            if !self.discarding && self.size > keep as u64 {
                self.discarding = true;
                self.parts.clear();
            }
            if self.discarding {
                self.skipping = Some((len, more));
                continue;
            }
            self.body = Some(Body::Part {
                len: len as usize,
                more,
            });
        }
    }

    fn finish(&mut self, discarded: bool) -> Incoming {
        let size = self.size;
        let parts = std::mem::take(&mut self.parts);
        self.part_count = 0;
        self.size = 0;
        self.discarding = false;
        if discarded {
            Incoming::Discarded(size)
        } else {
            Incoming::Message(parts)
        }
    }
}

/// A command between messages: a ZMTP 3.1 PING or PONG is harmless, any
/// other is a violation.
fn check_command(body: &[u8]) -> Result<(), WireError> {
    let (name, _) = split_command(body)?;
    if name == b"PING" || name == b"PONG" {
        return Ok(());
    }
    Err(violation(format!(
        "an unexpected command {:?}",
        String::from_utf8_lossy(name)
    )))
}

/// Parses a frame header at the start of `buf`: (flags, length, header bytes),
/// or None when more bytes are needed.
fn parse_frame_header(buf: &[u8]) -> Result<Option<(u8, u64, usize)>, WireError> {
    let Some(&flags) = buf.first() else {
        return Ok(None);
    };
    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
        return Err(violation(format!(
            "a frame with reserved flag bits set ({flags:#04x})"
        )));
    }
    if flags & FLAG_LONG == 0 {
        return Ok(buf.get(1).map(|&len| (flags, u64::from(len), 2)));
    }
    if buf.len() < 9 {
        return Ok(None);
    }
    let len = u64::from_be_bytes(buf[1..9].try_into().expect("eight bytes"));
    Ok(Some((flags, len, 9)))
}

/// A command body: its name and the rest.
fn split_command(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let n = *body.first().ok_or_else(|| violation("an empty command"))? as usize;
    if body.len() < 1 + n {
        return Err(violation("a command name longer than its frame"));
    }
    Ok((&body[1..1 + n], &body[1 + n..]))
}

/// One metadata property of a command: name, value, and the properties after it.
type Property<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits the first metadata property off `props`.
fn split_property(props: &[u8]) -> Result<Property<'_>, WireError> {
    let bad = || violation("a malformed property in the peer's READY");
    let n = *props.first().ok_or_else(bad)? as usize;
    let name = props.get(1..1 + n).ok_or_else(bad)?;
    let len_bytes = props.get(1 + n..5 + n).ok_or_else(bad)?;
    let len = u32::from_be_bytes(len_bytes.try_into().expect("four bytes")) as usize;
    let value = props.get(5 + n..5 + n + len).ok_or_else(bad)?;
    Ok((name, value, &props[5 + n + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    /// A fake kernel socket: accepts one connection, does the handshake as a
    /// ROUTER, and hands the raw stream to the test.
    async fn pair(kind: SocketType) -> (Reader, Writer, UnixStream) {
        let dir = std::env::temp_dir().join(format!("zmtp-{}", crate::random::hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut g = greeting();
            g[11] = 1; // a ZMTP 3.1 peer, as libzmq 4.3 is
            s.write_all(&g).await.unwrap();
            let mut theirs = [0u8; 64];
            s.read_exact(&mut theirs).await.unwrap();
            let peer_type: &[u8] = if kind == SocketType::Sub {
                b"PUB"
            } else {
                b"ROUTER"
            };
            s.write_all(&ready_command(peer_type)).await.unwrap();
            let mut hdr = [0u8; 2];
            s.read_exact(&mut hdr).await.unwrap();
            let mut their_ready = vec![0u8; hdr[1] as usize];
            s.read_exact(&mut their_ready).await.unwrap();
            assert_eq!(&their_ready[1..6], b"READY");
            s
        });
        let (reader, writer) = connect(&path, kind).await.unwrap();
        let stream = peer.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (reader, writer, stream)
    }

    fn frame(more: bool, payload: &[u8]) -> Vec<u8> {
        let flag = if more { FLAG_MORE } else { 0 };
        let mut out = if payload.len() <= 255 {
            vec![flag, payload.len() as u8]
        } else {
            let mut v = vec![flag | FLAG_LONG];
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            v
        };
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn messages_within_keep_arrive_whole() {
        let (mut reader, mut writer, mut peer) = pair(SocketType::Dealer).await;
        let mut bytes = frame(true, b"a");
        bytes.extend(frame(false, &[7u8; 300]));
        peer.write_all(&bytes).await.unwrap();
        let got = reader.recv(1024, 0).await.unwrap();
        assert_eq!(
            got,
            Incoming::Message(vec![Bytes::from_static(b"a"), Bytes::from(vec![7u8; 300])])
        );
        writer
            .send(&[Bytes::from_static(b"x"), Bytes::from(vec![1u8; 256])])
            .await
            .unwrap();
        let mut back = [0u8; 3 + 9 + 256];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back[..3], &[FLAG_MORE, 1, b'x']);
        assert_eq!(back[3], FLAG_LONG);
    }

    #[tokio::test]
    async fn an_announced_length_past_the_bound_is_refused_before_reading() {
        let (mut reader, _writer, mut peer) = pair(SocketType::Dealer).await;
        let mut bytes = vec![FLAG_LONG];
        bytes.extend_from_slice(&(1u64 << 50).to_be_bytes());
        peer.write_all(&bytes).await.unwrap();
        let err = reader.recv(1 << 20, 1 << 20).await.unwrap_err();
        assert!(matches!(err, WireError::Violation(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_message_past_keep_is_discarded_and_the_next_one_kept() {
        let (mut reader, _writer, mut peer) = pair(SocketType::Sub).await;
        let mut bytes = frame(true, &[1u8; 100]);
        bytes.extend(frame(false, &[2u8; 5000]));
        bytes.extend(frame(false, b"next"));
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(
            reader.recv(1000, 10_000).await.unwrap(),
            Incoming::Discarded(5100)
        );
        assert_eq!(
            reader.recv(1000, 10_000).await.unwrap(),
            Incoming::Message(vec![Bytes::from_static(b"next")])
        );
    }

    #[tokio::test]
    async fn too_many_parts_reserved_bits_and_commands_are_violations() {
        let (mut reader, _w, mut peer) = pair(SocketType::Dealer).await;
        let bytes: Vec<u8> = (0..=MAX_PARTS).flat_map(|_| frame(true, b"")).collect();
        peer.write_all(&bytes).await.unwrap();
        assert!(matches!(
            reader.recv(1 << 20, 0).await,
            Err(WireError::Violation(_))
        ));

        let (mut reader, _w, mut peer) = pair(SocketType::Dealer).await;
        peer.write_all(&[0x80, 1, 0]).await.unwrap();
        assert!(matches!(
            reader.recv(1 << 20, 0).await,
            Err(WireError::Violation(_))
        ));

        let (mut reader, _w, mut peer) = pair(SocketType::Dealer).await;
        let mut cmd = vec![FLAG_COMMAND, 6, 5];
        cmd.extend_from_slice(b"HELLO");
        peer.write_all(&cmd).await.unwrap();
        assert!(matches!(
            reader.recv(1 << 20, 0).await,
            Err(WireError::Violation(_))
        ));
    }

    #[tokio::test]
    async fn a_recv_cancelled_mid_frame_resumes_where_it_stopped() {
        let (mut reader, _w, mut peer) = pair(SocketType::Dealer).await;
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let bytes = frame(false, &payload);
        for keep in [200_000, 50] {
            // Half the frame, then a recv that is cancelled while waiting for the rest.
            peer.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                reader.recv(keep, 1 << 20),
            )
            .await;
            assert!(waited.is_err(), "the frame is not complete yet");
            peer.write_all(&bytes[bytes.len() / 2..]).await.unwrap();
            peer.write_all(&frame(false, b"after")).await.unwrap();
            let expected = if keep > payload.len() {
                Incoming::Message(vec![Bytes::from(payload.clone())])
            } else {
                Incoming::Discarded(payload.len() as u64)
            };
            assert_eq!(reader.recv(keep, 1 << 20).await.unwrap(), expected);
            assert_eq!(
                reader.recv(keep, 1 << 20).await.unwrap(),
                Incoming::Message(vec![Bytes::from_static(b"after")])
            );
        }
    }

    #[tokio::test]
    async fn a_closed_peer_is_closed_not_a_violation() {
        let (mut reader, _w, peer) = pair(SocketType::Dealer).await;
        drop(peer);
        assert!(matches!(
            reader.recv(10, 0).await,
            Err(WireError::Closed(_))
        ));
    }

    #[test]
    fn frame_headers_parse_incrementally() {
        assert_eq!(parse_frame_header(&[]).unwrap(), None);
        assert_eq!(parse_frame_header(&[1]).unwrap(), None);
        assert_eq!(parse_frame_header(&[1, 5]).unwrap(), Some((1, 5, 2)));
        assert_eq!(parse_frame_header(&[2, 0, 0]).unwrap(), None);
        assert!(parse_frame_header(&[0x08, 0]).is_err());
    }
}
