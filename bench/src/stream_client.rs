//! The load generator's streaming HTTP/1.1 client: one task per stream reads its own socket
//! (no connection task and no channel between it and the reader, as a general client has), and
//! kept-alive connections are pooled per host. On a 2-core machine the client shares the cores
//! with the proxy it measures, so what it spends per event shows up in every path's tail: it is
//! kept lean. Plain `http://` on loopback only; bodies framed by chunked encoding, by
//! content-length, or by the connection's close.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle kept-alive connections, per `host:port`.
type Pool = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

/// How much a read asks the socket for at least.
const READ_ROOM: usize = 8 * 1024;
/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A client for streamed POSTs: its pool of idle connections, the headers every request
/// carries, and the time a whole exchange may take.
#[derive(Clone)]
pub struct Streamer {
    idle: Pool,
    headers: String,
    pub timeout: Duration,
}

/// A response whose body is read as it arrives: its connection, the bytes read but not yet
/// decoded (`buf[at..]`), and the pool the connection returns to when the body ends cleanly.
pub struct Response {
    pub status: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    at: usize,
    framing: Framing,
    home: Option<(Pool, String)>,
}

impl Streamer {
    pub fn new(timeout: Duration) -> Streamer {
        Streamer { idle: Arc::default(), headers: String::new(), timeout }
    }

    /// The same client, with one more header on every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Streamer {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// POST a JSON `body` to `url` and read the response's head. A kept-alive connection the
    /// server has closed meanwhile is replaced by a new one, once.
    pub async fn post(&self, url: &str, body: &Bytes) -> io::Result<Response> {
        let (host, path) = split_url(url)?;
        let request = self.request(host, path, body);
        if let Some(stream) = self.take_idle(host) {
            if let Ok(response) = self.exchange(host, stream, &request).await {
                return Ok(response);
            }
        }
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        self.exchange(host, stream, &request).await
    }

    fn request(&self, host: &str, path: &str, body: &Bytes) -> Vec<u8> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{}content-length: {}\r\n\r\n",
            self.headers,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    async fn exchange(&self, host: &str, mut stream: TcpStream, request: &[u8]) -> io::Result<Response> {
        stream.write_all(request).await?;
        let mut buf = Vec::with_capacity(READ_ROOM);
        loop {
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response"));
            }
            if let Some((status, framing, reuse, used)) = parse_head(&buf)? {
                buf.drain(..used);
                let home = reuse.then(|| (self.idle.clone(), host.to_owned()));
                return Ok(Response { status, stream: Some(stream), buf, at: 0, framing, home });
            }
            if buf.len() > MAX_HEAD {
                return Err(invalid("response head too long"));
            }
        }
    }

    fn take_idle(&self, host: &str) -> Option<TcpStream> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).get_mut(host)?.pop()
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> io::Result<(&str, &str)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| invalid("only http:// URLs are supported"))?;
    Ok(match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    })
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Read what the socket has into `buf`'s spare room (at least [`READ_ROOM`]).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_ROOM);
    stream.read_buf(buf).await
}

/// The status, the body's framing, whether the connection may be reused after it, and the
/// head's length, once `buf` holds a whole head.
fn parse_head(buf: &[u8]) -> io::Result<Option<(u16, Framing, bool, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(buf).map_err(|e| invalid(&e.to_string()))? {
        httparse::Status::Complete(used) => used,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut framing = Framing::Close;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked(Chunk::Size);
        } else if header.name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked(_))
        {
            framing = Framing::Length(value.parse().map_err(|_| invalid("bad content-length"))?);
        } else if header.name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let reuse = !close && framing != Framing::Close;
    Ok(Some((status, framing, reuse, used)))
}

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Chunked(Chunk),
    /// Bytes left.
    Length(u64),
    /// At the connection's close.
    Close,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunk {
    Size,
    /// Bytes of this chunk's data left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
}

impl Response {
    /// Append the body's next bytes to `out` as they arrive: `false` once the body has ended
    /// (its connection then goes back to the pool).
    pub async fn next(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let before = out.len();
            decode(&mut self.framing, &self.buf, &mut self.at, out)?;
            if self.framing == Framing::Done {
                self.finish();
            }
            if out.len() > before {
                return Ok(true);
            }
            if self.framing == Framing::Done {
                return Ok(false);
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let Some(stream) = self.stream.as_mut() else { return Ok(false) };
            if read_more(stream, &mut self.buf).await? == 0 {
                return match self.framing {
                    Framing::Close => {
                        self.framing = Framing::Done;
                        Ok(false)
                    }
                    _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body was cut short")),
                };
            }
        }
    }

    /// The body has ended: its connection goes back to the pool if nothing is left over.
    fn finish(&mut self) {
        let (Some(stream), Some((idle, host))) = (self.stream.take(), self.home.take()) else { return };
        if self.at == self.buf.len() {
            idle.lock().unwrap_or_else(PoisonError::into_inner).entry(host).or_default().push(stream);
        }
    }
}

/// Decode what `buf[*at..]` holds of the body into `out`, advancing `at` and `framing`.
fn decode(framing: &mut Framing, buf: &[u8], at: &mut usize, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let rest = &buf[*at..];
        match *framing {
            Framing::Done => return Ok(()),
            Framing::Close => {
                out.extend_from_slice(rest);
                *at = buf.len();
                return Ok(());
            }
            Framing::Length(left) => {
                let take = take(rest, left, out);
                *at += take;
                *framing =
                    if left == take as u64 { Framing::Done } else { Framing::Length(left - take as u64) };
                return Ok(());
            }
            Framing::Chunked(chunk) => {
                let Some((used, next)) = decode_chunk(chunk, rest, out)? else { return Ok(()) };
                *at += used;
                *framing = next.map_or(Framing::Done, Framing::Chunked);
            }
        }
    }
}

