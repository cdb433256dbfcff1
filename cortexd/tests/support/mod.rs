//! Test support for the gateway: a fake neuron that speaks the neuron API with scripted
//! behaviour, and a harness that runs cortex's gateway in-process against fake neurons.

#![allow(dead_code, reason = "each test binary uses a different part of the support code")]

pub mod fake_neuron;
pub mod gateway;
