//! One client connection of the inference listener, served in one task: request heads parsed
//! with httparse, each request's body read whole (bounded) before the router sees it, each
//! response written in its framing, with the frames a wake-up brings copied into one buffer
//! and sent with one `write`, and a client that leaves while its answer is pending noticed at
//! once (its request, and with it the engine's generation, is dropped).
//!
//! hyper's server did the same through a general dispatcher: at 1,000 streams its per-event
//! bookkeeping was most of what cortex spent per event beyond nginx (docs/benchmarks.md).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, Version};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tower_service::Service;

use super::request::{self, Head, MAX_HEAD, Refused};
use super::response::{self, LAST_CHUNK, chunk_size_line};
use super::{Decoded, Decoder, Framing, make_room};

/// Frames ready at once are gathered into one write up to this many bytes.
const GATHER: usize = 64 * 1024;
/// A data frame this large is written from its own buffer rather than copied.
const LARGE_FRAME: usize = 16 * 1024;
/// How long a connection closed with a request body unread keeps reading (and discarding) it,
/// so that the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);

/// The request to every open connection to finish what it is sending and close.
#[derive(Debug, Default)]
pub struct Drain {
    asked: AtomicBool,
    notify: Notify,
}

impl Drain {
    pub fn ask(&self) {
        self.asked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// Resolves once the drain is asked for.
    async fn wait(&self) {
        let mut notified = pin!(self.notify.notified());
        notified.as_mut().enable();
        if !self.asked() {
            notified.await;
        }
    }
}

/// Serve requests on `io` with `router` until the client closes the connection, a response
/// ends it, or the drain is asked for (an idle connection closes at once, a busy one after
/// its response). `max_body`: request bodies over this are not read (the router sees a body
/// that fails, and answers 413 in its dialect).
pub async fn serve(io: TcpStream, mut router: Router, drain: Arc<Drain>, max_body: usize) -> io::Result<()> {
    let mut connection = Connection { io, read: BytesMut::new(), out: Vec::new(), max_body };
    while let Some(head) = connection.next_head(&drain).await? {
        let (body, read_whole) = connection.body(&head).await?;
        let head_only = head.parts.method == Method::HEAD;
        let http10 = head.parts.version == Version::HTTP_10;
        let call = router.call(Request::from_parts(head.parts, body));
        let Some(Ok(answer)) = connection.answer(call).await? else { return Ok(()) };
        let keep_alive = head.keep_alive && read_whole && !drain.asked();
        let kept = connection.send(answer, head_only, keep_alive, http10).await?;
        if !read_whole {
            connection.linger().await;
        }
        if !kept || drain.asked() {
            return Ok(());
        }
    }
    Ok(())
}

struct Connection {
    io: TcpStream,
    /// Read from the client and not yet consumed.
    read: BytesMut,
    /// To be written to the client.
    out: Vec<u8>,
    max_body: usize,
}

/// A response body on its way out.
struct Sending {
    framing: Framing,
    /// Of `out`, the bytes already written.
    written: usize,
    /// A large data frame written from its own buffer after `out`, then the bytes that follow
    /// it (a chunk's CRLF).
    large: Option<(Bytes, &'static [u8])>,
    /// Data bytes sent, against a `content-length`.
    sent: u64,
    /// The body returned `Pending` in this poll (its waker is registered) and a flush came
    /// after: the task then parks without polling the body a second time.
    parked: bool,
    ended: bool,
    watching: bool,
}

impl Connection {
    /// The next request's head; `None` once the connection is to close (the client closed
    /// it, the drain was asked for while idle, or the head was refused and answered).
    async fn next_head(&mut self, drain: &Drain) -> io::Result<Option<Head>> {
        loop {
            match request::parse(&mut self.read) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(refused) => {
                    self.refuse(refused).await?;
                    return Ok(None);
                }
            }
            let read = if self.read.is_empty() {
                tokio::select! {
                    biased;
                    () = drain.wait() => return Ok(None),
                    read = self.fill() => read?,
                }
            } else {
                self.fill().await?
            };
            if read == 0 {
                return Ok(None);
            }
        }
    }

