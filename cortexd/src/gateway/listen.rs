//! The inference listener's connections: HTTP/1.1 on hyper directly, Nagle off, writes
//! flattened, drained on shutdown.
//!
//! `axum::serve` would sniff every connection for HTTP/2 and wrap its socket for the replay;
//! cortex's clients speak HTTP/1.1, and that layer was a measurable share of the per-event cost
//! at 1,000 streams (docs/benchmarks.md).

use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long to wait before accepting again after an error that is not the peer's (e.g. out of
/// file descriptors), so that the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serve `app` on `listener` until `shutdown` fires; then stop accepting and wait for the open
/// connections to finish what they are sending.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Each streamed event goes out as one chunk: its size line, the event and a CRLF. Copied
    // into one buffer and sent with one `write`, that costs ~9% fewer instructions per event
    // than hyper's queue of three buffers for a `writev` (docs/benchmarks.md).
    http.writev(false);
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
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors that concern one connection only (the peer gave up before it was accepted).
fn peer_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}
