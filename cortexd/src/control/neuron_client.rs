//! The client side of the neuron API (spec §8): discovery, health, models, load, unload and
//! waiting for readiness, with the wire types from `plans::wire`.

use std::borrow::Cow;
use std::time::Duration;

use plans::topology::LoadedModel;
use plans::wire::{
    Discovery, ErrorBody, FenceRequest, FenceResponse, Health, LifecycleResponse, LoadRequest, Models,
    UnloadRequest,
};

/// Why a neuron call failed.
#[derive(Debug, thiserror::Error)]
pub enum NeuronError {
    #[error("neuron {neuron} is unreachable at {endpoint}: {source}")]
    Unreachable { neuron: String, endpoint: String, source: reqwest::Error },
    /// The neuron's generation moved on since the caller looked (409).
    #[error("neuron {neuron} changed since it was observed (generation is now {current})")]
    Stale { neuron: String, current: u64 },
    /// A newer cluster leader fenced the neuron (409 `fenced`): the caller's term is over.
    #[error("neuron {neuron} fenced the call: a newer leader holds term {term}")]
    Fenced { neuron: String, term: u64 },
    #[error("neuron {neuron} refused: {code}: {message}")]
    Refused { neuron: String, status: u16, code: String, message: String },
    #[error("neuron {neuron} answered something unexpected: {source}")]
    Protocol {
        neuron: String,
        #[source]
        source: reqwest::Error,
    },
}

/// A handle on one neuron: its name, endpoint and the token to present. The poller shares one
/// per neuron behind an `Arc` ([`crate::control::poller::Clients`]).
#[derive(Clone, Debug)]
pub struct NeuronClient {
    pub name: String,
    pub endpoint: String,
    /// `endpoint` parsed once: parsing a URL per forwarded request was a measurable share of
    /// the gateway's cost (spec §10).
    base: Option<reqwest::Url>,
    token: Option<String>,
    /// `Bearer <token>` built once: the gateway sends it with every forwarded request.
    authorization: Option<reqwest::header::HeaderValue>,
    /// Where forwarded requests go (`http://` endpoints), worked out once from `base`.
    address: Option<Address>,
    http: reqwest::Client,
    /// The neuron said in discovery that it checks the term of lifecycle calls (`fencing`).
    /// A cluster leader acts only on neurons that do.
    fences: bool,
}

/// A neuron's forwarding address: the `host:port` to connect to and the endpoint's path, which
/// each request target starts with (empty at the root).
#[derive(Clone, Debug)]
struct Address {
    host_port: String,
    prefix: String,
}

impl Address {
    fn of(base: &reqwest::Url) -> Option<Self> {
        let (Some(host), "http") = (base.host_str(), base.scheme()) else { return None };
        let host_port = format!("{host}:{}", base.port_or_known_default().unwrap_or(80));
        let prefix = if base.path() == "/" { String::new() } else { base.path().to_owned() };
        Some(Address { host_port, prefix })
    }
}

/// Whether `path` is one the URL parser would leave exactly as it is (no character to
/// percent-encode, no dot segment, no query): those skip the parser on the forwarding path.
fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !path.contains("/.")
}

impl NeuronClient {
    pub fn new(name: &str, endpoint: &str, token: Option<String>, http: reqwest::Client) -> Self {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let base = reqwest::Url::parse(&endpoint)
            .ok()
            .filter(|url| url.query().is_none() && url.fragment().is_none());
        let authorization = token.as_ref().and_then(|token| {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let address = base.as_ref().and_then(Address::of);
        NeuronClient {
            name: name.to_owned(),
            endpoint,
            base,
            token,
            authorization,
            address,
            http,
            fences: false,
        }
    }

    /// This client, for a neuron whose discovery says whether it checks terms (`fencing`).
    pub fn with_fencing(mut self, fences: bool) -> Self {
        self.fences = fences;
        self
    }

    /// Whether the neuron said in discovery that it checks terms (`false` until it was seen).
    pub fn fences(&self) -> bool {
        self.fences
    }

    /// The URL of `path` on this neuron, from the parsed endpoint (`None`: parse it per call).
    fn url(&self, path: &str) -> Option<reqwest::Url> {
        let base = self.base.as_ref().filter(|_| !path.contains(['?', '#']))?;
        let mut url = base.clone();
        if base.path() == "/" {
            url.set_path(path);
        } else {
            url.set_path(&format!("{}{path}", base.path()));
        }
        Some(url)
    }

    /// Where the gateway's own HTTP/1.1 client sends `path`: the `host:port` to connect to and
    /// the request target (path and query, percent-encoded). The fleet's own paths are plain
    /// and come from the address worked out once; any other goes through the URL parser.
    pub fn http_address<'a>(&'a self, path: &'a str) -> Result<(Cow<'a, str>, Cow<'a, str>), String> {
        if let Some(address) = self.address.as_ref().filter(|_| plain_path(path)) {
            let target = match address.prefix.as_str() {
                "" => Cow::Borrowed(path),
                prefix => Cow::Owned(format!("{prefix}{path}")),
            };
            return Ok((Cow::Borrowed(address.host_port.as_str()), target));
        }
        let url = match self.url(path) {
            Some(url) => url,
            None => reqwest::Url::parse(&format!("{}{path}", self.endpoint)).map_err(|e| e.to_string())?,
        };
        let Some(address) = Address::of(&url) else {
            return Err("the gateway forwards over http:// only".into());
        };
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Ok((Cow::Owned(address.host_port), Cow::Owned(target)))
    }

    /// The `Authorization` header this neuron expects, if it expects one.
    pub fn authorization(&self) -> Option<&reqwest::header::HeaderValue> {
        self.authorization.as_ref()
    }

    /// A request to `path` on this neuron, authenticated.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = match self.url(path) {
            Some(url) => self.http.request(method, url),
            // An endpoint that does not parse fails when the request is sent, as always.
            None => self.http.request(method, format!("{}{path}", self.endpoint)),
        };
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn discovery(&self, timeout: Duration) -> Result<Discovery, NeuronError> {
        self.get_json("/discovery", timeout).await
    }

