//! A request head off the wire: httparse's view turned into an `http::Request`'s parts without
//! copying the header values, and what the head says about its body and its connection.

use axum::http::{HeaderMap, Method, Request, StatusCode, Uri, Version, request};
use bytes::BytesMut;

use super::{Framing, Spans, ends_chunked, has_token, span};

/// The most of a request head (request line and headers) the listener reads.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers in a request head (hyper's default too).
const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub parts: request::Parts,
    /// How the body is delimited: a length, or chunked (a request without either has none).
    pub framing: Framing,
    /// The client allows another request on this connection after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
}

/// A head the listener refuses, with the status and the reason it answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
}

const fn refused(status: StatusCode, message: &'static str) -> Refused {
    Refused { status, message }
}

const TOO_LARGE: Refused =
    refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "the request head is too large");

/// The request head at the front of `buffer`, taken from it once it is all there.
pub fn parse(buffer: &mut BytesMut) -> Result<Option<Head>, Refused> {
    let bad = |message| refused(StatusCode::BAD_REQUEST, message);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD => length,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(bad("the request is not HTTP/1.1")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("the request method is invalid"))?;
    let path = span(buffer, parsed.path.unwrap_or_default().as_bytes());
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let spans = Spans::of(buffer, parsed.headers);
    let head = buffer.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path)).map_err(|_| bad("the request target is invalid"))?;
    let headers = spans.header_map(&head).map_err(|_| bad("a header is invalid"))?;
    let (framing, keep_alive, expects_continue) = delimits(&headers, version)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head { parts: request.into_parts().0, framing, keep_alive, expects_continue }))
}

/// The body's framing, whether the connection is kept alive, and whether the client expects
/// `100 Continue` (RFC 9112 §6.3, §9.3; RFC 9110 §10.1.1).
///
/// A request with both `transfer-encoding` and `content-length`, with conflicting lengths, or
/// with a transfer coding that does not end in `chunked` is refused: read another way by
/// another hop, such a request could smuggle a second one in its body.
fn delimits(headers: &HeaderMap, version: Version) -> Result<(Framing, bool, bool), Refused> {
    let bad = |message| refused(StatusCode::BAD_REQUEST, message);
    let mut lengths = headers.get_all("content-length").iter();
    let length = match lengths.next() {
        None => None,
        Some(first) => {
            if lengths.any(|other| other != first) {
                return Err(bad("the request has conflicting content-length headers"));
            }
            let text = first.to_str().map_err(|_| bad("the content-length is not a number"))?;
            Some(text.trim().parse::<u64>().map_err(|_| bad("the content-length is not a number"))?)
        }
    };
    let framing = match (headers.get("transfer-encoding"), length) {
        (Some(_), Some(_)) => return Err(bad("the request has both content-length and transfer-encoding")),
        (Some(coding), None) if ends_chunked(coding.as_bytes()) => Framing::Chunked,
        (Some(_), None) => return Err(bad("the request's transfer-encoding does not end in chunked")),
        (None, length) => Framing::Length(length.unwrap_or(0)),
    };
    let connection = |token| headers.get_all("connection").iter().any(|v| has_token(v.as_bytes(), token));
    let keep_alive = match version {
        Version::HTTP_10 => connection("keep-alive"),
        _ => !connection("close"),
    };
    let expects_continue = version == Version::HTTP_11
        && headers.get("expect").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok((framing, keep_alive, expects_continue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str) -> Result<Option<Head>, Refused> {
        parse(&mut BytesMut::from(wire))
    }

    #[test]
    fn a_complete_head_becomes_request_parts_and_leaves_the_body_in_the_buffer() {
        let mut buffer = BytesMut::from(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nAnthropic-Beta: a, b\r\n\r\n{}",
        );
        let head = parse(&mut buffer).expect("valid").expect("complete");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/v1/messages?beta=true");
        assert_eq!(head.parts.headers["anthropic-beta"], "a, b");
        assert_eq!((head.framing, head.keep_alive, head.expects_continue), (Framing::Length(2), true, false));
        assert_eq!(&buffer[..], b"{}");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").expect("valid so far").is_none());
    }

    #[test]
    fn framing_connection_and_expect() {
        let chunked = head("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-Continue\r\n\r\n");
        let chunked = chunked.expect("valid").expect("complete");
        assert_eq!((chunked.framing, chunked.expects_continue), (Framing::Chunked, true));
        let old = head("GET / HTTP/1.0\r\n\r\n").expect("valid").expect("complete");
        assert_eq!((old.framing, old.keep_alive), (Framing::Length(0), false));
        let kept =
            head("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n").expect("valid").expect("complete");
        assert!(kept.keep_alive);
        let closed = head("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").expect("valid").expect("complete");
        assert!(!closed.keep_alive);
    }

    #[test]
    fn ambiguous_or_oversized_heads_are_refused() {
        let status = |wire: &str| head(wire).expect_err("refused").status;
        let both = "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(status(both), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status("POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("NOT HTTP\r\n\r\n"), StatusCode::BAD_REQUEST);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}", "y".repeat(MAX_HEAD));
        assert_eq!(status(&long), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
