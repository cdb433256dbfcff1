//! Overload shedding at the door: the bound on requests in flight and the event-loop delay.
//!
//! Both are checked before a request's body is read, so an overload costs a short 503 per
//! request instead of buffered bodies and queued work. The in-flight bound caps memory; the
//! delay catches CPU saturation, which no count can: when the runtime runs a 10 ms probe more
//! than `overload_delay` late, every admitted request is already waiting that long for CPU, and
//! taking more only makes everyone later (measured: docs/benchmarks.md). The delay must hold
//! over [`SUSTAINED_PROBES`] probes in a row: a moment's preemption by another process on the
//! host does not shed, a saturated gateway does, and one on-time probe reopens the door.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::gateway::core::error::ApiError;

/// How often the event loop's delay is sampled.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// How many probes in a row must run late before requests are shed.
const SUSTAINED_PROBES: usize = 4;

/// The gateway-wide bounds on inference requests.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    limit: usize,
    /// How late the event loop has run over the last probes (the least of them), in µs.
    delay_us: AtomicU64,
    /// Past this delay new requests are shed; zero never sheds.
    max_delay: Duration,
}

/// One admitted request; its place is given back when the last holder drops it.
#[derive(Debug)]
pub struct Admitted(Arc<Admission>);

impl Admission {
    pub fn new(limit: usize, max_delay: Duration) -> Self {
        Admission { in_flight: AtomicUsize::new(0), limit, delay_us: AtomicU64::new(0), max_delay }
    }

    /// A place for one more request, or the overload error when cortex is full or too late.
    pub fn admit(self: &Arc<Self>) -> Result<Arc<Admitted>, ApiError> {
        let delay = self.delay();
        if !self.max_delay.is_zero() && delay > self.max_delay {
            return Err(overloaded(format!(
                "cortex is overloaded (its event loop runs {} ms late); try again shortly",
                delay.as_millis()
            )));
        }
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded(format!(
                "cortex has {} requests in flight, its limit; try again shortly",
                self.limit
            )));
        }
        Ok(Arc::new(Admitted(self.clone())))
    }

    /// How late the event loop has run lately (the least delay of the last probes).
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Record the event loop's sustained delay.
    fn observe_delay(&self, late: Duration) {
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(micros, Ordering::Relaxed);
        metrics::gauge!("cortex_gateway_loop_delay_seconds").set(late.as_secs_f64());
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn overloaded(message: String) -> ApiError {
    ApiError::Overloaded { message, retry_after_s: 1 }
}

/// The lateness of the last [`SUSTAINED_PROBES`] probes.
#[derive(Debug, Default)]
struct Recent {
    late: [Duration; SUSTAINED_PROBES],
    next: usize,
}

impl Recent {
    /// Add one probe's lateness; returns the least of the recent ones (the sustained delay).
    pub fn push(&mut self, late: Duration) -> Duration {
        self.late[self.next] = late;
        self.next = (self.next + 1) % SUSTAINED_PROBES;
        self.late.iter().copied().min().unwrap_or_default()
    }
}

/// Sample the event loop's delay every [`PROBE_INTERVAL`] until `shutdown`: a tick's lateness
/// is how long a ready task waits for a worker right now.
pub async fn probe_delay(admission: Arc<Admission>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut recent = Recent::default();
    loop {
        let due = tokio::select! {
            () = shutdown.cancelled() => return,
            due = ticks.tick() => due,
        };
        admission.observe_delay(recent.push(due.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_shed_past_the_in_flight_bound_and_past_the_delay() {
        let admission = Arc::new(Admission::new(2, Duration::from_millis(50)));
        let first = admission.admit().expect("room");
        let _second = admission.admit().expect("room");
        assert!(matches!(admission.admit(), Err(ApiError::Overloaded { .. })), "third is over the bound");
        drop(first);
        let third = admission.admit().expect("a place was given back");
        drop(third);

        admission.observe_delay(Duration::from_millis(80));
        let Err(ApiError::Overloaded { message, retry_after_s }) = admission.admit() else {
            panic!("a late event loop sheds");
        };
        assert!(message.contains("80 ms late"), "{message}");
        assert_eq!(retry_after_s, 1);
        admission.observe_delay(Duration::from_millis(3));
        assert!(admission.admit().is_ok(), "admits again once the loop keeps up");

        let never = Arc::new(Admission::new(2, Duration::ZERO));
        never.observe_delay(Duration::from_secs(5));
        assert!(never.admit().is_ok(), "a zero bound never sheds on delay");
    }

    #[test]
    fn only_a_sustained_delay_counts() {
        let ms = Duration::from_millis;
        let mut recent = Recent::default();
        assert_eq!(recent.push(ms(500)), ms(0), "one late probe is a moment's preemption");
        recent.push(ms(90));
        recent.push(ms(70));
        assert_eq!(recent.push(ms(80)), ms(70), "four late probes in a row: late by the least");
        assert_eq!(recent.push(ms(1)), ms(1), "one probe on time reopens");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_probe_sees_a_saturated_event_loop_and_its_recovery() {
        let admission = Arc::new(Admission::new(8, Duration::from_millis(50)));
        let shutdown = CancellationToken::new();
        let probe = tokio::spawn(probe_delay(admission.clone(), shutdown.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Keep the only worker busy in 80 ms slices, as a saturated runtime would, letting the
        // probe run (late) in between, until it reports the sustained delay.
        while admission.delay() < Duration::from_millis(60) {
            assert!(std::time::Instant::now() < deadline, "the probe never saw the delay");
            let busy_until = std::time::Instant::now() + Duration::from_millis(80);
            while std::time::Instant::now() < busy_until {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
        assert!(matches!(admission.admit(), Err(ApiError::Overloaded { .. })));
        // Once the worker is free again the next probe runs on time and admission reopens.
        while admission.delay() >= Duration::from_millis(50) {
            assert!(std::time::Instant::now() < deadline, "the delay never came down");
            tokio::task::yield_now().await;
        }
        assert!(admission.admit().is_ok());
        shutdown.cancel();
        probe.await.expect("the probe ends on shutdown");
    }
}
