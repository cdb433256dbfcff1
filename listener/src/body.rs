//! The bodies that pass through a connection: a request's body as the route reads it, with the
//! body timeouts, and a response's body, which tells the connection when the exchange is over.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::activity::Activity;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A request body that took too long: no bytes for `body_read_timeout`, or not whole within
/// `body_timeout`. The route answers 408; the connection then closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTimedOut {
    /// The timeout that expired.
    pub after: Duration,
    /// Whether it was the gap between two reads (or else the whole body's time).
    pub between_reads: bool,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.between_reads {
            write!(f, "no byte of the request body arrived for {:?}", self.after)
        } else {
            write!(f, "the request body did not arrive whole within {:?}", self.after)
        }
    }
}

impl StdError for BodyTimedOut {}

/// What went wrong with a request body, as a route answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// A body timeout expired (408).
    TimedOut(BodyTimedOut),
    /// The body's framing is malformed, or the client closed the connection before its end
    /// (400, with hyper's reason).
    Malformed(String),
}

impl BodyFailure {
    /// The failure somewhere in `error`'s chain of sources, if it is one of a request body's.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<BodyFailure> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(timed_out) = error.downcast_ref::<BodyTimedOut>() {
                return Some(BodyFailure::TimedOut(*timed_out));
            }
            if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
                return Some(BodyFailure::Malformed(reasons(hyper)));
            }
            next = error.source();
        }
        None
    }
}

/// An error and its sources, joined with `: `.
fn reasons(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The timeouts a request body is read under.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeouts {
    pub between_reads: Duration,
    pub whole: Duration,
}

/// A request's body as the route sees it: hyper's, read as it arrives (nothing is reserved
/// for a declared length), under the body timeouts, and reporting to the connection when it
/// has been read to its end.
pub struct RequestBody {
    inner: Incoming,
    activity: Arc<Activity>,
    timeouts: BodyTimeouts,
    /// When the whole body is due; set at the first poll.
    due: Option<Instant>,
    /// The deadline of the wait in progress (the next read, capped by `due`); armed when a
    /// poll finds nothing to read, and rearmed after every frame.
    wait: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    ended: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, activity: Arc<Activity>, timeouts: BodyTimeouts) -> Self {
        let ended = inner.is_end_stream();
        RequestBody { inner, activity, timeouts, due: None, wait: None, waiting: false, ended }
    }

    fn end(&mut self) {
        self.ended = true;
        self.activity.body_read();
    }

    /// `Ready` with the timeout once the wait in progress has lasted too long.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<BodyTimedOut> {
        let now = Instant::now();
        let due = *self.due.get_or_insert(now + self.timeouts.whole);
        if !self.waiting {
            self.waiting = true;
            let deadline = (now + self.timeouts.between_reads).min(due);
            match &mut self.wait {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.wait = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(sleep) = &mut self.wait else { return Poll::Pending };
        ready!(sleep.as_mut().poll(cx));
        let whole = sleep.deadline() >= due;
        let after = if whole { self.timeouts.whole } else { self.timeouts.between_reads };
        Poll::Ready(BodyTimedOut { after, between_reads: !whole })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if this.inner.is_end_stream() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.ended = true;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timed_out = ready!(this.poll_wait(cx));
                this.ended = true;
                Poll::Ready(Some(Err(timed_out.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response's body, unchanged; its end (or its drop, if hyper never polls it) tells the
/// connection that the exchange is over and the idle timeout starts.
pub struct ResponseBody<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B> ResponseBody<B> {
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        ResponseBody { inner, activity }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        self.activity.response_ended();
    }
}

impl<B: Body + Unpin> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.activity.response_ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
