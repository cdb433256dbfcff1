//! `neuron`: the node daemon of cortex.
