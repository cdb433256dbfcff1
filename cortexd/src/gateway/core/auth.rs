//! The key a client presents (`Authorization: Bearer <key>` or `x-api-key: <key>`), and the
//! keys of cortex.toml's `api_keys`, compared in constant time. The fleet's keys, their limits
//! and accounting are `keys`' business.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// The accepted keys; empty means the API is open.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        ApiKeys { keys: keys.into_iter().map(String::into_bytes).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the request's headers carry an accepted key (always true without keys).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        self.keys.is_empty() || presented_key(headers).is_some_and(|presented| self.matches(presented))
    }

    /// Whether `presented` is one of the keys. Every key is compared, without stopping early,
    /// so timing says nothing about which key (or how much of one) matched.
    pub fn matches(&self, presented: &str) -> bool {
        self.keys
            .iter()
            .fold(false, |found, key| found | bool::from(key.as_slice().ct_eq(presented.as_bytes())))
    }
}

/// The key the request presents: `x-api-key`, else a bearer `Authorization`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                // The scheme is case-insensitive (RFC 9110): `bearer` works too.
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, key)| key)
        })
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, axum::http::HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn bearer_and_x_api_key_are_both_accepted() {
        let keys = ApiKeys::new(["k1".to_owned(), "k2".to_owned()]);
        assert!(keys.allows(&headers("authorization", "Bearer k2")));
        assert!(keys.allows(&headers("authorization", "bearer k1")));
        assert!(keys.allows(&headers("authorization", "BEARER k1")));
        assert!(!keys.allows(&headers("authorization", "Basic k1")));
        assert!(keys.allows(&headers("x-api-key", "k1")));
        assert!(!keys.allows(&headers("x-api-key", "k3")));
        assert!(!keys.allows(&headers("authorization", "k1")));
        assert!(!keys.allows(&HeaderMap::new()));
        assert!(ApiKeys::default().allows(&HeaderMap::new()));
    }
}
