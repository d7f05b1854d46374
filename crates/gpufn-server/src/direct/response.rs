//! The direct gateway's response side: an instance's response head read and rewritten for the
//! caller under [`crate::forward`]'s rules, and its body relayed as it is, framing included, up to
//! exactly where it ends.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::ChunkedEnd;
use super::{KEEP_CAPACITY, parse_length, put_header};
use crate::forward::{self, Served, Value};

/// Largest response head taken from an instance (hyper's client allows about as much).
const MAX_RESPONSE_HEAD: usize = 400 * 1024;
/// Most header lines in an instance's response head.
const MAX_RESPONSE_HEADERS: usize = 100;
/// Bytes read at a time when relaying a response body: large bodies (images, video) move in few
/// system calls. The buffer comes from [`RELAY_BUFFERS`] and goes back there after the body, so
/// idle connections stay small and a large response costs no fresh (page-faulting) allocation.
const RELAY_CHUNK: usize = 256 * 1024;
/// Relay buffers kept for reuse across connections (at most this many, 256 KiB each).
const RELAY_BUFFERS_KEPT: usize = 32;
static RELAY_BUFFERS: std::sync::Mutex<Vec<BytesMut>> = std::sync::Mutex::new(Vec::new());

/// A relay buffer from the shared free list, or a new one.
fn take_relay_buffer() -> BytesMut {
    let reused = RELAY_BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    reused.unwrap_or_else(|| BytesMut::with_capacity(RELAY_CHUNK))
}

/// After a response: a large relay buffer in `up` goes back to the shared free list, and `up` is
/// a small one again (idle connections stay small).
pub(super) fn shrink(up: &mut BytesMut) {
    if up.capacity() > KEEP_CAPACITY {
        give_relay_buffer(std::mem::replace(up, BytesMut::with_capacity(16 * 1024)));
    }
}

/// Gives a relay buffer back to the shared free list.
fn give_relay_buffer(mut b: BytesMut) {
    b.clear();
    if b.capacity() < RELAY_CHUNK {
        return;
    }
    let mut kept = RELAY_BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if kept.len() < RELAY_BUFFERS_KEPT {
        kept.push(b);
    }
}
/// Bodies up to this size are copied behind the head and leave in one write.
const COPY_BEHIND_HEAD: usize = 16 * 1024;
/// How an instance's response body is delimited.
#[derive(Debug)]
pub(super) enum Framing {
    /// No body (204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, relayed as it is.
    Chunked(ChunkedEnd),
    /// Until the instance closes the connection.
    Close,
}

pub(super) struct ResponseInfo {
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The instance keeps the connection open after this response.
    pub(super) upstream_keep_alive: bool,
    /// The caller's connection closes after this response.
    pub(super) close_client: bool,
}

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpError {
    /// Connecting failed or timed out (the message names the address).
    #[error(transparent)]
    Connect(crate::upstream::UpstreamError),
    #[error("connection closed before a response")]
    Unanswered,
    #[error("an idle connection was closed by the instance as the request was sent")]
    ClosedIdle,
    #[error("connection closed in the middle of the response head")]
    Truncated,
    #[error("invalid response head: {0}")]
    Parse(&'static str),
    #[error("response head over {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("{0}")]
    Io(std::io::Error),
}

/// Reads the instance's response head into `up` (skipping interim 1xx responses) and writes the
/// caller's response head into `out`. On return `up` holds only the bytes after the head.
pub(super) async fn read_response_head(
    stream: &mut TcpStream,
    up: &mut BytesMut,
    out: &mut Vec<u8>,
    rid: &[u8],
    served: Served<'_>,
    close: bool,
) -> Result<ResponseInfo, UpError> {
    let mut got_any = false;
    loop {
        if !up.is_empty() {
            got_any = true;
            match parse_response(up, out, rid, served, close)? {
                Parsed::Head(info, len) => {
                    up.advance(len);
                    return Ok(info);
                }
                Parsed::Interim(len) => {
                    up.advance(len);
                    continue;
                }
                Parsed::Partial if up.len() >= MAX_RESPONSE_HEAD => {
                    return Err(UpError::HeadTooLarge);
                }
                Parsed::Partial => {}
            }
        }
        if up.capacity() - up.len() < 2048 {
            up.reserve(16 * 1024);
        }
        match stream.read_buf(up).await {
            Ok(0) if got_any => return Err(UpError::Truncated),
            Ok(0) => return Err(UpError::Unanswered),
            Ok(_) => {}
            Err(e)
                if !got_any
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(UpError::Unanswered);
            }
            Err(e) => return Err(UpError::Io(e)),
        }
    }
}

pub(super) enum Parsed {
    Partial,
    /// A 1xx interim response of this many bytes (skipped).
    Interim(usize),
    /// The final response head and its length.
    Head(ResponseInfo, usize),
}

