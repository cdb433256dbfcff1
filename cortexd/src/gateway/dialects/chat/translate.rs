//! A Chat Completions stream translated on its way to the client: the one [`EventTransform`]
//! of every translating dialect, splitting the engine's bytes into events and walking each
//! event's payload.

use bytes::BytesMut;

use crate::gateway::core::error::ApiError;
use crate::gateway::core::forward::EventTransform;
use crate::gateway::core::request_metrics::Tokens;
use crate::gateway::dialects::chat::stream::{ChatStream, Writer};
use crate::gateway::transport::sse::SseParser;

/// The walk of one upstream stream behind its event parser.
pub struct Translate<W> {
    parser: SseParser,
    stream: ChatStream<W>,
}

impl<W: Writer> Translate<W> {
    pub fn new(stream: ChatStream<W>) -> Self {
        Translate { parser: SseParser::new(), stream }
    }
}

impl<W: Writer + Send> EventTransform for Translate<W> {
    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let stream = &mut self.stream;
        // Events are written straight into the response bytes. An Err means the walk already
        // wrote the dialect's failure: the rest is dropped.
        let _ = self.parser.feed(chunk, |event| stream.push(event.data, out));
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let stream = &mut self.stream;
        let _ = self.parser.finish(|event| stream.push(event.data, out));
        let _ = self.stream.finish(out);
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.stream.fail(&error.to_string(), out);
    }

    fn usage(&self) -> Option<Tokens> {
        self.stream.usage().map(|usage| Tokens {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            cached: usage.cached_tokens(),
        })
    }
}
