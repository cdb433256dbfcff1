//! The scheduler's decisions in virtual time, table-driven: each case is a script of timed
//! events on one contended neuron `n1` (room for one on-demand model; loads take 2 s) and the
//! exact log of what the scheduler decided.

use std::collections::{BTreeMap, BTreeSet};

use expect_test::{Expect, expect};

use crate::gateway::core::scheduler::machine::{
    Arrival, Command, LoadResult, Machine, Mode, Observed, Placed, Placer, Remote, Settings, Tag,
};
use plans::plan::Activity;

const LOAD_MS: u64 = 2_000;

fn settings() -> Settings {
    Settings {
        max_concurrency: None,
        queue_length: 8,
        queue_timeout_ms: 60_000,
        max_wait_ms: 10_000,
        min_residency_ms: 5_000,
        priority: 50,
        routing: plans::fleet::Routing::Affinity,
        load_factor: plans::fleet::LoadFactor::default(),
    }
}

/// The neuron as the fake placer sees it: which on-demand models hold its room.
#[derive(Default)]
struct Neuron {
    resident: BTreeSet<String>,
    room: usize,
    unplaceable: BTreeSet<String>,
}

impl Placer<()> for Neuron {
    fn place(&mut self, model: &str, activity: &Activity) -> Placed<()> {
        if self.unplaceable.contains(model) {
            return Placed::Never { why: format!("{model} needs more VRAM than any neuron has") };
        }
        let mut evicts = Vec::new();
        if self.resident.len() >= self.room {
            // Busy-aware like the planner: a model with queued requests goes last.
            let victim =
                self.resident.iter().min_by_key(|m| (activity.queued.get(*m).copied().unwrap_or(0), *m));
            evicts.extend(victim.cloned());
        }
        Placed::Load { neuron: "n1".into(), evicts, placement: () }
    }
}

struct World {
    now: u64,
    machine: Machine,
    neuron: Neuron,
    settings: BTreeMap<String, Settings>,
    /// (ready at, model) of loads under way.
    loading: Vec<(u64, String)>,
    log: String,
}

impl World {
    fn new(mode: Mode) -> World {
        World {
            now: 0,
            machine: Machine::new(mode),
            neuron: Neuron { room: 1, ..Neuron::default() },
            settings: BTreeMap::new(),
            loading: Vec::new(),
            log: String::new(),
        }
    }

    fn settings(&self, model: &str) -> Settings {
        self.settings.get(model).copied().unwrap_or_else(settings)
    }

    fn carry(&mut self, commands: Vec<Command<()>>) {
        for command in commands {
            let line = match command {
                Command::Admit { request, model, neuron, waited_ms } => {
                    format!("admit #{request} {model} on {neuron} after {waited_ms}ms")
                }
                Command::Reject { request, model, rejection } => {
                    format!("reject #{request} {model}: {rejection:?}")
                }
                Command::Load { model, neuron, evicts, .. } => {
                    for evicted in &evicts {
                        self.neuron.resident.remove(evicted);
                    }
                    self.loading.push((self.now + LOAD_MS, model.clone()));
                    format!("load {model} on {neuron} evicting {evicts:?}")
                }
            };
            self.log.push_str(&format!("t={:>6} {line}\n", self.now));
        }
    }

    /// Run loads and timers due up to `until`, in time order.
    fn advance(&mut self, until: u64) {
        loop {
            let load = self.loading.iter().map(|(at, _)| *at).min();
            let next = [load, self.machine.wake_at()].into_iter().flatten().filter(|&t| t <= until).min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            if let Some(i) = self.loading.iter().position(|(t, _)| *t == at) {
                let (_, model) = self.loading.remove(i);
                self.neuron.resident.insert(model.clone());
                self.log.push_str(&format!("t={:>6} ready {model}\n", self.now));
                let commands =
                    self.machine.load_done(self.now, &model, "n1", LoadResult::Ready, &mut self.neuron);
                self.carry(commands);
            } else {
                let commands = self.machine.tick(self.now, &mut self.neuron);
                self.carry(commands);
            }
        }
        self.now = self.now.max(until);
    }

