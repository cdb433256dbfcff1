//! One client connection: hyper's HTTP/1.1 connection, under the deadline of the phase it is in
//! (head, idle, or a write that waits for the client), told to finish when the drain is asked
//! for, and closed so that the client reads its last answer rather than a reset.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::Limits;
use crate::activity::{Activity, Phase, Watched};
use crate::body::BodyTimeouts;
use crate::service::Service;

/// How long a connection the server closes keeps reading (and discarding) what the client
/// still sends, so that the client reads the last answer instead of a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// The most a closing connection discards before it closes anyway.
const LINGER_BYTES: usize = 256 * 1024;

type Connection = http1::Connection<TokioIo<Watched<TcpStream>>, Service>;

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
}

/// Which deadline a connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Head,
    Idle,
    Send,
}

/// How a connection's exchange ended.
enum Ended {
    /// hyper finished: the client closed, or the connection was not to be kept alive (an error
    /// hyper has answered, such as a malformed head, ends it too).
    Served(hyper::Result<()>),
    TimedOut(Deadline),
}

/// The connection's one timer, set for the deadline of the phase the connection is in.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The deadline set, and the phase change it was set for (see [`Activity::phase`]).
    armed: (Option<Deadline>, u32),
    limits: Limits,
}

impl Timer {
    fn new(limits: Limits) -> Self {
        let sleep = Box::pin(tokio::time::sleep(limits.head_timeout));
        Timer { sleep, armed: (Some(Deadline::Head), 0), limits }
    }

    /// `Ready` with the deadline that has passed; the deadline is (re)set whenever the phase has
    /// changed since the last poll. A request being served has none unless a write waits for
    /// the client (its body has its own timeouts).
    fn poll(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Poll<Deadline> {
        let (phase, changes) = activity.phase();
        let wanted = match phase {
            Phase::Head => Some(Deadline::Head),
            Phase::Idle => Some(Deadline::Idle),
            Phase::Busy if activity.write_blocked() => Some(Deadline::Send),
            Phase::Busy => None,
        };
        if (wanted, changes) != self.armed {
            self.armed = (wanted, changes);
            if let Some(deadline) = wanted {
                let due = Instant::now() + self.timeout(deadline);
                self.sleep.as_mut().reset(due);
            }
        }
        let Some(deadline) = self.armed.0 else { return Poll::Pending };
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(deadline)
    }

    fn timeout(&self, deadline: Deadline) -> Duration {
        match deadline {
            Deadline::Head => self.limits.head_timeout,
            Deadline::Idle => self.limits.idle_timeout,
            Deadline::Send => self.limits.send_timeout,
        }
    }
}

/// Serve `tcp` until its exchange ends, then close it.
pub async fn serve(tcp: TcpStream, router: Router, http: &http1::Builder, limits: Limits, drain: &Drain) {
    let activity = Arc::new(Activity::default());
    let timeouts = BodyTimeouts { between_reads: limits.body_read_timeout, whole: limits.body_timeout };
    let service = Service { router, activity: activity.clone(), timeouts };
    let mut connection = http.serve_connection(TokioIo::new(Watched::new(tcp, activity.clone())), service);
    let ended = run(&mut connection, &activity, limits, drain).await;
    let parts = connection.into_parts();
    let unprocessed = !parts.read_buf.is_empty();
    let tcp = parts.io.into_inner().into_inner();
    match ended {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(ref error)) => tracing::debug!(%error, "connection ended with an error"),
        Ended::TimedOut(deadline) => tracing::debug!(?deadline, "connection timed out"),
    }
    // Dropping the socket closes it; where the client may still be sending (an error hyper
    // answered, a body left unread, a head cut short) it is closed with a linger instead.
    match ended {
        Ended::Served(_) if activity.client_closed() => {}
        Ended::Served(Ok(())) if !activity.body_unread() => {}
        Ended::Served(_) => close(tcp, LINGER).await,
        Ended::TimedOut(Deadline::Head) if unprocessed => {
            let answer = answer(
                "408 Request Timeout",
                "",
                "invalid_request_error",
                "the request head did not arrive in time",
            );
            answer_and_close(tcp, &answer, LINGER).await;
        }
        Ended::TimedOut(_) => {}
    }
}

/// A whole answer, in the OpenAI error shape that the SDKs read, for when no route answers:
/// `status` is the status line's code and reason, `headers` any more header lines (each ending
/// in CRLF), `kind` the error's type.
pub fn answer(status: &str, headers: &str, kind: &str, message: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":{{"message":"{message}","type":"{kind}","code":null}}}}"#);
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body.into_bytes()].concat()
}

/// Poll `connection` until hyper is done with it or a deadline passes; tell it to finish once
/// the drain is asked for.
///
/// The drain's signal is polled once, so that it holds the task's waker, and again only once
/// the drain has been asked for: polling it with every poll of the connection would cost every
/// event of a stream (docs/benchmarks.md).
async fn run(connection: &mut Connection, activity: &Activity, limits: Limits, drain: &Drain) -> Ended {
    let mut timer = Timer::new(limits);
    let mut signal = pin!(drain.notify.notified());
    signal.as_mut().enable();
    let mut registered = false;
    let mut told = false;
    poll_fn(|cx| {
        if !told && (!registered || drain.asked()) {
            registered = true;
            if drain.asked() || signal.as_mut().poll(cx).is_ready() {
                told = true;
                Pin::new(&mut *connection).graceful_shutdown();
            }
        }
        if let Poll::Ready(result) = connection.poll_without_shutdown(cx) {
            return Poll::Ready(Ended::Served(result));
        }
        timer.poll(cx, activity).map(Ended::TimedOut)
    })
    .await
}

/// Write `answer` and close `tcp`.
pub async fn answer_and_close(mut tcp: TcpStream, answer: &[u8], linger: Duration) {
    if tokio::time::timeout(linger, tcp.write_all(answer)).await.is_ok_and(|written| written.is_ok()) {
        close(tcp, linger).await;
    }
}

/// Close `tcp` the way that lets the client read what it was sent: end the sending side, then
/// read and discard what the client still sends, for up to `linger` (closing with unread bytes
/// would reset the connection, and a reset can destroy the answer before the client reads it).
pub async fn close(mut tcp: TcpStream, linger: Duration) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(linger, async {
        while left > 0 {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    })
    .await;
}
