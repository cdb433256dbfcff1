//! HTTP/1.1 framing as the forwarding client reads the neurons' answers: how a message's body
//! is delimited, and its decoder, as strict as RFC 9112 (and hyper) are: CRLF line endings,
//! hex digits only in a chunk size, bounded chunk extensions and trailers.

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
const READ_SIZE: usize = 8 * 1024;
/// A read buffer grows by `READ_SIZE` when less than this is free for the next read.
const MIN_ROOM: usize = 2 * 1024;

/// Room in `buffer` for the next read from a connection.
pub fn make_room(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < MIN_ROOM {
        buffer.reserve(READ_SIZE);
    }
}

/// A line in the chunked framing (size line, trailer) longer than this is refused.
const MAX_LINE: usize = 8 * 1024;
/// The most bytes of chunk extensions in one body, all chunks together (hyper's bound too).
const MAX_EXTENSIONS: usize = 16 * 1024;
/// The most bytes of trailer fields after the last chunk (hyper's bound too).
const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer fields after the last chunk.
const MAX_TRAILER_FIELDS: usize = 100;

/// Decodes one body's framing from a buffer that its owner fills from the connection: what is
/// decoded is taken from the front of the buffer, in place, without copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// Chunk-extension bytes and trailer bytes and fields read so far, against their bounds.
    extensions: usize,
    trailers: usize,
    trailer_fields: usize,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state, extensions: 0, trailers: 0, trailer_fields: 0 }
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
                    let Some((size, extension)) = line(buffer, chunk_size)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.extensions += extension;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(invalid("the chunk extensions are over 16 KiB"));
                    }
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
                State::Trailers => match line(buffer, |line| Ok(line.len()))? {
                    None => return Ok(Decoded::NeedMore),
                    Some(0) => return Ok(self.end()),
                    Some(length) => {
                        self.trailers += length + 2;
                        self.trailer_fields += 1;
                        if self.trailers > MAX_TRAILERS || self.trailer_fields > MAX_TRAILER_FIELDS {
                            return Err(invalid("the trailers are over 16 KiB or 100 fields"));
                        }
                    }
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

/// `read` applied to the next CRLF-terminated line at the front of `buffer`, without its
/// ending, once it is all buffered; the line is then consumed. A line ended by a bare LF is
/// refused: another reader could end it elsewhere.
fn line<T>(buffer: &mut BytesMut, read: impl FnOnce(&[u8]) -> io::Result<T>) -> io::Result<Option<T>> {
    let Some(at) = memchr::memchr(b'\n', buffer) else {
        return if buffer.len() > MAX_LINE { Err(invalid("a chunk line is too long")) } else { Ok(None) };
    };
    let Some(line) = buffer[..at].strip_suffix(b"\r") else {
        return Err(invalid("a chunk line ends in a bare LF"));
    };
    let value = read(line)?;
    buffer.advance(at + 1);
    Ok(Some(value))
}

/// The size on a chunk-size line and the length of its extensions: hex digits (leading zeros
/// allowed), then optional whitespace and `;extensions` (RFC 9112 §7.1).
fn chunk_size(line: &[u8]) -> io::Result<(u64, usize)> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid("a chunk size is not hex digits"));
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = (digit as char).to_digit(16).map_or(0, u64::from);
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(value))
            .ok_or_else(|| invalid("a chunk size is too large"))?;
    }
    let rest = &line[digits..];
    let spaces = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let extension = &rest[spaces..];
    if !extension.is_empty() && !extension.starts_with(b";") {
        return Err(invalid("a chunk size is not hex digits"));
    }
    Ok((size, extension.len()))
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

/// What a message's `transfer-encoding` lines, read as one list, say: `None` without any,
/// else whether `chunked`, the coding that delimits the body, is the last.
pub fn chunked_last(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(axum::http::header::TRANSFER_ENCODING).iter().next_back()?;
    let coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
    Some(coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The value of a message's `content-length` lines: digits only, and the same on every line;
/// `Ok(None)` without any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(axum::http::header::CONTENT_LENGTH) {
        let digits = value.as_bytes();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("the content-length is not digits");
        }
        let parsed = std::str::from_utf8(digits)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or("the content-length is too large")?;
        if length.is_some_and(|earlier| earlier != parsed) {
            return Err("the content-length lines disagree");
        }
        length = Some(parsed);
    }
    Ok(length)
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
        let (data, ended) =
            decode_in_steps(Framing::Chunked, b"0003 ;a=b\r\nabc\r\n0\r\n\r\n", 1).expect("zeros");
        assert_eq!((data.as_slice(), ended), (&b"abc"[..], true), "leading zeros and extensions");
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
        let extensions = format!("1;{}\r\na\r\n", "e".repeat(6000)).repeat(3);
        let trailers = format!("0\r\n{}\r\n", format!("x: {}\r\n", "t".repeat(6000)).repeat(3));
        let fields = format!("0\r\n{}\r\n", "x: y\r\n".repeat(MAX_TRAILER_FIELDS + 1));
        for wire in [
            &b"zz\r\nab\r\n"[..],
            b"3\r\nabcdef\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"+3\r\nabc\r\n",
            b" 3\r\nabc\r\n",
            b"3x\r\nabc\r\n",
            b"0\r\n\n",
            extensions.as_bytes(),
            trailers.as_bytes(),
            fields.as_bytes(),
        ] {
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
        let headers = |lines: &[(&'static str, &'static str)]| {
            lines
                .iter()
                .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
                .collect::<HeaderMap>()
        };
        let te = |values: &[&'static str]| {
            chunked_last(&headers(&values.iter().map(|v| ("transfer-encoding", *v)).collect::<Vec<_>>()))
        };
        assert_eq!(te(&["gzip, Chunked"]), Some(true));
        assert_eq!(te(&["chunked, gzip"]), Some(false));
        assert_eq!(te(&["chunked", "gzip"]), Some(false), "every line is one list");
        assert_eq!(te(&["gzip", "chunked"]), Some(true));
        assert_eq!(te(&[]), None);
        let cl = |values: &[&'static str]| {
            content_length(&headers(&values.iter().map(|v| ("content-length", *v)).collect::<Vec<_>>()))
        };
        assert_eq!(cl(&["12"]), Ok(Some(12)));
        assert_eq!(cl(&["12", "12"]), Ok(Some(12)));
        assert_eq!(cl(&[]), Ok(None));
        for bad in [&["+12"][..], &[" 12"], &["12", "13"], &["1_2"], &["99999999999999999999999"]] {
            assert!(cl(bad).is_err(), "{bad:?}");
        }
    }
}