    fn step(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at: u64 = words[0].parse().expect("time");
        self.advance(at);
        let commands = match words[1..] {
            ["resident", ref models @ ..] => {
                self.neuron.resident.extend(models.iter().map(|m| (*m).to_owned()));
                let copies: Vec<(String, String, Observed)> =
                    models.iter().map(|m| ((*m).to_owned(), "n1".to_owned(), Observed::Ready)).collect();
                self.machine.observe(self.now, &copies, &mut self.neuron)
            }
            ["arrive", id, model] => {
                let id: u64 = id.trim_start_matches('#').parse().expect("id");
                let settings = self.settings(model);
                let (arrival, commands) =
                    self.machine.arrive(self.now, id, model, settings, &mut self.neuron);
                let line = match arrival {
                    Arrival::Admitted { neuron } => format!("#{id} {model} admitted on {neuron}"),
                    Arrival::Queued => format!("#{id} {model} queued"),
                    Arrival::Rejected(rejection) => format!("#{id} {model} refused: {rejection:?}"),
                };
                self.log.push_str(&format!("t={:>6} {line}\n", self.now));
                commands
            }
            ["arrive_as", id, model, key, priority] => {
                let id: u64 = id.trim_start_matches('#').parse().expect("id");
                let settings = self.settings(model);
                let tag =
                    Tag { priority: priority.parse().expect("priority"), key: key.into(), ..Tag::default() };
                let (arrival, commands) =
                    self.machine.arrive_as(self.now, id, model, settings, tag, &mut self.neuron);
                let line = match arrival {
                    Arrival::Admitted { neuron } => format!("#{id} {model} ({key}) admitted on {neuron}"),
                    Arrival::Queued => format!("#{id} {model} ({key}) queued"),
                    Arrival::Rejected(rejection) => format!("#{id} {model} ({key}) refused: {rejection:?}"),
                };
                self.log.push_str(&format!("t={:>6} {line}\n", self.now));
                commands
            }
            ["continue", id, model] => {
                let settings = self.settings(model);
                let line = if self.machine.arrive_on(self.now, model, "n1", settings) {
                    format!("{id} {model} continued on n1")
                } else {
                    format!("{id} {model} refused: n1 does not serve it now")
                };
                self.log.push_str(&format!("t={:>6} {line}\n", self.now));
                Vec::new()
            }
            ["finish", model] => self.machine.finish(self.now, model, "n1", &mut self.neuron),
            // A previous leader's residency clocks (cluster mode): `inherit MODEL:SINCE ...`.
            ["inherit", ref clocks @ ..] => {
                let clocks = clocks
                    .iter()
                    .map(|clock| {
                        let (model, since) = clock.split_once(':').expect("MODEL:SINCE");
                        ((model.to_owned(), "n1".to_owned()), since.parse().expect("since"))
                    })
                    .collect();
                self.machine.inherit_residency(self.now, clocks);
                self.machine.tick(self.now, &mut self.neuron)
            }
            // Other replicas' demand (cluster mode): `remote MODEL:WAITING:IN_FLIGHT ...`, their
            // oldest request arrived now; `remote -` clears it.
            ["remote", "-"] => self.machine.remote(self.now, BTreeMap::new(), &mut self.neuron),
            ["remote", ref demands @ ..] => {
                let mut remote = BTreeMap::new();
                for demand in demands {
                    let parts: Vec<&str> = demand.split(':').collect();
                    let [model, waiting, in_flight] = parts[..] else { panic!("remote {demand:?}") };
                    let waiting = waiting.parse().expect("waiting");
                    let in_flight = in_flight.parse().expect("in flight");
                    remote.insert(model.to_owned(), Remote { waiting, oldest_arrived: self.now, in_flight });
                    self.machine.configure(model, self.settings(model));
                }
                self.machine.remote(self.now, remote, &mut self.neuron)
            }
            ["cancel", id, model] => {
                let id: u64 = id.trim_start_matches('#').parse().expect("id");
                self.machine.cancel(self.now, id, model, &mut self.neuron)
            }
            ["status"] => {
                let status = self.machine.status(self.now);
                self.log.push_str(&format!(
                    "{:>6} status {status:?} swaps {:?}\n",
                    self.now,
                    self.machine.swaps()
                ));
                Vec::new()
            }
            ["until"] => Vec::new(),
            _ => panic!("unknown step {line:?}"),
        };
        self.carry(commands);
    }
}

fn check(mode: Mode, configure: impl FnOnce(&mut World), script: &str, expect: Expect) {
    let mut world = World::new(mode);
    configure(&mut world);
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        world.step(line);
    }
    // What follows from the script, up to 20 s after its last step.
    world.advance(world.now + 20_000);
    world.log.push_str(&format!("t={:>6} end\n", world.now));
    expect.assert_eq(&world.log);
}

