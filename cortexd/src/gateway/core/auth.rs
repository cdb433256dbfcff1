//! Client API keys: `Authorization: Bearer <key>` or `x-api-key: <key>`, compared in constant time.

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

    /// Whether the request's headers carry an accepted key (always true without keys).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let presented = headers
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
            .map(str::trim);
        let Some(presented) = presented else { return false };
        // Compare against every key, without stopping early, so timing says nothing about which
        // key (or how much of one) matched.
        self.keys
            .iter()
            .fold(false, |found, key| found | bool::from(key.as_slice().ct_eq(presented.as_bytes())))
    }
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
