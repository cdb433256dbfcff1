//! What one connection is doing, as its timers need to know it: which phase of an exchange it
//! is in, whether a write waits for the client, whether the client has closed, and whether the
//! last request's body was left unread. The socket wrapper ([`Watched`]), the service and the
//! bodies write it as they are polled; the connection reads it after each poll.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a connection is between requests. Each phase has its own deadline (`Busy` only while
/// a write waits for the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// A new connection, or a kept-alive one that has begun a request: until the head is read.
    Head = 0,
    /// A request is being served: from its head to the end of its response.
    Busy = 1,
    /// Between requests on a kept-alive connection.
    Idle = 2,
}

/// One connection's state. Every field is written and read in the connection's own task (the
/// socket, the service and the bodies are all polled there), so relaxed atomics suffice: they
/// make the state shareable, not ordered.
#[derive(Debug)]
pub struct Activity {
    phase: AtomicU8,
    /// Counts phase changes, so that a connection that went through several phases between two
    /// looks (a whole exchange can happen in one poll) sees that its phase began anew.
    changes: AtomicU32,
    write_blocked: AtomicBool,
    client_closed: AtomicBool,
    body_unread: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            phase: AtomicU8::new(Phase::Head as u8),
            changes: AtomicU32::new(0),
            write_blocked: AtomicBool::new(false),
            client_closed: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// The phase, and how many phases began before it.
    pub fn phase(&self) -> (Phase, u32) {
        let phase = match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        };
        (phase, self.changes.load(Ordering::Relaxed))
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        // Written in one task only: no read-modify-write needed.
        self.changes.store(self.changes.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// A request's head has been read: it is being served.
    pub fn request_started(&self, body_unread: bool) {
        self.enter(Phase::Busy);
        self.body_unread.store(body_unread, Ordering::Relaxed);
    }

    /// The response's body has ended: the connection waits for the next request.
    pub fn response_ended(&self) {
        self.enter(Phase::Idle);
    }

    /// The request's body has been read to its end.
    pub fn body_read(&self) {
        self.body_unread.store(false, Ordering::Relaxed);
    }

    /// Whether the request being served (or the last one) still has body bytes on the wire.
    pub fn body_unread(&self) -> bool {
        self.body_unread.load(Ordering::Relaxed)
    }

    /// Whether the last write found the client's window full and waits for it to read.
    pub fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    /// Whether a read found the client's end of the connection closed.
    pub fn client_closed(&self) -> bool {
        self.client_closed.load(Ordering::Relaxed)
    }

    fn read(&self, bytes: usize) {
        if bytes == 0 {
            self.client_closed.store(true, Ordering::Relaxed);
        } else if self.phase().0 == Phase::Idle {
            self.enter(Phase::Head);
        }
    }
}

/// A socket that reports to its connection's [`Activity`]: the first byte of a request on an
/// idle connection, a closed read side, a write that waits for the client.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }

    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.activity.read(buf.filled().len() - before);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.write_blocked.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.write_blocked.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
