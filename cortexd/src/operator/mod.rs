//! The operator's surface, above the gateway: the admin API (`admin`, on the inference
//! listener, admin key required) and the fleet page (`ui`, on the operator listener beside
//! `/metrics`), and the fleet keys' usage report they and `cortex usage` share (`usage`).

pub(crate) mod admin;
pub(crate) mod ui;
pub(crate) mod usage;
