//! The reconcile loop (spec §6), shaped like kube-runtime's controller: every pass is
//! level-triggered and idempotent, and returns when it wants to run next ([`Requeue`]: the
//! resync deadline or the earliest backoff expiry, whichever comes first). The loop keeps that
//! one deadline across wake-ups: a poll that changes nothing, or a status refresh, never pushes
//! it back. What woke a pass is a closed [`Trigger`], logged with the run.
//!
//! The loop knows nothing of neurons or fleets: it drives a [`Pass`] (the real one is
//! `crate::control::reconciler::Reconciler`) from a channel of [`Wake`]s, so it is tested in
//! virtual time with a scripted pass.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::backoff::Backoff;

/// Why a pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A new fleet is in force (also the first pass after start).
    #[default]
    FleetRevision,
    /// A neuron's generation, boot id or reachability moved.
    TopologyChange,
    /// The periodic resync deadline passed.
    Resync,
    /// A (model, neuron) that failed has waited out its backoff.
    BackoffExpiry,
    /// An operator asked for a pass (admin API).
    AdminRequest,
    /// This replica became the cluster's leader (or went back to following).
    Leadership,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FleetRevision => "fleet_revision",
            Trigger::TopologyChange => "topology_change",
            Trigger::Resync => "resync",
            Trigger::BackoffExpiry => "backoff_expiry",
            Trigger::AdminRequest => "admin_request",
            Trigger::Leadership => "leadership",
        }
    }

    /// When several wake-ups queue up during a pass, the one the next pass is logged with.
    fn rank(self) -> u8 {
        match self {
            Trigger::FleetRevision | Trigger::Leadership => 0,
            Trigger::AdminRequest => 1,
            Trigger::TopologyChange => 2,
            Trigger::BackoffExpiry => 3,
            Trigger::Resync => 4,
        }
    }
}

/// What the loop receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Run a pass now.
    Run(Trigger),
    /// Nothing that needs a pass changed, but the status should show the latest observations.
    Refresh,
}

/// When a pass wants to run again, and what that run will be logged as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requeue {
    pub after: Duration,
    /// [`Trigger::Resync`] or [`Trigger::BackoffExpiry`].
    pub trigger: Trigger,
}

/// The earlier of the resync deadline (`resync` from now) and the earliest backoff expiry.
pub fn requeue_after(backoff: &Backoff, resync: Duration, now: Instant) -> Requeue {
    match backoff.next_expiry(now) {
        Some(expiry) if expiry - now < resync => {
            Requeue { after: expiry - now, trigger: Trigger::BackoffExpiry }
        }
        _ => Requeue { after: resync, trigger: Trigger::Resync },
    }
}

/// One reconcile pass and a status refresh: the loop's only contact with the world.
pub trait Pass: Send {
    fn pass(&mut self, trigger: Trigger) -> impl Future<Output = Requeue> + Send;
    fn refresh(&mut self);
}

/// Run passes until `shutdown` or until every sender of `wakes` is gone. The first pass runs
/// at once, as [`Trigger::FleetRevision`].
pub async fn run<P: Pass>(
    mut pass: P,
    mut wakes: mpsc::UnboundedReceiver<Wake>,
    shutdown: CancellationToken,
) {
    let mut due = pass.pass(Trigger::FleetRevision).await;
    // The one deadline: reset only by a pass, never recreated by a wake-up.
    let deadline = tokio::time::sleep(due.after);
    tokio::pin!(deadline);
    let mut pending = drain(&mut wakes, &mut pass, None);
    loop {
        let trigger = match pending.take() {
            Some(trigger) => trigger,
            None => tokio::select! {
                () = shutdown.cancelled() => return,
                wake = wakes.recv() => match wake {
                    None => return,
                    Some(Wake::Refresh) => {
                        pass.refresh();
                        continue;
                    }
                    Some(Wake::Run(trigger)) => trigger,
                },
                () = &mut deadline => due.trigger,
            },
        };
        due = pass.pass(trigger).await;
        deadline.as_mut().reset(Instant::now() + due.after);
        // Wake-ups that queued up during the pass fold into at most one more pass.
        pending = drain(&mut wakes, &mut pass, None);
    }
}

