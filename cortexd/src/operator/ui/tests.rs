//! In-process tests of the fleet page's data endpoint, its live feed and its access rules: the
//! router on a port-0 listener, driven by the same watch channels the daemon's tasks write.

use std::sync::Arc;
use std::time::Duration;

use plans::diagnostic::{Diagnostic, Severity};
use plans::fleet::Fleet;
use plans::topology::{DeviceStatus, LoadedModel, ModelState, NeuronStatus, Topology};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::fleetwatch::FleetStatus;
use crate::control::poller::Observed;
use crate::control::status::{Condition, DaemonStatus, QueueStatus};
use crate::gateway::core::traffic::Traffic;
use crate::gateway::transport::sse::SseParser;
use crate::operator::ui::feed::{self, Sources};
use crate::operator::ui::{Ui, router};

const FLEET: &str = r#"
[[neuron]]
name = "atlas"
endpoint = "http://127.0.0.1:1"

[[neuron]]
name = "pico"
endpoint = "http://127.0.0.1:2"

[[model]]
id = "coder"
harness = "sim"
source = "coder.gguf"
vram_mb = 12000
pinned_on = ["atlas"]

[[model]]
id = "embed"
harness = "sim"
source = "embed.gguf"
min_devices = 0
ram_mb = 2000
"#;

fn fleet() -> Fleet {
    let load = plans::fleet::load(&[("fleet/fleet.toml".to_owned(), FLEET.to_owned())]);
    load.fleet.unwrap_or_else(|| panic!("test fleet is valid: {:?}", load.diagnostics))
}

fn model(id: &str, status: ModelState, devices: Vec<u32>, vram_mb: u64, ram_mb: u64) -> LoadedModel {
    LoadedModel {
        id: id.into(),
        harness: "sim".into(),
        status,
        devices,
        vram_mb,
        ram_mb,
        last_used_unix_ms: 0,
        in_flight: 0,
        profile: Some(plans::fleet::Profile {
            harness: "sim".into(),
            source: format!("{id}.gguf"),
            quant: None,
            ctx_size: None,
            args: Vec::new(),
        }),
        load_duration_ms: (status == ModelState::Loaded).then_some(1500),
        error: None,
    }
}

fn topology(coder: ModelState, pico_reachable: bool) -> Topology {
    let device = DeviceStatus {
        index: 0,
        name: "SimGPU 24G".into(),
        vram_total_mb: 24_000,
        // 12000 for coder, 1000 used outside cortex.
        vram_free_mb: 11_000,
        ..DeviceStatus::default()
    };
    Topology::new(
        1,
        vec![
            NeuronStatus {
                name: "atlas".into(),
                reachable: true,
                devices: vec![device],
                ram_total_mb: 64_000,
                ram_free_mb: 60_000,
                models: vec![model("coder", coder, vec![0], 12_000, 0)],
                ..NeuronStatus::default()
            },
            NeuronStatus {
                name: "pico".into(),
                reachable: pico_reachable,
                ram_total_mb: 16_000,
                ram_free_mb: 13_000,
                models: vec![model("embed", ModelState::Loaded, Vec::new(), 0, 2000)],
                ..NeuronStatus::default()
            },
        ],
    )
}

/// The channels the daemon's tasks would write, and a served page over them.
struct Harness {
    observed: watch::Sender<Arc<Observed>>,
    status: watch::Sender<Arc<DaemonStatus>>,
    queues: watch::Sender<Arc<Vec<QueueStatus>>>,
    url: String,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _fleet: watch::Sender<Arc<Fleet>>,
}

