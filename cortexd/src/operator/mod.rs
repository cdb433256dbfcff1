//! The operator's surface, above the gateway: the admin API (`admin`, on the inference
//! listener, admin key required) and the fleet page (`ui`, on the operator listener beside
//! `/metrics`).

pub mod admin;
pub mod ui;
