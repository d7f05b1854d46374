//! Entry points for the fuzz targets (`fuzz/`) and their corpus regression tests: the direct
//! gateway's parsers on arbitrary bytes. Each must return, never panic, whatever the input; the
//! chunked scanner must also find the same end whether its input comes whole or in two pieces.

use bytes::BytesMut;

use super::chunked::ChunkedEnd;
use super::response::{Parsed, parse_response};
use super::{connection_tokens, head_complete, parse_length, split_path};
use crate::forward::Served;

/// An instance's response head, parsed and re-written for a caller.
pub fn response_head(bytes: &[u8]) {
    static INSTANCE: http::HeaderValue = http::HeaderValue::from_static("f-1");
    let served = Served {
        instance: &INSTANCE,
        cold: false,
    };
    let mut out = Vec::new();
    for close in [false, true] {
        if let Ok(Parsed::Head(_, len) | Parsed::Interim(len)) =
            parse_response(bytes, &mut out, b"rid", served, close)
        {
            assert!(len <= bytes.len(), "a head longer than its input");
        }
    }
}

/// A chunked body's end, found whole and in two pieces split at the first byte's value.
pub fn chunked(bytes: &[u8]) {
    let whole = ChunkedEnd::default().feed(bytes).ok();
    let at = bytes
        .first()
        .map_or(0, |b| usize::from(*b))
        .min(bytes.len());
    let mut scan = ChunkedEnd::default();
    let split = match scan.feed(&bytes[..at]) {
        Ok(Some(n)) => Some(Some(n)),
        Ok(None) => scan.feed(&bytes[at..]).ok().map(|r| r.map(|n| n + at)),
        Err(_) => None,
    };
    if let (Some(w), Some(s)) = (whole, split) {
        assert_eq!(w, s, "the end depends on how the body was cut");
    }
}

/// The request-side helpers of the direct path on a request head.
pub fn request_head(bytes: &[u8]) {
    let mut scanned = 0;
    let _ = head_complete(bytes, &mut scanned);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(bytes) {
        if let Some(path) = req.path {
            let _ = split_path(path);
        }
        for h in req.headers.iter() {
            let _ = parse_length(h.value);
            let _ = connection_tokens(h.value);
        }
    }
    let _ = BytesMut::from(bytes);
}