/// Copy up to `left` bytes of `rest` to `out`; how many.
fn take(rest: &[u8], left: u64, out: &mut Vec<u8>) -> usize {
    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    out.extend_from_slice(&rest[..n]);
    n
}

/// One step of the chunked decoder: bytes used and the next state (`None`: the body ended), or
/// `None` when `rest` holds too little to step.
fn decode_chunk(chunk: Chunk, rest: &[u8], out: &mut Vec<u8>) -> io::Result<Option<(usize, Option<Chunk>)>> {
    Ok(match chunk {
        Chunk::Size => match httparse::parse_chunk_size(rest).map_err(|_| invalid("bad chunk size"))? {
            httparse::Status::Complete((used, 0)) => Some((used, Some(Chunk::Trailers))),
            httparse::Status::Complete((used, size)) => Some((used, Some(Chunk::Data(size)))),
            httparse::Status::Partial => None,
        },
        Chunk::Data(_) if rest.is_empty() => None,
        Chunk::Data(left) => {
            let used = take(rest, left, out);
            let next = if left == used as u64 { Chunk::DataEnd } else { Chunk::Data(left - used as u64) };
            Some((used, Some(next)))
        }
        Chunk::DataEnd if rest.len() < 2 => None,
        Chunk::DataEnd if rest.starts_with(b"\r\n") => Some((2, Some(Chunk::Size))),
        Chunk::DataEnd => return Err(invalid("chunk data not followed by CRLF")),
        Chunk::Trailers if rest.starts_with(b"\r\n") => Some((2, None)),
        Chunk::Trailers => memchr::memmem::find(rest, b"\r\n\r\n").map(|end| (end + 4, None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `wire` fed in pieces of `step` bytes, as reads would deliver it.
    fn decode_in_steps(mut framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, Framing, usize) {
        let (mut buf, mut at, mut out) = (Vec::new(), 0, Vec::new());
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            decode(&mut framing, &buf, &mut at, &mut out).expect("valid framing");
        }
        (out, framing, buf.len() - at)
    }

    #[test]
    fn chunked_bodies_decode_whole_however_the_reads_split_them() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n";
        for step in 1..=wire.len() {
            let (out, framing, left) = decode_in_steps(Framing::Chunked(Chunk::Size), wire, step);
            assert_eq!(out, b"hello world!", "step {step}");
            assert_eq!((framing, left), (Framing::Done, 0), "step {step}");
        }
        let trailers = b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (out, framing, _) = decode_in_steps(Framing::Chunked(Chunk::Size), trailers, 4);
        assert_eq!((out.as_slice(), framing), (&b"abc"[..], Framing::Done));
    }

    #[test]
    fn length_and_close_framings_end_where_they_should() {
        let (out, framing, left) = decode_in_steps(Framing::Length(5), b"hello", 2);
        assert_eq!((out.as_slice(), framing, left), (&b"hello"[..], Framing::Done, 0));
        let (out, framing, _) = decode_in_steps(Framing::Close, b"until the end", 3);
        assert_eq!((out.as_slice(), framing), (&b"until the end"[..], Framing::Close));
        let mut framing = Framing::Chunked(Chunk::Size);
        let error = decode(&mut framing, b"3\r\nabcXY", &mut 0, &mut Vec::new()).expect_err("no CRLF");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn heads_give_status_and_framing() {
        let head = |text: &str| parse_head(text.as_bytes()).expect("parses").map(|(s, f, r, _)| (s, f, r));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some((200, Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            head("HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n"),
            Some((404, Framing::Length(9), true))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"),
            Some((200, Framing::Length(2), false))
        );
        assert_eq!(head("HTTP/1.0 200 OK\r\n\r\n"), Some((200, Framing::Close, false)));
        assert_eq!(head("HTTP/1.1 200 OK\r\ncontent-"), None);
        assert_eq!(split_url("http://127.0.0.1:80/v1/x").expect("http"), ("127.0.0.1:80", "/v1/x"));
        assert!(split_url("https://example").is_err());
    }

    /// A server answering `hello` in chunks to every request; it closes each connection after
    /// its first answer when `one_per_connection`. Returns its address and its accept count.
    async fn hello_server(one_per_connection: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while read_more(&mut socket, &mut seen).await.is_ok_and(|n| n > 0) {
                        // Every request here is a head with content-length 2 and a body of 2.
                        let Some(end) = memchr::memmem::find(&seen, b"\r\n\r\n") else { continue };
                        if seen.len() < end + 6 {
                            continue;
                        }
                        seen.drain(..end + 6);
                        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n";
                        if socket.write_all(answer).await.is_err() || one_per_connection {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    async fn hello(client: &Streamer, address: &str) -> Vec<u8> {
        let mut response =
            client.post(&format!("http://{address}/x"), &Bytes::from_static(b"{}")).await.expect("answered");
        assert_eq!(response.status, 200);
        let mut body = Vec::new();
        while response.next(&mut body).await.expect("whole body") {}
        body
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_replaced_once_the_server_has_closed_them() {
        let client = Streamer::new(Duration::from_secs(5));
        let (kept, kept_accepts) = hello_server(false).await;
        for _ in 0..3 {
            assert_eq!(hello(&client, &kept).await, b"hello");
        }
        assert_eq!(kept_accepts.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection, reused");
        let (closing, closing_accepts) = hello_server(true).await;
        for _ in 0..3 {
            assert_eq!(hello(&client, &closing).await, b"hello", "a closed idle connection is replaced");
        }
        assert_eq!(closing_accepts.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
