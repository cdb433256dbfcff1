//! The router as hyper calls it: each request's body wrapped in [`RequestBody`], each response's
//! in [`ResponseBody`], and `connection: close` on an answer given before its request's body
//! was read (the connection cannot carry another request after it).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
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
        let request = Request::from_parts(parts, Body::new(body));
        let mut router = self.router.clone();
        let activity = self.activity.clone();
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
