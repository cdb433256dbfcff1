//! The swap scheduler (spec §7, "Contention"): the pure state machine that decides which request
//! runs where and when a model is swapped in (`machine`), and its shell (`shell`), which feeds it
//! events and carries its decisions out (answers to waiting requests, loads, metrics).

pub(crate) mod machine;
pub(crate) mod shell;

pub use shell::{Arrived, ClusterInputs, LoadTicket, Permit, Scheduler};
