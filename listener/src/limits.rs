//! The listener's limits and timeouts: the `[listener]` table of cortex.toml and neuron.toml,
//! with the defaults a server facing a network needs.

use std::time::Duration;

/// How many connections a listener holds, and how long each side of an exchange may take.
///
/// Every timeout closes the connection when it expires; the body timeouts fail the request's
/// body instead, so that the route answers 408 before the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections open at once; past that, a new one is answered 503 and closed.
    #[serde(deserialize_with = "positive::count")]
    pub max_connections: usize,
    /// From a new connection, or from the first byte of a request on a kept-alive one, to the
    /// end of the request's head.
    #[serde(deserialize_with = "positive::duration")]
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    #[serde(deserialize_with = "positive::duration")]
    pub idle_timeout: Duration,
    /// The longest gap between two reads of a request body.
    #[serde(deserialize_with = "positive::duration")]
    pub body_read_timeout: Duration,
    /// From the first read of a request body to its end.
    #[serde(deserialize_with = "positive::duration")]
    pub body_timeout: Duration,
    /// The longest a response may wait for the client to take more of it (a client that stops
    /// reading).
    #[serde(deserialize_with = "positive::duration")]
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Settings that must be more than zero: a zero would refuse every connection, or close it at
/// once.
mod positive {
    use std::time::Duration;

    use serde::de::{Deserialize, Deserializer, Error};

    pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let duration = plans::duration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(D::Error::custom("a zero duration would close every connection at once"));
        }
        Ok(duration)
    }

    pub fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        match usize::deserialize(deserializer)? {
            0 => Err(D::Error::custom("zero would refuse every connection")),
            count => Ok(count),
        }
    }
}