    pub async fn health(&self, timeout: Duration) -> Result<Health, NeuronError> {
        self.get_json("/health", timeout).await
    }

    pub async fn models(&self, timeout: Duration) -> Result<Models, NeuronError> {
        self.get_json("/models", timeout).await
    }

    /// Ask for a load; returns as soon as the neuron accepted it (the model is `loading`).
    pub async fn load(
        &self,
        request: &LoadRequest,
        timeout: Duration,
    ) -> Result<LifecycleResponse, NeuronError> {
        let response =
            self.send(self.request(reqwest::Method::POST, "/models/load").json(request), timeout).await?;
        self.decode(response).await
    }

    /// Unload (the neuron drains in-flight requests first); returns once it is gone.
    pub async fn unload(
        &self,
        request: &UnloadRequest,
        timeout: Duration,
    ) -> Result<LifecycleResponse, NeuronError> {
        let response =
            self.send(self.request(reqwest::Method::POST, "/models/unload").json(request), timeout).await?;
        self.decode(response).await
    }

    /// Raise the neuron's highest term seen to `term` (a new leader, before it acts).
    pub async fn fence(&self, term: u64, timeout: Duration) -> Result<FenceResponse, NeuronError> {
        let request = self.request(reqwest::Method::POST, "/fence").json(&FenceRequest { term });
        let response = self.send(request, timeout).await?;
        self.decode(response).await
    }

    /// Long-poll until `model` is no longer loading (or `wait` passes); returns its state then.
    pub async fn wait(&self, model: &str, wait: Duration) -> Result<LoadedModel, NeuronError> {
        let timeout_ms = wait.as_millis().to_string();
        let request = self
            .request(reqwest::Method::GET, "/models/wait")
            .query(&[("model", model), ("timeout_ms", timeout_ms.as_str())]);
        let response = self.send(request, wait + Duration::from_secs(5)).await?;
        self.decode(response).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, NeuronError> {
        let response = self.send(self.request(reqwest::Method::GET, path), timeout).await?;
        self.decode(response).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, NeuronError> {
        request.timeout(timeout).send().await.map_err(|source| NeuronError::Unreachable {
            neuron: self.name.clone(),
            endpoint: self.endpoint.clone(),
            source,
        })
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, NeuronError> {
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|source| NeuronError::Protocol { neuron: self.name.clone(), source });
        }
        let body: Option<ErrorBody> = response.json().await.ok();
        let (code, message, generation, term) = match body {
            Some(ErrorBody { error }) => (error.code, error.message, error.generation, error.term),
            None => ("http_error".to_owned(), format!("HTTP {status}"), None, None),
        };
        if status == reqwest::StatusCode::CONFLICT && code == plans::wire::code::FENCED {
            return Err(NeuronError::Fenced { neuron: self.name.clone(), term: term.unwrap_or_default() });
        }
        if status == reqwest::StatusCode::CONFLICT && code == plans::wire::code::GENERATION_MISMATCH {
            return Err(NeuronError::Stale {
                neuron: self.name.clone(),
                current: generation.unwrap_or_default(),
            });
        }
        Err(NeuronError::Refused { neuron: self.name.clone(), status: status.as_u16(), code, message })
    }
}

/// The message of an upstream error body (OpenAI, Anthropic or neuron shape), else the text.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.pointer("/message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    message.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address through the URL parser, as every path took it before the shortcut.
    fn parsed(client: &NeuronClient, path: &str) -> (String, String) {
        let url = reqwest::Url::parse(&format!("{}{path}", client.endpoint)).expect("a URL");
        let target = url.query().map_or_else(|| url.path().to_owned(), |q| format!("{}?{q}", url.path()));
        (format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(80)), target)
    }

    #[test]
    fn the_worked_out_address_is_the_one_the_url_parser_gives() {
        let http = reqwest::Client::new();
        for endpoint in
            ["http://127.0.0.1:8080", "http://gpu-1/", "http://[::1]:9000/neuron/", "http://h:81/a/b"]
        {
            let client = NeuronClient::new("n", endpoint, None, http.clone());
            for path in [
                "/v1/chat/completions",
                "/v1/responses/resp_01.abc-X_y",
                "/v1/responses/id with space",
                "/v1/responses/../x",
                "/v1/responses/%2e%2e",
                "/v1/models?x=1",
            ] {
                let (host, target) = client.http_address(path).expect("an http endpoint");
                assert_eq!(
                    (host.into_owned(), target.into_owned()),
                    parsed(&client, path),
                    "{endpoint} {path}"
                );
            }
        }
        let tls = NeuronClient::new("n", "https://gpu-1", None, http);
        assert!(tls.http_address("/v1/chat/completions").is_err(), "https is refused, not shortcut");
    }
}