/// Parses an instance's response head and writes the caller's response head into `out`.
pub(super) fn parse_response(
    up: &[u8],
    out: &mut Vec<u8>,
    rid: &[u8],
    served: Served<'_>,
    close_requested: bool,
) -> Result<Parsed, UpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(up) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(UpError::Parse(parse_error(e))),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(UpError::Parse("no status line"));
    };
    if code == 101 {
        return Err(UpError::Parse(
            "101 Switching Protocols to a request that asked for none",
        ));
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Interim(len));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut conn_close = version == 0;
    let mut listed: [&str; 8] = [""; 8];
    let mut n_listed = 0;
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            let v = parse_length(h.value).ok_or(UpError::Parse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(UpError::Parse("conflicting Content-Length values"));
            }
            length = Some(v);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides (RFC 9112 §6.3): chunked, or read until close.
            encoded = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if version == 0 {
                        conn_close = false;
                    }
                } else if !t.is_empty() {
                    let t = std::str::from_utf8(t).map_err(|_| UpError::Parse("bad Connection"))?;
                    if n_listed == listed.len() {
                        return Err(UpError::Parse("too many Connection tokens"));
                    }
                    listed[n_listed] = t;
                    n_listed += 1;
                }
            }
        }
    }
    let framing = if code == 204 || code == 304 {
        Framing::Empty
    } else if encoded {
        if chunked {
            Framing::Chunked(ChunkedEnd::default())
        } else {
            Framing::Close
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    let close_client = close_requested || matches!(framing, Framing::Close);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let listed = &listed[..n_listed];
    for h in resp.headers.iter() {
        if !forward::response_header_forwarded(h.name)
            || listed.iter().any(|l| h.name.eq_ignore_ascii_case(l))
            || (encoded && h.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        put_header(out, h.name.as_bytes(), h.value);
    }
    if matches!(framing, Framing::Chunked(_)) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    forward::add_response_headers(out, Some(served), Value::Bytes(rid));
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Head(
        ResponseInfo {
            status: code,
            upstream_keep_alive: !conn_close && !matches!(framing, Framing::Close),
            framing,
            close_client,
        },
        len,
    ))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

pub(super) struct Relayed {
    /// The caller got the whole response and its connection may serve the next request.
    pub(super) client_ok: bool,
    /// The instance's response was read exactly to its end.
    pub(super) upstream_reusable: bool,
}

/// Sends the head in `out` and relays the body: first what is in `up`, then from `stream`.
///
/// Past what the first read brought, each read from the instance also watches the caller: a caller
/// that went away ends the relay (the slot is freed and its busy time stops, the instance's
/// connection is closed), and so does an instance that sends nothing for `idle` (the function's
/// `request_timeout_s`, which bounded the head too).
pub(super) async fn relay(
    tcp: &mut TcpStream,
    stream: &mut TcpStream,
    up: &mut BytesMut,
    out: &mut Vec<u8>,
    framing: Framing,
    idle: std::time::Duration,
) -> Relayed {
    const BROKEN: Relayed = Relayed {
        client_ok: false,
        upstream_reusable: false,
    };
    // What of `up` belongs to the body, and whether the body ends there.
    let (mut left, mut chunks) = match framing {
        Framing::Empty => (Some(0), None),
        Framing::Length(n) => (Some(n), None),
        Framing::Chunked(scan) => (None, Some(scan)),
        Framing::Close => (None, None),
    };
    let mut first = true;
    let mut reusable = true;
    // Armed at the first read past the head's (no clock read for a response that came whole).
    let mut stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let (take, done) = match (&mut left, &mut chunks) {
            (Some(l), _) => {
                let take = (*l).min(up.len() as u64) as usize;
                *l -= take as u64;
                (take, *l == 0)
            }
            (None, Some(scan)) => match scan.feed(up) {
                Ok(Some(n)) => (n, true),
                Ok(None) => (up.len(), false),
                Err(e) => {
                    tracing::debug!("instance response: {e}");
                    return BROKEN;
                }
            },
            (None, None) => (up.len(), false),
        };
        if done && take < up.len() {
            // Bytes after the response: the instance is confused; do not reuse the connection.
            reusable = false;
        }
        let write = if first && take <= COPY_BEHIND_HEAD {
            out.extend_from_slice(&up[..take]);
            tcp.write_all(out).await
        } else if first {
            match tcp.write_all(out).await {
                Ok(()) => tcp.write_all(&up[..take]).await,
                Err(e) => Err(e),
            }
        } else if take > 0 {
            tcp.write_all(&up[..take]).await
        } else {
            Ok(())
        };
        first = false;
        if write.is_err() {
            return BROKEN;
        }
        if done {
            return Relayed {
                client_ok: true,
                upstream_reusable: reusable,
            };
        }
        up.clear();
        if up.capacity() < RELAY_CHUNK {
            // The body goes on past the first read: relay it through a large buffer (given
            // back by the caller).
            *up = take_relay_buffer();
        }
        let deadline = tokio::time::Instant::now() + idle;
        let sleep = match stall.as_mut() {
            Some(s) => {
                s.as_mut().reset(deadline);
                s
            }
            None => stall.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let read = tokio::select! {
            biased;
            r = stream.read_buf(up) => r,
            () = caller_gone(tcp) => {
                tracing::debug!("caller went away during the response: relay ended");
                return BROKEN;
            }
            () = sleep.as_mut() => {
                tracing::debug!("instance sent nothing for {idle:?} during the response: relay ended");
                return BROKEN;
            }
        };
        match read {
            Ok(0) if left.is_none() && chunks.is_none() => {
                // A body delimited by the close: it is complete.
                return Relayed {
                    client_ok: false,
                    upstream_reusable: false,
                };
            }
            Ok(0) | Err(_) => return BROKEN,
            Ok(_) => {}
        }
    }
}

/// Resolves when the caller's connection is closed (EOF or an error); never, once it has sent
/// bytes (a pipelined request: it is still there).
async fn caller_gone(tcp: &TcpStream) {
    let mut probe = [0u8; 1];
    match tcp.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