    /// The request's body, read whole; `false` when it was over the limit and left unread
    /// (the connection then closes after the answer).
    async fn body(&mut self, head: &Head) -> io::Result<(Body, bool)> {
        let limit = self.max_body as u64;
        if let Framing::Length(length) = head.framing {
            if length > limit {
                return Ok((Body::new(OverLimit(length)), false));
            }
            if length == 0 {
                return Ok((Body::empty(), true));
            }
        }
        if head.expects_continue && self.read.is_empty() {
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut decoder = Decoder::new(head.framing);
        let mut whole = BytesMut::new();
        if let Framing::Length(length) = head.framing {
            self.read.reserve((length as usize).saturating_sub(self.read.len()));
        }
        loop {
            let decoded = match decoder.decode(&mut self.read) {
                Ok(decoded) => decoded,
                Err(error) => {
                    let message = "the request's chunked body is malformed";
                    self.refuse(Refused { status: StatusCode::BAD_REQUEST, message }).await?;
                    return Err(error);
                }
            };
            match decoded {
                Decoded::Data(data) if whole.is_empty() && decoder.is_done() => {
                    return Ok((Body::from(data), true));
                }
                Decoded::Data(data) => {
                    whole.extend_from_slice(&data);
                    if whole.len() as u64 > limit {
                        return Ok((Body::new(OverLimit(whole.len() as u64)), false));
                    }
                    continue;
                }
                Decoded::End => return Ok((Body::from(whole.freeze()), true)),
                Decoded::NeedMore => {}
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-request"));
            }
        }
    }

    /// The router's answer; `None` if the client left first.
    async fn answer<F: Future>(&mut self, call: F) -> io::Result<Option<F::Output>> {
        let mut call = pin!(call);
        let mut watching = true;
        poll_fn(|cx| {
            if let Poll::Ready(answer) = call.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(answer)));
            }
            ready!(self.poll_left(cx, &mut watching));
            Poll::Ready(Ok(None))
        })
        .await
    }

    /// Write `answer`; whether the connection may carry another request after it.
    async fn send(
        &mut self,
        answer: Response<Body>,
        head_only: bool,
        keep_alive: bool,
        http10: bool,
    ) -> io::Result<bool> {
        let (parts, body) = answer.into_parts();
        let framing = response::framing(parts.status, head_only, body.size_hint().exact(), http10);
        let keep_alive = keep_alive && !response::asks_close(&parts) && framing != Some(Framing::Close);
        self.out.clear();
        response::write_head(&mut self.out, &parts, framing, keep_alive, http10);
        // Its header values may be views of buffers that a long stream should not keep alive.
        drop(parts);
        let Some(framing) = framing else {
            self.io.write_all(&self.out).await?;
            return Ok(keep_alive);
        };
        let mut body = pin!(body);
        let mut sending = Sending {
            framing,
            written: 0,
            large: None,
            sent: 0,
            parked: false,
            ended: false,
            watching: true,
        };
        poll_fn(|cx| self.poll_send(cx, body.as_mut(), &mut sending)).await?;
        Ok(keep_alive)
    }

    /// Write what is buffered, then gather the body's ready frames, until the body ends or
    /// neither the body nor the socket can go on.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        mut body: Pin<&mut Body>,
        sending: &mut Sending,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.poll_flush_out(cx, sending)?.is_pending() {
                // The body is polled again after this wake-up's flush: its event may be what
                // woke the task meanwhile.
                sending.parked = false;
                return Poll::Pending;
            }
            if sending.ended {
                return Poll::Ready(Ok(()));
            }
            if sending.parked {
                // The body returned `Pending` in this same poll, before the flush: its waker is
                // registered, and polling it again now would only find it empty.
                sending.parked = false;
                ready!(self.poll_left(cx, &mut sending.watching));
                return Poll::Ready(Err(client_left()));
            }
            while self.out.len() < GATHER && sending.large.is_none() && !sending.ended {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.frame(frame, sending)?,
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(io::Error::other(error))),
                    Poll::Ready(None) => self.end(sending)?,
                    Poll::Pending if self.out.is_empty() => {
                        ready!(self.poll_left(cx, &mut sending.watching));
                        return Poll::Ready(Err(client_left()));
                    }
                    Poll::Pending => {
                        sending.parked = true;
                        break;
                    }
                }
            }
        }
    }

    /// One body frame into the write buffer, in the body's framing.
    fn frame(&mut self, frame: Frame<Bytes>, sending: &mut Sending) -> io::Result<()> {
        let Ok(data) = frame.into_data() else { return Ok(()) };
        if data.is_empty() {
            return Ok(());
        }
        sending.sent += data.len() as u64;
        let (prefix, suffix): (bool, &'static [u8]) = match sending.framing {
            Framing::Length(length) if sending.sent > length => {
                return Err(io::Error::other("the response body is longer than its length"));
            }
            Framing::Chunked => (true, b"\r\n"),
            Framing::Length(_) | Framing::Close => (false, b""),
        };
        if prefix {
            chunk_size_line(&mut self.out, data.len());
        }
        if data.len() >= LARGE_FRAME {
            sending.large = Some((data, suffix));
        } else {
            self.out.extend_from_slice(&data);
            self.out.extend_from_slice(suffix);
        }
        Ok(())
    }

    /// The body has ended: the last chunk, or a check that the length was met.
    fn end(&mut self, sending: &mut Sending) -> io::Result<()> {
        sending.ended = true;
        match sending.framing {
            Framing::Chunked => self.out.extend_from_slice(LAST_CHUNK),
            Framing::Length(length) if sending.sent != length => {
                return Err(io::Error::other("the response body is shorter than its length"));
            }
            Framing::Length(_) | Framing::Close => {}
        }
        Ok(())
    }

    /// Write all of `out`, then a large frame and what follows it.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>, sending: &mut Sending) -> Poll<io::Result<()>> {
        loop {
            while sending.written < self.out.len() {
                let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[sending.written..]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                sending.written += written;
            }
            self.out.clear();
            sending.written = 0;
            let Some((large, suffix)) = &mut sending.large else { return Poll::Ready(Ok(())) };
            while !large.is_empty() {
                let written = ready!(Pin::new(&mut self.io).poll_write(cx, large))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                large.advance(written);
            }
            self.out.extend_from_slice(suffix);
            sending.large = None;
        }
    }

    /// `Ready` once the client has closed the connection (or it failed); bytes it sends in the
    /// meantime (a pipelined request) are kept for later, and watched for up to a head's size.
    fn poll_left(&mut self, cx: &mut Context<'_>, watching: &mut bool) -> Poll<()> {
        while *watching {
            if ready!(self.io.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            if self.read.len() >= MAX_HEAD {
                *watching = false;
                break;
            }
            make_room(&mut self.read);
            match self.io.try_read_buf(&mut self.read) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        Poll::Pending
    }

    /// Read more from the client; `Ok(0)`: it closed the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        make_room(&mut self.read);
        loop {
            self.io.readable().await?;
            match self.io.try_read_buf(&mut self.read) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Answer a refused head, in the OpenAI error shape, and close.
    async fn refuse(&mut self, refused: Refused) -> io::Result<()> {
        let body = serde_json::json!({
            "error": {"message": refused.message, "type": "invalid_request_error", "code": null}
        });
        let mut answer = Response::new(Body::from(body.to_string()));
        *answer.status_mut() = refused.status;
        answer.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
        self.send(answer, false, false, false).await?;
        self.linger().await;
        Ok(())
    }

    /// Close the sending side and read what the client still sends, for a while, so that
    /// closing with its bytes unread does not reset the connection under the answer.
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(read) = self.fill().await {
                if read == 0 {
                    break;
                }
                self.read.clear();
            }
        })
        .await;
    }
}

fn client_left() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client left before its answer ended")
}

/// A request body over the limit, left unread: polling it fails, so that the handler's
/// bounded read answers 413 in the route's dialect.
struct OverLimit(u64);

impl HttpBody for OverLimit {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        Poll::Ready(Some(Err(io::Error::other(format!(
            "the request body ({} bytes) is over the limit",
            self.0
        )))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0)
    }
}
