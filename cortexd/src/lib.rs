//! `cortexd`: the gateway, the reconciler and the CLI of cortex.
