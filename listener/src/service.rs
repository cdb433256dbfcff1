//! The router as hyper calls it: each request's body wrapped in [`RequestBody`], each response's
//! in [`ResponseBody`], `connection: close` on an answer given before its request's body was
//! read (the connection cannot carry another request after it), and `501` for a request body
//! in a transfer coding other than `chunked` (no route decodes one).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::activity::Activity;
use crate::body::{BodyTimeouts, RequestBody, ResponseBody};

/// One connection's view of the router.
#[derive(Clone)]
pub struct Service {
    pub router: Router,
    pub activity: Arc<Activity>,
    pub timeouts: BodyTimeouts,
}

type Answer = Response<ResponseBody<Body>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (parts, incoming) = request.into_parts();
        let body = RequestBody::new(incoming, self.activity.clone(), self.timeouts);
        self.activity.request_started(!hyper::body::Body::is_end_stream(&body));
        let activity = self.activity.clone();
        if let Some(coding) = unsupported_coding(&parts.headers) {
            let answer = not_implemented(&coding);
            return Box::pin(async move { Ok(answer.map(|body| ResponseBody::new(body, activity))) });
        }
        let request = Request::from_parts(parts, Body::new(body));
        let mut router = self.router.clone();
        Box::pin(async move {
            let answer = tower_service::Service::call(&mut router, request).await;
            let Ok(mut answer) = answer;
            if activity.body_unread() {
                answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(answer.map(|body| ResponseBody::new(body, activity)))
        })
    }
}

/// The first transfer coding of a request that is not `chunked`, or a second `chunked`: hyper
/// has checked that `chunked` comes last (else 400), and hands any coding before it on
/// undecoded, which a route would read as the body itself.
fn unsupported_coding(headers: &HeaderMap) -> Option<String> {
    let mut chunked = 0;
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(line) = line.to_str() else { return Some(String::from_utf8_lossy(line.as_bytes()).into()) };
        for coding in line.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some(coding.to_owned());
            }
            chunked += 1;
            if chunked > 1 {
                return Some("chunked applied twice".to_owned());
            }
        }
    }
    None
}

/// `501` for a request body in a transfer coding no route decodes (RFC 9112 §6.1), its body
/// unread: the connection closes after it.
fn not_implemented(coding: &str) -> Response<Body> {
    let message = format!("the transfer coding {coding:?} is not supported; send the body as is or chunked");
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "code": null}
    });
    let mut answer = Response::new(Body::from(body.to_string()));
    *answer.status_mut() = StatusCode::NOT_IMPLEMENTED;
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}
