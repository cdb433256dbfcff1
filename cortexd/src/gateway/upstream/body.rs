//! An engine's response body, read from the connection by whoever polls it: HTTP/1.1 framing
//! (content length, chunked, or until close) decoded in place, and the connection handed back
//! to the pool once the body has ended.
//!
//! Polling the socket from the body, rather than from a connection task that relays each chunk
//! through a channel, puts a stream's whole path in one task: one wake-up per event instead of
//! two (docs/benchmarks.md).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pool::Return;

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `content-length`: this many bytes are left.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the engine closes the connection.
    Close,
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

impl From<Framing> for State {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        }
    }
}

/// What the buffered bytes yield.
enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// A line in the chunked framing (size line, trailer) longer than this is refused.
const MAX_LINE: usize = 8 * 1024;
/// Read buffer growth: what hyper starts with too.
const READ_SIZE: usize = 8 * 1024;
/// The buffer grows by `READ_SIZE` when less than this is free for the next read.
const MIN_ROOM: usize = 2 * 1024;

/// The body of one engine response. Dropping it before its end closes the connection, which
/// is how an engine learns that the client went away and stops generating.
#[derive(Debug)]
pub struct Body {
    io: Option<TcpStream>,
    buffer: BytesMut,
    state: State,
    /// Where the connection goes when the body has ended; `None`: it is closed instead.
    reuse: Option<Return>,
}

impl Body {
    /// A body framed by `framing` on `io`; `buffer` holds what was read past the head.
    pub(super) fn new(io: TcpStream, buffer: BytesMut, framing: Framing, reuse: Option<Return>) -> Self {
        let reuse = reuse.filter(|_| framing != Framing::Close);
        Body { io: Some(io), buffer, state: State::from(framing), reuse }
    }

    /// The next piece of the body the buffer holds, or what it lacks.
    fn decode(&mut self) -> io::Result<Decoded> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(0) => return Ok(self.end()),
                State::Length(left) => return Ok(self.data(left, State::Length)),
                State::Close if self.buffer.is_empty() => return Ok(Decoded::NeedMore),
                State::Close => return Ok(Decoded::Data(self.buffer.split().freeze())),
                State::ChunkData(left) => return Ok(self.data(left, State::ChunkData)),
                State::ChunkSize => {
                    let Some(size) = self.line(chunk_size)? else { return Ok(Decoded::NeedMore) };
                    self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                }
                State::ChunkEnd => {
                    let Some(empty) = self.line(|line| Ok(line.is_empty()))? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if !empty {
                        return Err(invalid("a chunk is longer than its size line says"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => match self.line(|line| Ok(line.is_empty()))? {
                    None => return Ok(Decoded::NeedMore),
                    Some(true) => return Ok(self.end()),
                    Some(false) => {}
                },
            }
        }
    }

    /// Up to `left` buffered bytes of data; the state continues with what is then left.
    fn data(&mut self, left: u64, next: fn(u64) -> State) -> Decoded {
        if self.buffer.is_empty() {
            return Decoded::NeedMore;
        }
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.buffer.len());
        let rest = left - take as u64;
        self.state = match next(rest) {
            State::ChunkData(0) => State::ChunkEnd,
            state => state,
        };
        Decoded::Data(self.buffer.split_to(take).freeze())
    }

    /// `read` applied to the next CRLF- (or LF-) terminated line, without its ending, once it is
    /// all buffered; the line is then consumed.
    fn line<T>(&mut self, read: impl FnOnce(&[u8]) -> io::Result<T>) -> io::Result<Option<T>> {
        let Some(at) = memchr::memchr(b'\n', &self.buffer) else {
            return if self.buffer.len() > MAX_LINE {
                Err(invalid("a chunk line is too long"))
            } else {
                Ok(None)
            };
        };
        let line = &self.buffer[..at];
        let value = read(line.strip_suffix(b"\r").unwrap_or(line))?;
        self.buffer.advance(at + 1);
        Ok(Some(value))
    }

    /// The body cannot go on: the connection is closed, and later polls end it.
    fn broken(&mut self, error: io::Error) -> io::Error {
        self.state = State::Done;
        self.io = None;
        self.reuse = None;
        error
    }

    /// The body has ended: the connection goes back to the pool if it may.
    fn end(&mut self) -> Decoded {
        self.state = State::Done;
        if let (Some(io), Some(reuse)) = (self.io.take(), self.reuse.take())
            && self.buffer.is_empty()
        {
            reuse.give(io);
        }
        Decoded::End
    }

    /// Read more from the connection into the buffer; `Ok(0)`: the engine closed it.
    ///
    /// The read goes into the buffer's spare capacity as it is (tokio's `try_read_buf`): no
    /// window is zeroed before it, and no socket handle is borrowed around tokio's.
    ///
    /// A read that leaves room has drained the socket, so the socket's readiness is cleared at
    /// once (as nginx does) instead of by a second read that would fail with `EAGAIN`: one
    /// system call per event fewer. Clearing is safe against bytes arriving after the read:
    /// tokio clears only the readiness it had reported before the read, and a later arrival is
    /// a new edge (see `TcpStream::try_io`).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = &self.io else { return Poll::Ready(Ok(0)) };
        if self.buffer.capacity() - self.buffer.len() < MIN_ROOM {
            self.buffer.reserve(READ_SIZE);
        }
        loop {
            ready!(io.poll_read_ready(cx))?;
            let room = self.buffer.capacity() - self.buffer.len();
            let mut read = None;
            // A drained read answers `WouldBlock` to `try_io`, which clears the readiness; `read`
            // keeps what it read.
            let result = io.try_io(Interest::READABLE, || {
                let n = io.try_read_buf(&mut self.buffer)?;
                read = Some(n);
                if n > 0 && n < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
            });
            match (result, read) {
                (Ok(n), _) | (Err(_), Some(n)) => return Poll::Ready(Ok(n)),
                (Err(error), None) if error.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(error), None) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            match self.decode() {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(error) => return Poll::Ready(Some(Err(self.broken(error)))),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.state == State::Close => {
                    self.state = State::Done;
                    self.io = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the engine closed the connection mid-body",
                    );
                    return Poll::Ready(Some(Err(self.broken(error))));
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(self.broken(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(left) => SizeHint::with_exact(left),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
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

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `wire` fed in pieces of `step` bytes; the data frames joined, or the error.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), String> {
        let mut out = Vec::new();
        let mut body = Body { io: None, buffer: BytesMut::new(), state: State::from(framing), reuse: None };
        for piece in std::iter::once(&[][..]).chain(wire.chunks(step.max(1))) {
            body.buffer.extend_from_slice(piece);
            loop {
                match body.decode().map_err(|e| e.to_string())? {
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
}
