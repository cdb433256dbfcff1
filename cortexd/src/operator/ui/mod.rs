//! The fleet page (`/ui`, spec §6), served on the operator listener beside `/metrics`: one
//! HTML page with hand-written CSS and JavaScript compiled into the binary, its state document
//! (`/ui/api/state`), its live feed (`/ui/api/events`, server-sent events; see `feed`) and the
//! recent requests' timelines (`/ui/api/requests`, `/ui/api/requests/{id}`).
//!
//! Access: open when no admin key is configured (the listener binds loopback by default);
//! with one, a request needs `Authorization: Bearer <admin key>` or the page's cookie. The
//! cookie is set by `/ui?key=<admin key>` (which redirects to `/ui`, so the key leaves the
//! address bar) or by `POST /ui/login` with the bearer header (the page's own login box). It
//! is HttpOnly, SameSite=Strict, and holds a digest of the key rather than the key itself, so
//! it survives daemon restarts and stops working when the key changes.

pub(crate) mod feed;
pub(crate) mod page;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::operator::ui::feed::Feed;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The cookie that carries a signed-in page's access.
const COOKIE: &str = "cortex_ui";

/// What the page's handlers share.
#[derive(Clone)]
pub struct Ui {
    pub feed: Feed,
    access: Access,
}

/// Who may see the page.
#[derive(Clone)]
enum Access {
    Open,
    Key { key: Arc<String>, cookie: Arc<String> },
}

impl Ui {
    /// The page over `feed`, protected by `admin_key` when there is one.
    pub fn new(feed: Feed, admin_key: Option<&str>) -> Self {
        let access = match admin_key {
            None => Access::Open,
            Some(key) => Access::Key { key: Arc::new(key.to_owned()), cookie: Arc::new(cookie_value(key)) },
        };
        Ui { feed, access }
    }

    /// Whether the request may see the page: no key configured, the admin key as a bearer
    /// header, or the page's cookie.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Access::Key { key, cookie } = &self.access else { return true };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| same(key, presented));
        bearer || cookies(headers).any(|(name, value)| name == COOKIE && same(cookie, value))
    }

    fn key_matches(&self, presented: &str) -> bool {
        match &self.access {
            Access::Open => true,
            Access::Key { key, .. } => same(key, presented),
        }
    }

    fn set_cookie(&self) -> Option<HeaderValue> {
        let Access::Key { cookie, .. } = &self.access else { return None };
        let value = format!("{COOKIE}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=2592000");
        HeaderValue::from_str(&value).ok()
    }
}

/// The cookie's value for `key`: a digest, so the cookie jar never holds the admin key.
fn cookie_value(key: &str) -> String {
    let digest = Sha256::digest(format!("cortex fleet page\0{key}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(expected: &str, presented: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The page's routes, to merge into the operator listener's router.
pub fn router(ui: Ui) -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/login", post(login))
        .route("/ui/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/assets/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/ui/api/state", get(state))
        .route("/ui/api/events", get(events))
        .route("/ui/api/requests", get(requests))
        .route("/ui/api/requests/{id}", get(request))
        .with_state(ui)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    // `no-cache`: revalidate every time, so a page after an upgrade gets the new code.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn html(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

fn unauthorised() -> Response {
    let body = serde_json::json!({"error": {"message": "the fleet page needs the admin key: open /ui?key=<admin key> or send Authorization: Bearer <admin key>"}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// The page; `?key=` signs in (sets the cookie and redirects to a clean address); without
/// access, the login box.
async fn index(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(key) = query.get("key") {
        if !ui.key_matches(key) {
            return html(StatusCode::UNAUTHORIZED, LOGIN_HTML);
        }
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
        if let Some(cookie) = ui.set_cookie() {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return response;
    }
    if ui.allows(&headers) {
        html(StatusCode::OK, INDEX_HTML)
    } else {
        html(StatusCode::UNAUTHORIZED, LOGIN_HTML)
    }
}

/// `POST /ui/login` with `Authorization: Bearer <admin key>`: sets the page's cookie.
async fn login(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|key| ui.key_matches(key)) {
        return unauthorised();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = ui.set_cookie() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /ui/api/state`: the page's whole state and the traffic window, in one document.
async fn state(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if !ui.allows(&headers) {
        return unauthorised();
    }
    let state = ui.feed.state_now();
    let traffic = ui.feed.traffic_now();
    let body = format!("{{\"state\":{state},\"traffic\":{traffic}}}");
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// `GET /ui/api/events`: the live feed.
async fn events(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if !ui.allows(&headers) {
        return unauthorised();
    }
    let mut response = feed::events(&ui.feed).into_response();
    // Proxies must not buffer the stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `GET /ui/api/requests?model=&key=&status=&limit=`: the recent requests, newest first.
async fn requests(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(filter): Query<crate::gateway::core::timeline::Filter>,
) -> Response {
    if !ui.allows(&headers) {
        return unauthorised();
    }
    crate::operator::requests::list(ui.feed.requests(), filter)
}

/// `GET /ui/api/requests/{id}`: one request's timeline.
async fn request(State(ui): State<Ui>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !ui.allows(&headers) {
        return unauthorised();
    }
    crate::operator::requests::one(ui.feed.requests(), &id)
}

#[cfg(test)]
mod tests;
