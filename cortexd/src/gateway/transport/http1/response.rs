//! A response as written on the wire: its head with the framing the body needs, the date it
//! carries (formatted once a second), and each body frame in that framing.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderName, StatusCode, header, response};

use super::Framing;

/// How a response's body goes on the wire, decided from its status, the request's method and
/// the body's size hint.
pub fn framing(status: StatusCode, head_only: bool, exact: Option<u64>, http10: bool) -> Option<Framing> {
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    match (bodiless, exact) {
        (true, _) => None,
        (false, Some(length)) => Some(Framing::Length(length)),
        // An HTTP/1.0 client does not know chunked: the body ends with the connection.
        (false, None) if http10 => Some(Framing::Close),
        (false, None) => Some(Framing::Chunked),
    }
}

/// Whether the application asked for the connection to close after this response.
pub fn asks_close(parts: &response::Parts) -> bool {
    parts.headers.get_all(header::CONNECTION).iter().any(|v| super::has_token(v.as_bytes(), "close"))
}

/// Write the status line and headers of `parts` to `out`. The framing headers are the
/// listener's: the application's `content-length`, `transfer-encoding` and `connection` are
/// replaced by what `framing` and `keep_alive` say (a bodiless answer keeps its length).
pub fn write_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    framing: Option<Framing>,
    keep_alive: bool,
    http10: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let ours = |name: &HeaderName| {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && framing.is_some())
    };
    for (name, value) in parts.headers.iter().filter(|(name, _)| !ours(name)) {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        with_date(|date| header_line(out, b"date", date));
    }
    match framing {
        Some(Framing::Length(length)) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        Some(Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(Framing::Close) | None => {}
    }
    match (keep_alive, http10) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, false) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line: the size in hex and CRLF.
pub fn chunk_size_line(out: &mut Vec<u8>, size: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut left = size;
    loop {
        at -= 1;
        digits[at] = HEX[left & 0xf];
        left >>= 4;
        if left == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut left = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (left % 10) as u8;
        left /= 10;
        if left == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// An IMF-fixdate is 29 bytes: `Wed, 02 Dec 2026 06:00:00 GMT`.
const DATE_LEN: usize = 29;

thread_local! {
    /// The second the date was formatted for, and the date.
    static DATE: Cell<(u64, [u8; DATE_LEN])> = const { Cell::new((u64::MAX, [0; DATE_LEN])) };
}

/// `write` given the current date for a `date` header, formatted once a second per thread.
fn with_date(write: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (at, mut date) = DATE.get();
    if at != second {
        let text = httpdate::fmt_http_date(now);
        if text.len() == DATE_LEN {
            date.copy_from_slice(text.as_bytes());
            DATE.set((second, date));
        }
    }
    write(&date);
}

#[cfg(test)]
mod tests {
    use axum::http::Response;

    use super::*;

    fn head(response: Response<()>, framing: Option<Framing>, keep_alive: bool, http10: bool) -> String {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        write_head(&mut out, &parts, framing, keep_alive, http10);
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn the_framing_headers_are_the_listeners() {
        let response = Response::builder()
            .status(201)
            .header("content-type", "text/event-stream")
            .header("content-length", "99")
            .header("connection", "keep-alive")
            .body(())
            .expect("response");
        let text = head(response, Some(Framing::Chunked), false, false);
        assert!(
            text.starts_with("HTTP/1.1 201 Created\r\ncontent-type: text/event-stream\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"), "{text}");
        assert!(!text.contains("99") && !text.contains("keep-alive"), "{text}");
        let old = head(Response::new(()), Some(Framing::Length(1234)), true, true);
        assert!(old.ends_with("content-length: 1234\r\nconnection: keep-alive\r\n\r\n"), "{old}");
    }

    #[test]
    fn bodiless_answers_keep_their_length() {
        let response = Response::builder().header("content-length", "5").body(()).expect("response");
        let text = head(response, framing(StatusCode::OK, true, Some(0), false), true, false);
        assert!(text.contains("content-length: 5\r\n") && !text.contains("transfer-encoding"), "{text}");
        assert_eq!(framing(StatusCode::NO_CONTENT, false, None, false), None);
        assert_eq!(framing(StatusCode::OK, false, None, true), Some(Framing::Close));
        assert_eq!(framing(StatusCode::OK, false, Some(7), false), Some(Framing::Length(7)));
    }

    #[test]
    fn numbers_on_the_wire() {
        for (size, line) in [(0, "0\r\n"), (9, "9\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            let mut out = Vec::new();
            chunk_size_line(&mut out, size);
            assert_eq!(out, line.as_bytes());
        }
        for value in [0, 7, 10, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
        let mut date = Vec::new();
        with_date(|text| date.extend_from_slice(text));
        assert!(httpdate::parse_http_date(std::str::from_utf8(&date).expect("text")).is_ok());
    }
}
