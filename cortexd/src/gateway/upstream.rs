//! The HTTP client for inference requests to neurons: hyper's pooled client, without reqwest's
//! layers, so that a streamed response's body is the connection's own.
//!
//! The control plane keeps reqwest (discovery, lifecycle: a few calls a second). The gateway
//! forwards every event of every stream, and reqwest's response body wraps hyper's in a
//! decoder, two boxes and three error mappings, each polled once per event: a measurable
//! share of the per-event cost at 1,000 streams (docs/benchmarks.md).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An engine's answer as it arrives: status, headers, and the body still on the connection.
pub type Response = hyper::Response<Incoming>;

/// How long an idle connection stays pooled (reqwest's default too). The pool keeps every idle
/// connection until then (no count cap): a cap closes the connections a burst opened as soon as
/// they are free, and under a sustained burst that churn fills the host's ephemeral ports with
/// TIME_WAIT sockets until new connections fail.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A pooled HTTP/1.1 client for the neurons' inference routes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InferenceClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for InferenceClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        InferenceClient { http }
    }
}

impl InferenceClient {
    /// Send `request`; the error names every cause (`connection refused`, not only `Connect`).
    pub async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<Response, String> {
        self.http.request(request).await.map_err(|error| causes(&error))
    }
}

/// An error and its sources, joined with `: `.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
