//! The HTTP/1.1 listener that cortex's daemons put in front of their clients: hyper's
//! connections (the field's fuzzed parser and framing), behind a bound on open connections,
//! under head, idle, body and send timeouts, and drained on shutdown.
//!
//! What hyper leaves to its user is filled in here: its one header timer also covers the idle
//! wait between requests (`connection`: separate head and idle deadlines, and one for a client
//! that stops reading); it has no body timeouts (`body::RequestBody`); an answer given before
//! its request's body was read does not say that the connection will close (`service`); and a
//! closing connection is not lingered, so the client can read a reset instead of its answer
//! (`connection::close`).
//!
//! A route decides from the head alone, before it reads the body: hyper sends `100 Continue`
//! only when the body is first read, and a body that is never read is never buffered (the
//! connection closes after the answer).

mod activity;
mod body;
mod connection;
mod limits;
mod service;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::{BodyFailure, BodyTimedOut};
pub use limits::Limits;

use connection::Drain;

/// The most of a request head (request line and headers) read; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers in a request head; more get 431.
pub const MAX_HEADERS: usize = 100;
/// The most a connection buffers from the client or for it at once (hyper's read and write
/// buffers): a body is handed on as it arrives, in pieces no larger than this.
const MAX_BUFFER: usize = 128 * 1024;
/// Connections past `max_connections` answered 503 at once; past this many more, they are
/// closed without an answer.
const REFUSING_AT_ONCE: usize = 256;
/// How long to wait before accepting again after an error that is not the peer's (e.g. out of
/// file descriptors), so that the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serve `router` on `listener` until `shutdown` fires; then stop accepting, let every open
/// connection finish the answer it is sending (an idle one closes at once), and return once
/// all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let http = Arc::new(builder());
    let drain = Arc::new(Drain::default());
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(error) if peer_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                connections.spawn(async move {
                    refuse(tcp).await;
                    drop(refusal);
                });
            }
            continue;
        };
        nodelay(&tcp);
        let (router, http, drain) = (router.clone(), http.clone(), drain.clone());
        connections.spawn(async move {
            connection::serve(tcp, router, &http, limits, &drain).await;
            drop(permit);
        });
    }
    drop(listener);
    drain.ask();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// hyper's HTTP/1.1 connections as the listener runs them.
fn builder() -> http1::Builder {
    let mut http = http1::Builder::new();
    http.max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUFFER)
        // The head and idle deadlines are the connection's own: hyper's header timer starts
        // when a connection goes idle, so one timer would bound both waits together.
        .header_read_timeout(None)
        // Each streamed event goes out as one chunk: its size line, the event and a CRLF.
        // Copied into one buffer and sent with one `write`, that costs ~9% fewer instructions
        // per event than hyper's queue of three buffers for a `writev` (docs/benchmarks.md).
        .writev(false);
    http
}

/// No Nagle: a stream's small events must leave as they come, not wait for the client's
/// delayed ACK of the previous write (that held first tokens back by up to 40 ms).
fn nodelay(tcp: &TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Answer a connection past `max_connections` with 503 and close it, without reading a
/// request from it.
async fn refuse(tcp: TcpStream) {
    let answer = connection::answer(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        "overloaded_error",
        "the server has too many open connections; retry later",
    );
    connection::answer_and_close(tcp, &answer, Duration::from_secs(1)).await;
}

/// Accept errors that concern one connection only (the peer gave up before it was accepted).
fn peer_error(error: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

#[cfg(test)]
mod tests;
