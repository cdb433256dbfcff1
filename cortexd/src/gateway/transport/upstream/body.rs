//! An engine's response body, read from the connection by whoever polls it: HTTP/1.1 framing
//! (content length, chunked, or until close) decoded in place, and the connection handed back
//! to the pool once the body has ended.
//!
//! Polling the socket from the body, rather than from a connection task that relays each chunk
//! through a channel, puts a stream's whole path in one task: one wake-up per event instead of
//! two (docs/benchmarks.md).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::pool::Return;
use crate::gateway::transport::http1::{Decoded, Decoder, Framing, make_room};

/// The body of one engine response. Dropping it before its end closes the connection, which
/// is how an engine learns that the client went away and stops generating.
#[derive(Debug)]
pub struct Body {
    io: Option<TcpStream>,
    buffer: BytesMut,
    decoder: Decoder,
    /// Where the connection goes when the body has ended; `None`: it is closed instead.
    reuse: Option<Return>,
    /// The longest the engine may leave the body without a byte.
    read_timeout: Duration,
    /// Set when the first read waits; see [`Body::poll_stalled`].
    stall: Option<Pin<Box<Sleep>>>,
    /// The waker the stall timer holds (it wakes the task that last polled it).
    stall_waker: Option<Waker>,
    /// A read has brought bytes since the stall timer was last set.
    progressed: bool,
}

impl Body {
    /// A body framed by `framing` on `io`; `buffer` holds what was read past the head.
    pub(super) fn new(
        io: TcpStream,
        buffer: BytesMut,
        framing: Framing,
        reuse: Option<Return>,
        read_timeout: Duration,
    ) -> Self {
        let reuse = reuse.filter(|_| framing != Framing::Close);
        Body {
            io: Some(io),
            buffer,
            decoder: Decoder::new(framing),
            reuse,
            read_timeout,
            stall: None,
            stall_waker: None,
            progressed: false,
        }
    }

    /// `Ready` with an error once no read has brought a byte for the read timeout.
    ///
    /// The timer is not reset by every read, which would cost every event of a stream a timer
    /// update: reads only mark progress, and the timer, when it fires, starts over if there was
    /// some. A stall is noticed between one and two timeouts after the last byte. Nor is the
    /// timer polled at every wait: once it holds the waker of the task polling the body, a look
    /// at whether it has elapsed is enough (its firing wakes that task).
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.read_timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        let registered = self.stall_waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker()));
        if registered && !stall.is_elapsed() {
            return Poll::Pending;
        }
        self.stall_waker = Some(cx.waker().clone());
        loop {
            ready!(stall.as_mut().poll(cx));
            if !std::mem::take(&mut self.progressed) {
                let message = format!("the engine sent nothing for {timeout:?}");
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, message));
            }
            stall.as_mut().reset(Instant::now() + timeout);
        }
    }

    /// The body cannot go on: the connection is closed, and later polls end it.
    fn broken(&mut self, error: io::Error) -> io::Error {
        self.decoder.stop();
        self.io = None;
        self.reuse = None;
        error
    }

    /// The body has ended: the connection goes back to the pool if it may.
    fn end(&mut self) {
        if let (Some(io), Some(reuse)) = (self.io.take(), self.reuse.take())
            && self.buffer.is_empty()
        {
            reuse.give(io);
        }
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
        make_room(&mut self.buffer);
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
            let this = &mut *self;
            match this.decoder.decode(&mut this.buffer) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return Poll::Ready(Some(Err(self.broken(error)))),
            }
            let filled = match self.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    let stalled = ready!(self.poll_stalled(cx));
                    return Poll::Ready(Some(Err(self.broken(stalled))));
                }
            };
            match filled {
                Ok(0) => {
                    return match self.decoder.at_close() {
                        Ok(()) => {
                            self.io = None;
                            Poll::Ready(None)
                        }
                        Err(error) => Poll::Ready(Some(Err(self.broken(error)))),
                    };
                }
                Ok(_) => self.progressed = true,
                Err(error) => return Poll::Ready(Some(Err(self.broken(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.exact_left().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
