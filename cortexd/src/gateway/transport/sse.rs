//! Server-sent events on the streaming hot path: an incremental parser (bytes in, events out) and the encoder.
//!
//! Hand-written rather than taken from a crate: the well-kept ones (`eventsource-stream`,
//! `sse-stream`) wrap a `Stream` of bytes, while the gateway already holds each upstream chunk and
//! wants to translate events as it parses them, without another stream adaptor or an owned
//! `String` pair per event. The subset of the WHATWG rules that matters here is small: lines end
//! in `\n`, `\r\n` or `\r` (also across reads), `:` starts a comment, `data:` lines are joined
//! with `\n`, a blank line dispatches, one leading space of a value is dropped, a leading BOM is
//! skipped. `id:` and `retry:` are ignored (cortex never reconnects to an engine).
//!
//! The parser keeps one buffer for an incomplete line and two for the event being built; they
//! are reused, so steady-state parsing does not allocate. Events borrow from those buffers.

use std::borrow::Cow;

/// One complete event; borrowed from the parser, valid for the duration of the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `"message"` (the SSE default type) when the stream named none.
    pub event: &'a str,
    /// The `data:` lines, joined with `\n`.
    pub data: &'a str,
}

/// Incremental SSE parser: feed it reads of any size, get complete events back.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line whose end has not been read yet.
    partial_line: Vec<u8>,
    /// The `event:` field of the event being built (empty: none yet).
    event: String,
    /// The `data:` lines of the event being built, joined with `\n`.
    data: String,
    /// Whether the event being built has a `data:` line (an empty `data:` still counts).
    has_data: bool,
    /// The last read ended in `\r`: a `\n` opening the next read ends the same line.
    skip_lf: bool,
    /// Whether the first line was seen (a BOM may only open the stream).
    seen_first_line: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk` and calls `on_event` for every event it completes. An error from
    /// `on_event` stops parsing and is returned; the rest of that chunk is dropped.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            let (line, terminator_and_tail) = rest.split_at(end);
            let ended_in_cr = terminator_and_tail.first() == Some(&b'\r');
            rest = terminator_and_tail.get(1..).unwrap_or_default();
            if ended_in_cr {
                match rest.split_first() {
                    Some((b'\n', tail)) => rest = tail,
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            if self.partial_line.is_empty() {
                self.line(line, &mut on_event)?;
            } else {
                // Take the buffer out to borrow it alongside `self`, then give it back (keeping
                // its capacity) so a long line split across reads costs no new allocation.
                let mut whole = std::mem::take(&mut self.partial_line);
                whole.extend_from_slice(line);
                let result = self.line(&whole, &mut on_event);
                whole.clear();
                self.partial_line = whole;
                result?;
            }
        }
        self.partial_line.extend_from_slice(rest);
        Ok(())
    }

    /// Ends the stream: a last line or event left without its terminating newline is still
    /// processed and dispatched. (The SSE spec discards it; engines that close right after
    /// `data: [DONE]` without the blank line would otherwise lose it.)
    pub fn finish<E>(&mut self, mut on_event: impl FnMut(SseEvent<'_>) -> Result<(), E>) -> Result<(), E> {
        if !self.partial_line.is_empty() {
            let whole = std::mem::take(&mut self.partial_line);
            self.line(&whole, &mut on_event)?;
        }
        self.line(b"", &mut on_event)
    }

    fn line<E>(
        &mut self,
        mut line: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.seen_first_line {
            self.seen_first_line = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(on_event);
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return Ok(()), // a comment, e.g. a keep-alive
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or_default();
                (line.get(..colon).unwrap_or_default(), value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.push_str(&utf8(value));
            }
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&utf8(value));
                self.has_data = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E>(&mut self, on_event: &mut impl FnMut(SseEvent<'_>) -> Result<(), E>) -> Result<(), E> {
        let result = if self.has_data {
            let event = if self.event.is_empty() { "message" } else { self.event.as_str() };
            on_event(SseEvent { event, data: &self.data })
        } else {
            Ok(())
        };
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        result
    }
}

/// Decodes a complete line; invalid UTF-8 becomes U+FFFD as the SSE spec says. Borrowed (no
/// allocation) in the normal, valid case.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    // `from_utf8` validates faster than the lossy decoder walks its chunks.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A comment line clients ignore, sent while a request waits so that idle timeouts do not fire.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";

/// Where encoded events go: a `String`, or the `BytesMut` of a response body so that the
/// gateway's hot path writes events straight into what it sends.
pub trait SseBuffer {
    fn push_str(&mut self, text: &str);
}

impl SseBuffer for String {
    fn push_str(&mut self, text: &str) {
        String::push_str(self, text);
    }
}

impl SseBuffer for bytes::BytesMut {
    fn push_str(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
}

/// Appends `event: <event>\ndata: <data>\n\n`; a multi-line `data` becomes several `data:` lines.
pub fn write_event(out: &mut impl SseBuffer, event: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\n");
    write_data(out, data);
}

/// Appends an event without a name (`data: <data>\n\n`), the OpenAI streaming dialect.
pub fn write_data(out: &mut impl SseBuffer, data: &str) {
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push_str("\n");
    }
    out.push_str("\n");
}

/// Appends a comment (`: <text>\n\n`); `text` must not contain a newline.
pub fn write_comment(out: &mut impl SseBuffer, text: &str) {
    out.push_str(": ");
    out.push_str(text);
    out.push_str("\n\n");
}