#[test]
fn a_resident_models_requests_are_served_and_a_cold_one_waits_for_its_load() {
    check(
        Mode::Elevator,
        |_| {},
        "
        0 arrive #1 od-a
        100 arrive #2 od-a
        2100 arrive #3 od-a
        2100 status
        ",
        expect![[r#"
            t=     0 #1 od-a queued
            t=     0 load od-a on n1 evicting []
            t=   100 #2 od-a queued
            t=  2000 ready od-a
            t=  2000 admit #1 od-a on n1 after 2000ms
            t=  2000 admit #2 od-a on n1 after 1900ms
            t=  2100 #3 od-a admitted on n1
              2100 status [QueueStatus { model: "od-a", waiting: 0, oldest_wait_ms: 0, in_flight: 3 }] swaps {}
            t= 22100 end
        "#]],
    );
}

#[test]
fn the_resident_keeps_the_neuron_while_busy_until_max_wait() {
    // od-a is busy (a request in flight); od-b's oldest request gets the neuron at 10 s of
    // waiting: od-a takes no new request from then on, its running one finishes, the swap
    // follows. The od-a request arriving meanwhile waits for the turn back.
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        0 arrive #1 od-a
        1000 arrive #2 od-b
        1500 arrive #3 od-b
        11000 status
        11500 arrive #4 od-a
        12000 finish od-a
        14100 status
        22000 finish od-b
        22000 finish od-b
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=  1000 #2 od-b queued
            t=  1500 #3 od-b queued
             11000 status [QueueStatus { model: "od-a", waiting: 0, oldest_wait_ms: 0, in_flight: 1 }, QueueStatus { model: "od-b", waiting: 2, oldest_wait_ms: 10000, in_flight: 0 }] swaps {"n1": 1}
            t= 11500 #4 od-a queued
            t= 12000 load od-b on n1 evicting ["od-a"]
            t= 14000 ready od-b
            t= 14000 admit #2 od-b on n1 after 13000ms
            t= 14000 admit #3 od-b on n1 after 12500ms
             14100 status [QueueStatus { model: "od-a", waiting: 1, oldest_wait_ms: 2600, in_flight: 0 }, QueueStatus { model: "od-b", waiting: 0, oldest_wait_ms: 0, in_flight: 2 }] swaps {"n1": 1}
            t= 22000 load od-a on n1 evicting ["od-b"]
            t= 24000 ready od-a
            t= 24000 admit #4 od-a on n1 after 12500ms
            t= 42000 end
        "#]],
    );
}

#[test]
fn an_idle_resident_is_swapped_out_but_never_before_min_residency() {
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        1000 arrive #1 od-b
        ",
        expect![[r#"
            t=  1000 #1 od-b queued
            t=  5000 load od-b on n1 evicting ["od-a"]
            t=  7000 ready od-b
            t=  7000 admit #1 od-b on n1 after 6000ms
            t= 21000 end
        "#]],
    );
}

#[test]
fn an_inherited_residency_clock_counts_from_the_previous_leaders_start() {
    // This replica saw od-a ready at 4000; the leader before it had loaded it at 0: the swap
    // waits for min_residency from 0, not from 4000.
    check(
        Mode::Elevator,
        |_| {},
        "
        4000 resident od-a
        4000 inherit od-a:0
        4500 arrive #1 od-b
        ",
        expect![[r#"
            t=  4500 #1 od-b queued
            t=  5000 load od-b on n1 evicting ["od-a"]
            t=  7000 ready od-b
            t=  7000 admit #1 od-b on n1 after 2500ms
            t= 24500 end
        "#]],
    );
    // Handed over before the copy was first observed: the next observation takes the clock.
    check(
        Mode::Elevator,
        |_| {},
        "
        0 inherit od-a:0
        3000 resident od-a
        3500 arrive #1 od-b
        ",
        expect![[r#"
            t=  3500 #1 od-b queued
            t=  5000 load od-b on n1 evicting ["od-a"]
            t=  7000 ready od-b
            t=  7000 admit #1 od-b on n1 after 3500ms
            t= 23500 end
        "#]],
    );
    // A clock in the future (another host's wall clock ahead) is not taken.
    check(
        Mode::Elevator,
        |_| {},
        "
        3000 resident od-a
        3000 inherit od-a:9000
        3500 arrive #1 od-b
        ",
        expect![[r#"
            t=  3500 #1 od-b queued
            t=  8000 load od-b on n1 evicting ["od-a"]
            t= 10000 ready od-b
            t= 10000 admit #1 od-b on n1 after 6500ms
            t= 23500 end
        "#]],
    );
}

#[test]
fn the_swap_happens_once_the_resident_is_done_and_its_idle_grace_passed() {
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        0 arrive #1 od-a
        6000 arrive #2 od-b
        7000 finish od-a
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=  6000 #2 od-b queued
            t=  9000 load od-b on n1 evicting ["od-a"]
            t= 11000 ready od-b
            t= 11000 admit #2 od-b on n1 after 5000ms
            t= 27000 end
        "#]],
    );
}

#[test]
fn the_longest_waiting_model_goes_next_and_priority_breaks_ties() {
    check(
        Mode::Elevator,
        |world| {
            world.settings.insert("od-d".into(), Settings { priority: 90, ..settings() });
        },
        "
        0 resident od-a
        0 arrive #1 od-a
        1000 arrive #2 od-c
        2000 arrive #3 od-b
        2000 arrive #4 od-d
        11000 finish od-a
        13000 finish od-c
        20500 finish od-d
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=  1000 #2 od-c queued
            t=  2000 #3 od-b queued
            t=  2000 #4 od-d queued
            t= 11000 load od-c on n1 evicting ["od-a"]
            t= 13000 ready od-c
            t= 13000 admit #2 od-c on n1 after 12000ms
            t= 18000 load od-d on n1 evicting ["od-c"]
            t= 20000 ready od-d
            t= 20000 admit #4 od-d on n1 after 18000ms
            t= 25000 load od-b on n1 evicting ["od-d"]
            t= 27000 ready od-b
            t= 27000 admit #3 od-b on n1 after 25000ms
            t= 40500 end
        "#]],
    );
}

#[test]
fn arrival_order_swaps_on_every_demand() {
    check(
        Mode::Arrival,
        |_| {},
        "
        0 resident od-a
        0 arrive #1 od-a
        100 arrive #2 od-b
        150 finish od-a
        200 arrive #3 od-a
        2300 finish od-b
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=   100 #2 od-b queued
            t=   150 load od-b on n1 evicting ["od-a"]
            t=   200 #3 od-a queued
            t=  2150 ready od-b
            t=  2150 admit #2 od-b on n1 after 2050ms
            t=  2300 load od-a on n1 evicting ["od-b"]
            t=  4300 ready od-a
            t=  4300 admit #3 od-a on n1 after 4100ms
            t= 22300 end
        "#]],
    );
}

#[test]
fn max_concurrency_holds_requests_in_cortexs_queue() {
    check(
        Mode::Elevator,
        |world| {
            world.settings.insert("od-a".into(), Settings { max_concurrency: Some(2), ..settings() });
        },
        "
        0 resident od-a
        0 arrive #1 od-a
        0 arrive #2 od-a
        0 arrive #3 od-a
        0 arrive #4 od-a
        500 finish od-a
        600 status
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=     0 #2 od-a admitted on n1
            t=     0 #3 od-a queued
            t=     0 #4 od-a queued
            t=   500 admit #3 od-a on n1 after 500ms
               600 status [QueueStatus { model: "od-a", waiting: 1, oldest_wait_ms: 600, in_flight: 2 }] swaps {}
            t= 20600 end
        "#]],
    );
}

#[test]
fn bounds_refuse_with_retry_after_queue_full_then_timeout() {
    check(
        Mode::Elevator,
        |world| {
            let tight =
                Settings { queue_length: 2, queue_timeout_ms: 3_000, max_wait_ms: 60_000, ..settings() };
            world.settings.insert("od-b".into(), tight);
        },
        "
        0 resident od-a
        0 arrive #1 od-a
        1000 arrive #2 od-b
        1000 arrive #3 od-b
        1000 arrive #4 od-b
        5000 cancel #1 od-a
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=  1000 #2 od-b queued
            t=  1000 #3 od-b queued
            t=  1000 #4 od-b refused: QueueFull { retry_after_s: 3 }
            t=  4000 reject #2 od-b: Timeout { waited_ms: 3000, why: "waiting for its turn on n1 (od-a is serving requests)", retry_after_s: 3 }
            t=  4000 reject #3 od-b: Timeout { waited_ms: 3000, why: "waiting for its turn on n1 (od-a is serving requests)", retry_after_s: 3 }
            t= 25000 end
        "#]],
    );
}

#[test]
fn a_model_that_fits_nowhere_is_refused_with_the_reason() {
    check(
        Mode::Elevator,
        |world| {
            world.neuron.unplaceable.insert("huge".into());
        },
        "
        0 arrive #1 huge
        ",
        expect![[r#"
            t=     0 #1 huge queued
            t=     0 reject #1 huge: Unplaceable { why: "huge needs more VRAM than any neuron has", retry_after_s: 10 }
            t= 20000 end
        "#]],
    );
}

#[test]
fn requests_for_a_draining_copy_wait_for_the_turn_back() {
    // Once od-a is chosen for eviction no request is routed to it; they queue, and the
    // schedule brings od-a back when od-b's work is done.
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        6000 arrive #1 od-b
        6100 arrive #2 od-a
        8000 until
        8200 finish od-b
        ",
        expect![[r#"
            t=  6000 #1 od-b queued
            t=  6000 load od-b on n1 evicting ["od-a"]
            t=  6100 #2 od-a queued
            t=  8000 ready od-b
            t=  8000 admit #1 od-b on n1 after 2000ms
            t= 13000 load od-a on n1 evicting ["od-b"]
            t= 15000 ready od-a
            t= 15000 admit #2 od-a on n1 after 8900ms
            t= 28200 end
        "#]],
    );
}

#[test]
fn a_continuation_holds_its_copy_like_any_request_and_is_refused_once_the_copy_drains() {
    // #1 continues a response od-a made on n1: admitted there at once, it keeps od-a loaded
    // until it finishes, as an ordinary request would. Once od-a is chosen for eviction (at
    // max_wait), a continuation is refused: it could only wait for a copy that is going.
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        0 continue #1 od-a
        1000 arrive #2 od-b
        9000 continue #3 od-a
        11500 continue #4 od-a
        12000 finish od-a
        12000 finish od-a
        ",
        expect![[r#"
            t=     0 #1 od-a continued on n1
            t=  1000 #2 od-b queued
            t=  9000 #3 od-a continued on n1
            t= 11500 #4 od-a refused: n1 does not serve it now
            t= 12000 load od-b on n1 evicting ["od-a"]
            t= 14000 ready od-b
            t= 14000 admit #2 od-b on n1 after 13000ms
            t= 32000 end
        "#]],
    );
}

#[test]
fn a_continuation_for_a_model_not_there_is_refused() {
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        0 continue #1 od-b
        ",
        expect![[r#"
            t=     0 #1 od-b refused: n1 does not serve it now
            t= 20000 end
        "#]],
    );
}

#[test]
fn the_leader_loads_for_other_replicas_and_swaps_by_their_waits_too() {
    // Cluster mode, on the leader: its own queues are empty. Another replica waits for od-b
    // while od-a is busy there (a request in flight): od-a keeps the neuron until od-b's
    // oldest request has waited max_wait (10 s).
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        6000 remote od-b:2:0 od-a:0:1
        ",
        expect![[r#"
            t= 16000 load od-b on n1 evicting ["od-a"]
            t= 18000 ready od-b
            t= 26000 end
        "#]],
    );
    // od-a idle everywhere: the swap starts as soon as od-a's minimum residency allows.
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        1000 remote od-b:1:0
        ",
        expect![[r#"
            t=  5000 load od-b on n1 evicting ["od-a"]
            t=  7000 ready od-b
            t= 21000 end
        "#]],
    );
}

#[test]
fn a_full_models_queue_serves_interactive_keys_first_and_each_key_its_share() {
    check(
        Mode::Elevator,
        |world| {
            world.settings.insert("od-a".into(), Settings { max_concurrency: Some(1), ..settings() });
        },
        "
        0 resident od-a
        0 arrive_as #1 od-a flood 0
        10 arrive_as #2 od-a flood 0
        20 arrive_as #3 od-a flood 0
        30 arrive_as #4 od-a flood 0
        40 arrive_as #5 od-a other 0
        50 arrive_as #6 od-a alice 100
        60 arrive_as #7 od-a bob 100
        70 arrive_as #8 od-a alice 100
        1000 finish od-a
        2000 finish od-a
        3000 finish od-a
        4000 finish od-a
        5000 finish od-a
        6000 finish od-a
        7000 finish od-a
        ",
        expect![[r#"
            t=     0 #1 od-a (flood) admitted on n1
            t=    10 #2 od-a (flood) queued
            t=    20 #3 od-a (flood) queued
            t=    30 #4 od-a (flood) queued
            t=    40 #5 od-a (other) queued
            t=    50 #6 od-a (alice) queued
            t=    60 #7 od-a (bob) queued
            t=    70 #8 od-a (alice) queued
            t=  1000 admit #6 od-a on n1 after 950ms
            t=  2000 admit #7 od-a on n1 after 1940ms
            t=  3000 admit #8 od-a on n1 after 2930ms
            t=  4000 admit #2 od-a on n1 after 3990ms
            t=  5000 admit #5 od-a on n1 after 4960ms
            t=  6000 admit #3 od-a on n1 after 5980ms
            t=  7000 admit #4 od-a on n1 after 6970ms
            t= 27000 end
        "#]],
    );
}

#[test]
fn interactive_demand_takes_the_neuron_before_older_batch_demand() {
    check(
        Mode::Elevator,
        |_| {},
        "
        0 resident od-a
        0 arrive #1 od-a
        100 arrive_as #2 od-b nightly 0
        200 arrive_as #3 od-c alice 100
        6000 finish od-a
        ",
        expect![[r#"
            t=     0 #1 od-a admitted on n1
            t=   100 #2 od-b (nightly) queued
            t=   200 #3 od-c (alice) queued
            t=  8000 load od-c on n1 evicting ["od-a"]
            t= 10000 ready od-c
            t= 10000 admit #3 od-c on n1 after 9800ms
            t= 26000 end
        "#]],
    );
}

/// How the saturated scenario's callers are told apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The batch key is `batch`, the people `interactive`: priorities and fair shares.
    Priorities,
    /// Every key interactive: fair shares among keys only.
    FairShares,
    /// No keys at all (one lane): arrival order, as before keys existed.
    Arrival,
}

/// Waits (ms) per class in a saturated model: one batch key floods `flood` requests at t=0,
/// `interactive` keys each send a request every `every_ms`, every request holds the model's
/// only slot for `service_ms`. Returns (interactive waits, batch waits, keys served).
fn saturated(
    order: Order,
    flood: u64,
    interactive: u64,
    every_ms: u64,
    service_ms: u64,
) -> (Vec<u64>, Vec<u64>, BTreeSet<String>) {
    let mut world = World::new(Mode::Elevator);
    world.settings.insert(
        "od-a".into(),
        Settings {
            max_concurrency: Some(1),
            queue_length: 10_000,
            queue_timeout_ms: u64::MAX / 4,
            ..settings()
        },
    );
    world.step("0 resident od-a");
    let batch_priority = if order == Order::Priorities { 0 } else { 100 };
    // (arrival, id, key, priority)
    let mut arrivals: Vec<(u64, u64, String, i64)> =
        (0..flood).map(|i| (0, i + 1, "flood".to_owned(), batch_priority)).collect();
    let horizon = flood * service_ms;
    for key in 0..interactive {
        let mut at = 50 + key * 37;
        while at < horizon {
            arrivals.push((at, 0, format!("user{key}"), 100));
            at += every_ms;
        }
    }
    arrivals.sort();
    let mut next_id = flood + 1;
    let (mut arrived_at, mut owner) = (BTreeMap::new(), BTreeMap::new());
    let (mut waits_i, mut waits_b, mut served) = (Vec::new(), Vec::new(), BTreeSet::new());
    let mut busy_until: Option<u64> = None;
    let mut pending = arrivals.into_iter().peekable();
    let mut now = 0;
    let settings = world.settings("od-a");
    loop {
        let next_arrival = pending.peek().map(|a| a.0);
        let step = match (next_arrival, busy_until) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        now = now.max(step);
        let mut commands = Vec::new();
        if busy_until == Some(now) {
            busy_until = None;
            commands.extend(world.machine.finish(now, "od-a", "n1", &mut world.neuron));
        }
        while pending.peek().is_some_and(|a| a.0 == now) {
            let Some((at, id, key, priority)) = pending.next() else { break };
            let id = if id == 0 {
                next_id += 1;
                next_id
            } else {
                id
            };
            arrived_at.insert(id, at);
            owner.insert(id, key.clone());
            let lane = if order == Order::Arrival { "" } else { key.as_str() };
            let tag = Tag { priority, key: lane.into(), cost: 512, session: None };
            let (arrival, more) = world.machine.arrive_as(now, id, "od-a", settings, tag, &mut world.neuron);
            commands.extend(more);
            if let Arrival::Admitted { .. } = arrival {
                commands.push(Command::Admit {
                    request: id,
                    model: "od-a".into(),
                    neuron: "n1".into(),
                    waited_ms: 0,
                });
            }
        }
        for command in commands {
            if let Command::Admit { request, .. } = command {
                let key = owner[&request].clone();
                let wait = now - arrived_at[&request];
                if key == "flood" {
                    waits_b.push(wait)
                } else {
                    waits_i.push(wait)
                }
                served.insert(key);
                busy_until = Some(now + service_ms);
            }
        }
    }
    (waits_i, waits_b, served)
}

fn percentile(waits: &mut [u64], p: usize) -> u64 {
    waits.sort_unstable();
    waits.get((waits.len() * p / 100).min(waits.len().saturating_sub(1))).copied().unwrap_or(0)
}

#[test]
fn under_saturation_a_flooding_batch_key_does_not_hold_up_interactive_keys() {
    // 400 batch requests at once, 4 people each asking every 2 s, 100 ms per request.
    let (mut with_i, mut with_b, served) = saturated(Order::Priorities, 400, 4, 2_000, 100);
    let (mut fair_i, mut fair_b, _) = saturated(Order::FairShares, 400, 4, 2_000, 100);
    let (mut fifo_i, mut fifo_b, _) = saturated(Order::Arrival, 400, 4, 2_000, 100);
    let row = |name: &str, i: &mut Vec<u64>, b: &mut Vec<u64>| {
        format!(
            "{name}: interactive p50/p95/max {}/{}/{} ms ({} requests), batch p50/p95 {}/{} ms ({} requests)",
            percentile(i, 50),
            percentile(i, 95),
            percentile(i, 100),
            i.len(),
            percentile(b, 50),
            percentile(b, 95),
            b.len()
        )
    };
    let figures = [
        row("priorities and fair shares", &mut with_i, &mut with_b),
        row("fair shares only", &mut fair_i, &mut fair_b),
        row("arrival order", &mut fifo_i, &mut fifo_b),
    ]
    .join("\n");
    println!("{figures}");
    // A person waits for the request in service and the other people's, never for the flood.
    assert!(percentile(&mut with_i, 95) <= 4 * 100, "{figures}");
    assert!(percentile(&mut fifo_i, 50) > 10_000, "in arrival order they queue behind the flood: {figures}");
    assert_eq!(served.len(), 5, "every key is served, the flood included: {served:?}");
    assert_eq!(with_b.len(), 400, "every batch request is served");
}

#[test]
fn a_copy_on_a_draining_neuron_takes_no_new_request_once_a_copy_elsewhere_is_ready() {
    let mut machine = Machine::new(Mode::Elevator);
    let mut placer = Neuron { room: 1, ..Neuron::default() };
    let one = Settings { max_concurrency: Some(1), ..settings() };
    let copy = |neuron: &str, observed| ("coder".to_owned(), neuron.to_owned(), observed);
    let arrive = |machine: &mut Machine, placer: &mut Neuron, now, id| {
        let (arrival, commands) = machine.arrive(now, id, "coder", one, placer);
        assert!(commands.is_empty(), "{commands:?}");
        arrival
    };
    machine.set_leaving(["n1".to_owned()].into());
    // The replacement is loading: the draining copy serves meanwhile.
    machine.observe(0, &[copy("n1", Observed::Ready), copy("n2", Observed::Loading)], &mut placer);
    assert_eq!(arrive(&mut machine, &mut placer, 0, 1), Arrival::Admitted { neuron: "n1".into() });
    // Ready: new requests go there alone; one that finds it full waits for it, not for n1.
    machine.observe(100, &[copy("n1", Observed::Ready), copy("n2", Observed::Ready)], &mut placer);
    assert_eq!(arrive(&mut machine, &mut placer, 100, 2), Arrival::Admitted { neuron: "n2".into() });
    machine.finish(150, "coder", "n1", &mut placer);
    assert_eq!(arrive(&mut machine, &mut placer, 200, 3), Arrival::Queued);
    let commands = machine.finish(300, "coder", "n2", &mut placer);
    assert_eq!(
        commands,
        vec![Command::Admit { request: 3, model: "coder".into(), neuron: "n2".into(), waited_ms: 100 }]
    );
    // Back in service (uncordoned): both copies serve again.
    machine.set_leaving(BTreeSet::new());
    machine.observe(400, &[copy("n1", Observed::Ready), copy("n2", Observed::Ready)], &mut placer);
    assert_eq!(arrive(&mut machine, &mut placer, 400, 4), Arrival::Admitted { neuron: "n1".into() });
}

/// Affinity routing among three ready copies of `m` (on `a`, `b`, `c`).
mod affinity {
    use super::*;
    use crate::gateway::core::affinity::{Key, Outcome};
    use plans::fleet::Routing;

    fn three_copies(routing: Routing, max_concurrency: Option<u32>) -> (Machine, Settings, Neuron) {
        let mut machine = Machine::new(Mode::Elevator);
        let mut placer = Neuron::default();
        let settings = Settings { routing, max_concurrency, ..settings() };
        machine.configure("m", settings);
        let copies: Vec<(String, String, Observed)> =
            ["a", "b", "c"].iter().map(|n| ("m".to_owned(), (*n).to_owned(), Observed::Ready)).collect();
        machine.observe(0, &copies, &mut placer);
        (machine, settings, placer)
    }

    fn tag(session: u64) -> Tag {
        Tag { session: Some(Key(session)), ..Tag::default() }
    }

    fn arrive(
        machine: &mut Machine,
        now: u64,
        id: u64,
        settings: Settings,
        tag: Tag,
        placer: &mut Neuron,
    ) -> Arrival {
        machine.arrive_as(now, id, "m", settings, tag, placer).0
    }

    fn admitted(arrival: &Arrival) -> String {
        match arrival {
            Arrival::Admitted { neuron } => neuron.clone(),
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn each_session_stays_on_one_copy_and_its_returns_are_hits() {
        let (mut machine, settings, mut placer) = three_copies(Routing::Affinity, None);
        let mut homes: BTreeMap<u64, String> = BTreeMap::new();
        for turn in 0..4u64 {
            for session in 0..12u64 {
                let now = turn * 1_000 + session;
                let neuron = admitted(&arrive(&mut machine, now, now, settings, tag(session), &mut placer));
                assert_eq!(
                    homes.entry(session).or_insert_with(|| neuron.clone()),
                    &neuron,
                    "session {session}"
                );
                machine.finish(now, "m", &neuron, &mut placer);
            }
        }
        let outcomes = machine.take_outcomes();
        let count = |o: Outcome| outcomes.iter().filter(|(_, x)| *x == o).count();
        assert_eq!((count(Outcome::New), count(Outcome::Hit), count(Outcome::Spilled)), (12, 36, 0));
        let homes_used: BTreeSet<&String> = homes.values().collect();
        assert!(homes_used.len() > 1, "twelve sessions over three copies use more than one: {homes:?}");
        let sessions: usize = machine.activity().sessions.values().sum();
        assert_eq!(sessions, 12);
        for ((model, neuron), count) in machine.activity().sessions {
            assert_eq!(model, "m");
            assert_eq!(count, homes.values().filter(|n| **n == neuron).count());
        }
    }

    #[test]
    fn a_hot_session_spills_past_the_bound() {
        let (mut machine, settings, mut placer) = three_copies(Routing::Affinity, None);
        // One session sends six requests that all stay in flight.
        let placed: Vec<String> =
            (0..6).map(|id| admitted(&arrive(&mut machine, id, id, settings, tag(7), &mut placer))).collect();
        let home = &placed[0];
        // Bound: ceil(1.25 × (in flight + 1) / 3): 1, 1, 2, 2, 3, 3 — the home takes 1, then 2, then 3.
        let at_home = placed.iter().filter(|n| *n == home).count();
        assert_eq!(at_home, 3, "{placed:?}");
        let outcomes: Vec<Outcome> = machine.take_outcomes().into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes[0], Outcome::New);
        assert!(outcomes.contains(&Outcome::Spilled), "{outcomes:?}");
    }

    #[test]
    fn least_busy_ignores_the_session() {
        let (mut machine, settings, mut placer) = three_copies(Routing::LeastBusy, None);
        let placed: Vec<String> =
            (0..3).map(|id| admitted(&arrive(&mut machine, id, id, settings, tag(7), &mut placer))).collect();
        assert_eq!(placed, ["a", "b", "c"]);
        assert!(machine.take_outcomes().is_empty());
        assert!(machine.activity().sessions.is_empty());
    }

    #[test]
    fn a_queued_session_waits_for_room_and_takes_the_copy_that_has_it() {
        let (mut machine, settings, mut placer) = three_copies(Routing::Affinity, Some(1));
        let home = admitted(&arrive(&mut machine, 0, 0, settings, tag(7), &mut placer));
        machine.finish(1, "m", &home, &mut placer);
        // Every copy full: three other sessions' requests in flight.
        let mut held = Vec::new();
        for id in 1..=3u64 {
            held.push(admitted(&arrive(&mut machine, 2, id, settings, Tag::default(), &mut placer)));
        }
        assert_eq!(arrive(&mut machine, 3, 9, settings, tag(7), &mut placer), Arrival::Queued);
        // The session's copy frees up first: it goes home.
        let commands = machine.finish(4, "m", &home, &mut placer);
        let admitted: Vec<&str> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Admit { request: 9, neuron, .. } => Some(neuron.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(admitted, [home.as_str()]);
        assert_eq!(held.len(), 3);
    }
}