/// Take every queued wake-up; returns the trigger for one more pass if any asked for one.
fn drain<P: Pass>(
    wakes: &mut mpsc::UnboundedReceiver<Wake>,
    pass: &mut P,
    mut pending: Option<Trigger>,
) -> Option<Trigger> {
    let mut refresh = false;
    while let Ok(wake) = wakes.try_recv() {
        match wake {
            Wake::Refresh => refresh = true,
            Wake::Run(trigger) => {
                pending =
                    Some(pending.map_or(trigger, |p| if trigger.rank() < p.rank() { trigger } else { p }));
            }
        }
    }
    if refresh && pending.is_none() {
        pass.refresh();
    }
    pending
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::control::backoff::BackoffPolicy;

    /// A pass that fails its one (model, neuron) `failures` times, then succeeds, recording when
    /// it ran (seconds since the start) and why.
    struct Scripted {
        start: Instant,
        resync: Duration,
        policy: BackoffPolicy,
        backoff: Backoff,
        failures: u32,
        runs: Arc<Mutex<Vec<(u64, Trigger)>>>,
        refreshes: Arc<Mutex<u32>>,
    }

    impl Pass for Scripted {
        fn pass(&mut self, trigger: Trigger) -> impl Future<Output = Requeue> + Send {
            let now = Instant::now();
            self.runs.lock().expect("lock").push(((now - self.start).as_secs(), trigger));
            if !self.backoff.waiting("m", "n1", now) {
                if self.failures > 0 {
                    self.failures -= 1;
                    self.backoff.failed("m", "n1", "boom".into(), self.policy, now);
                } else {
                    self.backoff.succeeded("m", "n1");
                }
            }
            let requeue = requeue_after(&self.backoff, self.resync, now);
            async move { requeue }
        }

        fn refresh(&mut self) {
            *self.refreshes.lock().expect("lock") += 1;
        }
    }

    type Runs = Arc<Mutex<Vec<(u64, Trigger)>>>;

    fn start(failures: u32, resync: u64) -> (mpsc::UnboundedSender<Wake>, Runs, Arc<Mutex<u32>>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let refreshes = Arc::new(Mutex::new(0));
        let scripted = Scripted {
            start: Instant::now(),
            resync: Duration::from_secs(resync),
            policy: BackoffPolicy { base: Duration::from_secs(2), max: Duration::from_secs(300) },
            backoff: Backoff::default(),
            failures,
            runs: runs.clone(),
            refreshes: refreshes.clone(),
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(scripted, receiver, CancellationToken::new()));
        (sender, runs, refreshes)
    }

    fn seen(runs: &Runs) -> Vec<(u64, Trigger)> {
        runs.lock().expect("lock").clone()
    }

    /// Let virtual time pass to `at` seconds after the start (the runtime auto-advances).
    async fn until(at: u64, started: Instant) {
        tokio::time::sleep_until(started + Duration::from_secs(at) + Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_retried_at_2_6_14_30_seconds() {
        let started = Instant::now();
        let (_wakes, runs, _) = start(10, 3600);
        until(62, started).await;
        use Trigger::{BackoffExpiry as B, FleetRevision as F};
        assert_eq!(seen(&runs), [(0, F), (2, B), (6, B), (14, B), (30, B), (62, B)]);
    }

    #[tokio::test(start_paused = true)]
    async fn resync_runs_every_period_even_with_polls_every_2_seconds() {
        let started = Instant::now();
        let (wakes, runs, refreshes) = start(0, 10);
        // The poller publishes every 2 s; nothing moved, so each publish is a status refresh.
        for at in (2..=34).step_by(2) {
            until(at, started).await;
            wakes.send(Wake::Refresh).expect("loop running");
        }
        until(35, started).await;
        use Trigger::{FleetRevision as F, Resync as R};
        assert_eq!(seen(&runs), [(0, F), (10, R), (20, R), (30, R)]);
        assert_eq!(*refreshes.lock().expect("lock"), 17, "every poll refreshed the status");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_expiry_wakes_the_loop_with_no_other_event() {
        let started = Instant::now();
        let (_wakes, runs, refreshes) = start(1, 30);
        until(40, started).await;
        use Trigger::{BackoffExpiry as B, FleetRevision as F, Resync as R};
        assert_eq!(seen(&runs), [(0, F), (2, B), (32, R)]);
        assert_eq!(*refreshes.lock().expect("lock"), 0, "no event but the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_in_between_keeps_the_backoff_deadline() {
        let started = Instant::now();
        let (wakes, runs, _) = start(2, 30);
        until(1, started).await;
        wakes.send(Wake::Run(Trigger::TopologyChange)).expect("loop running");
        wakes.send(Wake::Refresh).expect("loop running");
        until(7, started).await;
        use Trigger::{BackoffExpiry as B, FleetRevision as F, TopologyChange as T};
        assert_eq!(seen(&runs), [(0, F), (1, T), (2, B), (6, B)]);
    }
}
