//! The inference listener: accepts connections, Nagle off, each served by the gateway's own
//! HTTP/1.1 connection (`http1::server`), and drained on shutdown.
//!
//! cortex's clients speak HTTP/1.1 (the SDKs, the agents, curl): the listener serves no HTTP/2
//! and no upgrades. Its connections are not hyper's: at 1,000 streams hyper's dispatcher was
//! the largest share of the per-event cost left (docs/benchmarks.md).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http1::server::{self, Drain};

/// How long to wait before accepting again after an error that is not the peer's (e.g. out of
/// file descriptors), so that the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serve `app` on `listener` until `shutdown` fires; then stop accepting and wait for the open
/// connections to finish what they are sending. Request bodies over `max_body` bytes are not
/// read (the handlers answer 413).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_body: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let drain = Arc::new(Drain::default());
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
        // No Nagle: a stream's small events must leave as they come, not wait for the client's
        // delayed ACK of the previous write (that held first tokens back by up to 40 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let connection = server::serve(tcp, app.clone(), drain.clone(), max_body);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain.ask();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Accept errors that concern one connection only (the peer gave up before it was accepted).
fn peer_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::routing::get;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Read from `tcp` until what has arrived contains `needle`; `None` if the server closed
    /// the connection first.
    async fn read_until(tcp: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) -> Option<()> {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let mut buffer = [0u8; 4096];
            let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("a read in time");
            match read.expect("a read") {
                0 => return None,
                n => seen.extend_from_slice(&buffer[..n]),
            }
        }
        Some(())
    }

    /// Whether the server closes `tcp` (a read returns nothing) before the deadline.
    async fn closed(tcp: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 64];
        matches!(tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await, Ok(Ok(0)))
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_lets_a_stream_in_flight_finish() {
        let (chunks, stream_rx) = mpsc::channel::<&'static str>(4);
        let stream_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(stream_rx)));
        let app = Router::new().route("/fast", get(|| async { "fast" })).route(
            "/slow",
            get(move || {
                let stream_rx = stream_rx.clone();
                async move {
                    let mut receiver = stream_rx.lock().await.take().expect("one slow request");
                    let body = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
                        .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::from_static(chunk.as_bytes())));
                    Body::from_stream(body)
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, 1024, shutdown.clone()));

        let mut streaming = TcpStream::connect(address).await.expect("connect");
        streaming.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("send");
        chunks.send("first-event").await.expect("the stream is open");
        let mut streamed = Vec::new();
        read_until(&mut streaming, &mut streamed, b"first-event").await.expect("the first event");

        let mut idle = TcpStream::connect(address).await.expect("connect");
        idle.write_all(b"GET /fast HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("send");
        read_until(&mut idle, &mut Vec::new(), b"fast").await.expect("the answer");

        shutdown.cancel();
        assert!(closed(&mut idle).await, "an idle kept-alive connection is closed on shutdown");
        assert!(!server.is_finished(), "the server waits for the stream in flight");

        chunks.send("last-event").await.expect("the stream is still open after shutdown");
        drop(chunks);
        read_until(&mut streaming, &mut streamed, b"last-event").await.expect("the last event");
        read_until(&mut streaming, &mut streamed, b"0\r\n\r\n").await.expect("the stream's end");
        let served = tokio::time::timeout(DEADLINE, server).await.expect("the server stops once drained");
        served.expect("the server task").expect("serve returns Ok");
        assert!(TcpStream::connect(address).await.is_err(), "no new connections after shutdown");
    }
}
