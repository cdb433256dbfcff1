//! The contention keys (`min_residency`, `max_wait`, `max_concurrency`, `queue_length`,
//! `queue_timeout`, `routing`), read the same way in `[policy]` (fleet-wide defaults) and `[[model]]`.

use crate::duration;
use crate::fleet::load::fields::Fields;
use crate::fleet::load::{Located, Sink};
use crate::fleet::{Contention, Routing};

/// Reads the contention keys of one table; a bad value is reported and left unset.
pub(super) fn read(fields: &mut Fields<'_, '_, '_>) -> Contention {
    let min_residency = fields.string("min_residency");
    let max_wait = fields.string("max_wait");
    let queue_timeout = fields.string("queue_timeout");
    let max_concurrency = fields.unsigned32("max_concurrency");
    let queue_length = fields.unsigned32("queue_length");
    let routing =
        fields.choice("routing", &[("affinity", Routing::Affinity), ("least_busy", Routing::LeastBusy)]);
    let sink = fields.sink();
    Contention {
        min_residency_ms: min_residency.and_then(|text| duration_ms("min_residency", text, true, sink)),
        max_wait_ms: max_wait.and_then(|text| duration_ms("max_wait", text, true, sink)),
        queue_timeout_ms: queue_timeout.and_then(|text| duration_ms("queue_timeout", text, false, sink)),
        max_concurrency: max_concurrency.and_then(|n| at_least_one("max_concurrency", n, sink)),
        queue_length: queue_length.and_then(|n| at_least_one("queue_length", n, sink)),
        routing,
    }
}

fn duration_ms(key: &str, text: Located<'_, String>, zero_ok: bool, sink: &mut Sink) -> Option<u64> {
    match duration::parse_ms(&text.value) {
        Some(0) if !zero_ok => {
            sink.error(text.at, format!("{key} must be longer than 0"));
            None
        }
        Some(ms) => Some(ms),
        None => {
            let found = &text.value;
            sink.error(
                text.at,
                format!(
                    "{key} must be a duration like \"500ms\", \"10s\" or \"5m\" (units ms, s, m, h, d), found {found:?}"
                ),
            );
            None
        }
    }
}

fn at_least_one(key: &str, value: Located<'_, u32>, sink: &mut Sink) -> Option<u32> {
    if value.value == 0 {
        sink.error(value.at, format!("{key} must be at least 1; leave it out for the default"));
        return None;
    }
    Some(value.value)
}