async fn serve(admin_key: Option<&str>) -> Harness {
    let (fleet_sender, fleet_receiver) = watch::channel(Arc::new(fleet()));
    let observed = Observed { topology: topology(ModelState::Loading, true), ..Observed::default() };
    let (observed_sender, observed_receiver) = watch::channel(Arc::new(observed));
    let status = DaemonStatus {
        format_version: 1,
        conditions: vec![Condition {
            kind: "NeuronsReachable".into(),
            ok: true,
            reason: "AllReachable".into(),
            message: "2 neuron(s) answer".into(),
        }],
        ..DaemonStatus::default()
    };
    let (status_sender, status_receiver) = watch::channel(Arc::new(status));
    let traffic = Arc::new(Traffic::default());
    traffic.record_at(
        crate::control::poller::now_unix_ms(),
        "coder",
        true,
        Some(Duration::from_millis(80)),
        crate::gateway::core::request_metrics::Tokens { prompt: 100, completion: 42, cached: 75 },
    );
    let (queues_sender, queues) = watch::channel(Arc::new(Vec::new()));
    let sources = Sources {
        fleet: fleet_receiver,
        observed: observed_receiver,
        status: status_receiver,
        queues,
        traffic,
        usage: crate::usage::Usage::in_memory(),
        requests: Arc::new(crate::gateway::core::timeline::Timelines::new(16)),
    };
    let shutdown = CancellationToken::new();
    let (feed, _task) = feed::spawn(sources, shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let app = router(Ui::new(feed, admin_key));
    let served = tokio::spawn(
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future(),
    );
    Harness {
        observed: observed_sender,
        status: status_sender,
        queues: queues_sender,
        url,
        shutdown,
        served,
        _fleet: fleet_sender,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

async fn get_json(url: &str) -> serde_json::Value {
    let response = client().get(url).send().await.expect("state answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("state is JSON")
}

#[tokio::test]
async fn the_state_document_has_every_neuron_device_and_model() {
    let harness = serve(None).await;
    let document = get_json(&format!("{}/ui/api/state", harness.url)).await;
    let state = &document["state"];
    assert_eq!(state["format_version"], 1);
    let neurons: Vec<&str> =
        state["neurons"].as_array().expect("neurons").iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(neurons, ["atlas", "pico"]);
    let device = &state["neurons"][0]["devices"][0];
    assert_eq!(
        (device["total_mb"].as_u64(), device["free_mb"].as_u64(), device["outside_mb"].as_u64()),
        (Some(24_000), Some(11_000), Some(1_000)),
        "the VRAM bar splits into the model, use outside cortex, and free: {device}"
    );
    assert_eq!(device["models"][0]["model"], "coder");
    let ram = &state["neurons"][1]["ram"];
    assert_eq!(
        (ram["models"][0]["model"].as_str(), ram["outside_mb"].as_u64()),
        (Some("embed"), Some(1_000))
    );
    let models: Vec<&str> =
        state["models"].as_array().expect("models").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(models, ["coder", "embed"]);
    let coder = &state["models"][0]["placements"][0];
    assert_eq!((coder["neuron"].as_str(), coder["status"].as_str()), (Some("atlas"), Some("loading")));
    assert!(coder["loading_since_unix_ms"].as_u64().is_some(), "a loading copy says since when: {coder}");
    assert_eq!(state["conditions"][0]["reason"], "AllReachable");
    assert_eq!(state["plan"]["text"], "The first reconcile pass has not finished yet.\n");
    let traffic = &document["traffic"]["models"][0];
    assert_eq!(
        (traffic["model"].as_str(), traffic["completion_tokens"].as_array().map(Vec::len)),
        (Some("coder"), Some(90))
    );
    let sum =
        |field: &str| traffic[field].as_array().map(|v| v.iter().filter_map(|n| n.as_u64()).sum::<u64>());
    assert_eq!(
        (sum("prompt_tokens"), sum("cached_tokens")),
        (Some(100), Some(75)),
        "the cache share's parts"
    );
    harness.shutdown.cancel();
}

/// Reads a page's event stream, event by event.
struct EventReader {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<(String, serde_json::Value)>,
}

impl EventReader {
    async fn open(url: &str, headers: &[(&str, &str)]) -> EventReader {
        let mut request = client().get(format!("{url}/ui/api/events"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("events answer");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventReader { response, parser: SseParser::new(), ready: Default::default() }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("the stream reads")?;
            let ready = &mut self.ready;
            let _ = self.parser.feed::<()>(&chunk, |event| {
                let data = serde_json::from_str(event.data).expect("event data is JSON");
                ready.push_back((event.event.to_owned(), data));
                Ok(())
            });
        }
    }

    /// Skip events until a `state` event satisfies `wanted`.
    async fn state_where(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let (kind, data) = self.next().await.expect("the stream goes on");
            if kind == "state" && wanted(&data) {
                return data;
            }
        }
    }
}

#[tokio::test]
async fn the_feed_starts_with_the_whole_state_and_follows_every_change() {
    let harness = serve(None).await;
    let mut events = EventReader::open(&harness.url, &[]).await;
    let (first, state) = events.next().await.expect("a first event");
    assert_eq!(first, "state");
    assert_eq!(state["models"][0]["placements"][0]["status"], "loading");
    let (second, traffic) = events.next().await.expect("a second event");
    assert_eq!((second.as_str(), traffic["models"][0]["model"].as_str()), ("traffic", Some("coder")));

    // The model finishes loading: the next document says so.
    harness.observed.send_replace(Arc::new(Observed {
        topology: topology(ModelState::Loaded, true),
        ..Observed::default()
    }));
    let state = events.state_where(|s| s["models"][0]["placements"][0]["status"] == "loaded").await;
    assert_eq!(state["models"][0]["estimated_cold_start_ms"], 1500);
    assert_eq!(state["models"][1]["queue_depth"], 0, "no queue yet: {}", state["models"][1]);

    // Requests queue for `embed` in the gateway: its row shows how many and for how long.
    let queue = QueueStatus { model: "embed".into(), waiting: 4, oldest_wait_ms: 2500, in_flight: 1 };
    harness.queues.send_replace(Arc::new(vec![queue]));
    let state = events.state_where(|s| s["models"][1]["queue_depth"] == 4).await;
    assert_eq!(
        (state["models"][1]["queue_oldest_wait_ms"].as_u64(), state["models"][0]["queue_depth"].as_u64()),
        (Some(2500), Some(0))
    );

    // An invalid edit: the errors arrive with their position; the last good revision stays.
    let diagnostic = Diagnostic {
        path: "fleet/fleet.toml".into(),
        line: 7,
        column: 1,
        severity: Severity::Error,
        message: "unknown key `replicass`".into(),
    };
    harness.status.send_modify(|status| {
        let status = Arc::make_mut(status);
        status.fleet = FleetStatus { valid: false, diagnostics: vec![diagnostic], ..FleetStatus::default() };
    });
    let state = events.state_where(|s| s["fleet"]["valid"] == false).await;
    assert_eq!(state["fleet"]["errors"][0], "fleet/fleet.toml:7:1: error: unknown key `replicass`");

    // A neuron vanishes: it stays on the page, unreachable, with what was last seen of it.
    harness.observed.send_replace(Arc::new(Observed {
        topology: topology(ModelState::Loaded, false),
        ..Observed::default()
    }));
    let state = events.state_where(|s| s["neurons"][1]["state"] == "unreachable").await;
    assert_eq!(state["neurons"][1]["ram"]["models"][0]["model"], "embed");

    // Shutdown ends the stream (so the listener's graceful shutdown does not wait on pages).
    harness.shutdown.cancel();
    while events.next().await.is_some() {}
    let served =
        tokio::time::timeout(Duration::from_secs(10), harness.served).await.expect("the listener stops");
    assert!(served.is_ok_and(|r| r.is_ok()), "the listener stopped cleanly");
}

#[tokio::test]
async fn with_an_admin_key_the_page_needs_it_or_its_cookie() {
    let harness = serve(Some("sesame")).await;
    let url = &harness.url;
    let status = |response: reqwest::Response| response.status().as_u16();
    let page = client().get(format!("{url}/ui")).send().await.expect("page answers");
    assert_eq!(page.status(), 401);
    assert!(page.text().await.expect("login page").contains("admin key"), "the login box asks for the key");
    assert_eq!(status(client().get(format!("{url}/ui/api/state")).send().await.expect("state")), 401);
    assert_eq!(status(client().get(format!("{url}/ui/api/events")).send().await.expect("events")), 401);
    assert_eq!(status(client().get(format!("{url}/ui?key=wrong")).send().await.expect("page")), 401);
    // Assets hold no data: the login box needs them before signing in.
    assert_eq!(status(client().get(format!("{url}/ui/assets/app.css")).send().await.expect("css")), 200);

    // `?key=` signs in: a cookie, and a redirect that takes the key out of the address.
    let signed_in = client().get(format!("{url}/ui?key=sesame")).send().await.expect("sign in");
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/ui");
    let set_cookie = signed_in.headers()["set-cookie"].to_str().expect("ASCII cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains("sesame"), "the cookie holds a digest, not the key: {set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let page = client().get(format!("{url}/ui")).header("cookie", &cookie).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let mut events = EventReader::open(url, &[("cookie", &cookie)]).await;
    assert_eq!(events.next().await.map(|(kind, _)| kind).as_deref(), Some("state"));

    // The bearer header works too, and POST /ui/login sets the same cookie.
    let state =
        client().get(format!("{url}/ui/api/state")).bearer_auth("sesame").send().await.expect("state");
    assert_eq!(state.status(), 200);
    let login = client().post(format!("{url}/ui/login")).bearer_auth("sesame").send().await.expect("login");
    assert_eq!(login.status(), 204);
    assert_eq!(login.headers()["set-cookie"].to_str().ok(), Some(set_cookie.as_str()));
    assert_eq!(
        status(client().post(format!("{url}/ui/login")).bearer_auth("nope").send().await.expect("login")),
        401
    );
    harness.shutdown.cancel();
}

#[tokio::test]
async fn the_page_and_its_code_are_served_from_the_binary() {
    let harness = serve(None).await;
    for (path, content_type, needle) in [
        ("/ui", "text/html; charset=utf-8", "/ui/assets/app.js"),
        ("/ui/assets/app.js", "text/javascript; charset=utf-8", "EventSource"),
        ("/ui/assets/app.css", "text/css; charset=utf-8", "--ok"),
    ] {
        let response = client().get(format!("{}{path}", harness.url)).send().await.expect("asset answers");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert!(response.text().await.expect("text").contains(needle), "{path} holds {needle}");
    }
    harness.shutdown.cancel();
}
