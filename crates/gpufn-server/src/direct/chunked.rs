//! Where a chunked body ends, found while its bytes pass through unchanged.
//!
//! The direct gateway forwards an instance's chunked response to the caller as it is (framing
//! included): it never decodes the data, it only has to know where the body stops, so that the
//! connection can be reused for the next request. The rules are hyper's: CRLF line ends, hex sizes
//! of at most 16 digits, chunk extensions skipped, trailer lines passed through.

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkedError {
    /// A byte that cannot be where it is.
    #[error("invalid chunked encoding: unexpected byte {byte:#04x} {at}")]
    Unexpected {
        /// The byte.
        byte: u8,
        /// Where in the framing.
        at: &'static str,
    },
    /// A chunk size over 16 hex digits.
    #[error("invalid chunked encoding: chunk size too large")]
    SizeTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits (`digits` so far).
    Size { digits: u8 },
    /// After the size: whitespace or an extension, up to CR.
    Ext,
    /// CR of the size line seen; LF next.
    SizeLf,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// After the data: CR next.
    DataCr,
    /// After the data's CR: LF next.
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// A trailer line's CR seen; LF next.
    TrailerLf,
    /// The final CR seen; LF next.
    EndLf,
    /// The body ended.
    Done,
}

/// Scans a chunked body incrementally.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedEnd {
    state: State,
    size: u64,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
        }
    }
}

impl ChunkedEnd {
    /// Feeds the next bytes of the body. `Some(n)`: the body ends after the first `n` bytes of
    /// `buf` (what follows is not part of it); `None`: all of `buf` is body and more is to come.
    pub(crate) fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, ChunkedError> {
        if self.state == State::Done {
            return Ok(Some(0));
        }
        let mut i = 0;
        while i < buf.len() {
            if let State::Data(left) = self.state {
                // Skip the data in one step.
                let take = left.min((buf.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkedError::SizeTooLarge);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(unexpected(b, "in a chunk size")),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b';' | b' ' | b'\t' => State::Ext,
                        _ => return Err(unexpected(b, "after a chunk size")),
                    },
                },
                State::Ext => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(unexpected(b, "in a chunk extension")),
                    _ => State::Ext,
                },
                State::SizeLf => match b {
                    b'\n' if self.size == 0 => State::TrailerStart,
                    b'\n' => State::Data(std::mem::take(&mut self.size)),
                    _ => return Err(unexpected(b, "after a size line's CR")),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(unexpected(b, "after a chunk's data")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { digits: 0 },
                    _ => return Err(unexpected(b, "after a chunk's CR")),
                },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(unexpected(b, "at a trailer line")),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(unexpected(b, "in a trailer line")),
                    _ => State::TrailerLine,
                },
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(unexpected(b, "after a trailer line's CR")),
                },
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(Some(i));
                    }
                    _ => return Err(unexpected(b, "after the last CR")),
                },
                // `Data` is handled above and `Done` at entry: neither gets here.
                State::Data(_) | State::Done => return Ok(Some(i - 1)),
            };
        }
        Ok(None)
    }

    /// True once the end was found.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unexpected(byte: u8, at: &'static str) -> ChunkedError {
    ChunkedError::Unexpected { byte, at }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkedError> {
        ChunkedEnd::default().feed(body)
    }

    #[test]
    fn finds_the_end_and_leaves_what_follows() {
        let body = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(end_of(body), Ok(Some(15)));
        assert_eq!(end_of(b"0\r\n\r\n"), Ok(Some(5)));
        // Extensions, upper-case hex, trailers.
        let body = b"A;name=\"v\"\r\n0123456789\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        assert_eq!(end_of(b"5 ;e\r\nhello\r\n"), Ok(None));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
            b"0\r\n\n",
            b"0\r\nx-a: 1\n",
            b"0\r\n\r\r",
        ] {
            assert!(end_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            end_of(b"11111111111111111\r\n"),
            Err(ChunkedError::SizeTooLarge)
        );
        // 16 digits still parse.
        assert_eq!(end_of(b"0000000000000001\r\nx"), Ok(None));
    }

    fn encode(chunks: &[Vec<u8>], trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        /// However the bytes are cut into reads, the end is found exactly where the body ends,
        /// and nothing that follows is taken for body.
        #[test]
        fn the_end_is_found_across_any_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            trailers in prop::collection::vec("[a-z]{1,8}: [a-z0-9]{0,8}", 0..3),
            after in prop::collection::vec(any::<u8>(), 0..20),
            cuts in prop::collection::vec(0usize..2000, 0..8),
        ) {
            let body = encode(&chunks, &trailers);
            let mut stream = body.clone();
            stream.extend_from_slice(&after);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut scan = ChunkedEnd::default();
            let mut found = None;
            for w in cuts.windows(2) {
                if let Some(n) = scan.feed(&stream[w[0]..w[1]]).expect("well-formed") {
                    found = Some(w[0] + n);
                    break;
                }
            }
            prop_assert_eq!(found, Some(body.len()));
            prop_assert!(scan.is_done());
        }
    }
}
