//! HTTP/1.1 as the gateway speaks it on both of its sides: how a message's body is delimited,
//! and the decoder of that framing, shared by the inference listener (request bodies) and the
//! forwarding client (engine responses).

pub mod server;

mod request;
mod response;
#[cfg(test)]
mod server_tests;

use std::io;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::{Buf, Bytes, BytesMut};

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `content-length`: this many bytes are left.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Neither, on a response: the body ends when the sender closes the connection.
    Close,
}

/// What the buffered bytes yield.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// Where the decoder is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many data bytes are left.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailer lines up to the blank line.
    Trailers,
    Close,
    Done,
}

/// Read buffer growth: what hyper starts with too.
pub const READ_SIZE: usize = 8 * 1024;
/// A read buffer grows by `READ_SIZE` when less than this is free for the next read.
pub const MIN_ROOM: usize = 2 * 1024;

/// Room in `buffer` for the next read from a connection.
pub fn make_room(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < MIN_ROOM {
        buffer.reserve(READ_SIZE);
    }
}

/// A line in the chunked framing (size line, trailer) longer than this is refused.
pub const MAX_LINE: usize = 8 * 1024;

/// Decodes one body's framing from a buffer that its owner fills from the connection: what is
/// decoded is taken from the front of the buffer, in place, without copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// The next piece of the body that `buffer` holds, or what it lacks.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(0) => return Ok(self.end()),
                State::Length(left) => return Ok(self.data(buffer, left, State::Length)),
                State::Close if buffer.is_empty() => return Ok(Decoded::NeedMore),
                State::Close => return Ok(Decoded::Data(buffer.split().freeze())),
                State::ChunkData(left) => return Ok(self.data(buffer, left, State::ChunkData)),
                State::ChunkSize => {
                    let Some(size) = line(buffer, chunk_size)? else { return Ok(Decoded::NeedMore) };
                    self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                }
                State::ChunkEnd => {
                    let Some(empty) = line(buffer, |line| Ok(line.is_empty()))? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if !empty {
                        return Err(invalid("a chunk is longer than its size line says"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => match line(buffer, |line| Ok(line.is_empty()))? {
                    None => return Ok(Decoded::NeedMore),
                    Some(true) => return Ok(self.end()),
                    Some(false) => {}
                },
            }
        }
    }

    /// The connection ended: the body is complete if it was delimited by the close.
    pub fn at_close(&mut self) -> io::Result<()> {
        if self.state == State::Close {
            self.state = State::Done;
            return Ok(());
        }
        self.state = State::Done;
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed mid-body"))
    }

    /// No more of the body will be read (an error, or the connection was given up).
    pub fn stop(&mut self) {
        self.state = State::Done;
    }

    /// The body has been read to its end (or stopped).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// How many bytes are left, when the framing says.
    pub fn exact_left(&self) -> Option<u64> {
        match self.state {
            State::Length(left) => Some(left),
            State::Done => Some(0),
            _ => None,
        }
    }

    fn end(&mut self) -> Decoded {
        self.state = State::Done;
        Decoded::End
    }

    /// Up to `left` buffered bytes of data; the state continues with what is then left.
    fn data(&mut self, buffer: &mut BytesMut, left: u64, next: fn(u64) -> State) -> Decoded {
        if buffer.is_empty() {
            return Decoded::NeedMore;
        }
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
        let rest = left - take as u64;
        self.state = match next(rest) {
            State::ChunkData(0) => State::ChunkEnd,
            state => state,
        };
        Decoded::Data(buffer.split_to(take).freeze())
    }
}

/// `read` applied to the next CRLF- (or LF-) terminated line at the front of `buffer`, without
/// its ending, once it is all buffered; the line is then consumed.
fn line<T>(buffer: &mut BytesMut, read: impl FnOnce(&[u8]) -> io::Result<T>) -> io::Result<Option<T>> {
    let Some(at) = memchr::memchr(b'\n', buffer) else {
        return if buffer.len() > MAX_LINE { Err(invalid("a chunk line is too long")) } else { Ok(None) };
    };
    let line = &buffer[..at];
    let value = read(line.strip_suffix(b"\r").unwrap_or(line))?;
    buffer.advance(at + 1);
    Ok(Some(value))
}

/// The size on a chunk-size line (hex, before any `;extension`).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("a chunk size is missing or too large"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid("a chunk size is not hex"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("a chunk size is not hex"))
}

pub fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Where a parsed head's header names and values lie, as offsets into the bytes httparse
/// parsed. It is what is kept of httparse's borrowed view when the head is then taken from its
/// buffer: the head is parsed once, and each header value becomes a view of the taken bytes.
pub struct Spans {
    /// Name start, name end, value start, value end (sized to the head: no zeroed array).
    at: Vec<[usize; 4]>,
}

