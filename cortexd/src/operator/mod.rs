//! The operator's surface, above the gateway: the admin API (`admin`, on the inference
//! listener, admin key required) and the fleet page (`ui`, on the operator listener beside
//! `/metrics`), the fleet keys' usage report they and `cortex usage` share (`usage`), and the
//! recent requests' timelines they show (`requests`).

pub(crate) mod admin;
pub(crate) mod requests;
pub(crate) mod ui;
pub(crate) mod usage;