impl Spans {
    /// The spans of `headers`, which httparse parsed from `parsed`.
    pub fn of(parsed: &[u8], headers: &[httparse::Header<'_>]) -> Spans {
        let at = headers
            .iter()
            .map(|header| {
                let (name, value) = (span(parsed, header.name.as_bytes()), span(parsed, header.value));
                [name.start, name.end, value.start, value.end]
            })
            .collect();
        Spans { at }
    }

    /// The headers, read from `head`: the parsed bytes, taken from the buffer and frozen. An
    /// invalid header is refused with its name.
    pub fn header_map(&self, head: &Bytes) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::with_capacity(self.at.len());
        for &[name_start, name_end, value_start, value_end] in &self.at {
            let name = &head[name_start..name_end];
            let refused = || String::from_utf8_lossy(name).into_owned();
            let value =
                HeaderValue::from_maybe_shared(head.slice(value_start..value_end)).map_err(|_| refused())?;
            headers.append(HeaderName::from_bytes(name).map_err(|_| refused())?, value);
        }
        Ok(headers)
    }
}

/// Where `part`, a slice of `parsed`, lies in it.
pub fn span(parsed: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(parsed.as_ptr() as usize).min(parsed.len());
    start..(start + part.len()).min(parsed.len())
}

/// Whether a comma-separated header value (`connection`, `transfer-encoding`) has `token`.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `transfer-encoding` value ends with `chunked`, the coding that delimits the body.
pub fn ends_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `wire` fed in pieces of `step` bytes; the data frames joined, or the error.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), String> {
        let mut out = Vec::new();
        let mut decoder = Decoder::new(framing);
        let mut buffer = BytesMut::new();
        for piece in std::iter::once(&[][..]).chain(wire.chunks(step.max(1))) {
            buffer.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buffer).map_err(|e| e.to_string())? {
                    Decoded::Data(data) => out.extend_from_slice(&data),
                    Decoded::End => return Ok((out, true)),
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_split() {
        let wire =
            b"9\r\ndata: a\n\n\r\n1A;ext=1\r\ndata: {\"x\":\"0123456789\"}\n\n\r\n0\r\ntrailer: x\r\n\r\n";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (data, ended) = decode_in_steps(Framing::Chunked, wire, step).expect("decodes");
            assert_eq!(data, b"data: a\n\ndata: {\"x\":\"0123456789\"}\n\n", "step {step}");
            assert!(ended, "step {step}");
        }
        let (data, ended) = decode_in_steps(Framing::Chunked, b"3\nabc\n0\n\n", 1).expect("bare LF");
        assert_eq!((data.as_slice(), ended), (&b"abc"[..], true));
        let (data, ended) = decode_in_steps(Framing::Chunked, b"5\r\nab", 1).expect("partial");
        assert_eq!((data.as_slice(), ended), (&b"ab"[..], false));
    }

    #[test]
    fn length_and_close_framing() {
        let (data, ended) = decode_in_steps(Framing::Length(5), b"hello", 2).expect("decodes");
        assert_eq!((data.as_slice(), ended), (&b"hello"[..], true));
        let (data, ended) = decode_in_steps(Framing::Length(0), b"", 1).expect("empty");
        assert_eq!((data.as_slice(), ended), (&b""[..], true));
        let (data, ended) = decode_in_steps(Framing::Close, b"until close", 4).expect("decodes");
        assert_eq!((data.as_slice(), ended), (&b"until close"[..], false));
        let mut close = Decoder::new(Framing::Close);
        assert!(close.at_close().is_ok(), "a close-delimited body ends at the close");
        let mut length = Decoder::new(Framing::Length(3));
        assert!(length.at_close().is_err(), "a body short of its length is an error");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [&b"zz\r\nab\r\n"[..], b"3\r\nabcdef\r\n", b"\r\n", b"10000000000000000\r\n"] {
            assert!(
                decode_in_steps(Framing::Chunked, wire, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode_in_steps(Framing::Chunked, &long, 64).is_err());
    }

    #[test]
    fn spans_make_header_views_of_the_taken_head() {
        let mut buffer = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nbody");
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Response::new(&mut slots);
        let length = match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(length)) => length,
            other => panic!("a complete head: {other:?}"),
        };
        let spans = Spans::of(&buffer, parsed.headers);
        let head = buffer.split_to(length).freeze();
        let headers = spans.header_map(&head).expect("valid headers");
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-a"], "1");
        assert_eq!(&buffer[..], b"body");
    }

    #[test]
    fn header_tokens() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert!(ends_chunked(b"gzip, Chunked"));
        assert!(!ends_chunked(b"chunked, gzip"));
    }
}
