//! The counters one declared key is held to, as pure state over `(now, event)`: two token
//! buckets (`rpm`, `tpm`), the requests in flight, and the day's and month's token budgets with
//! the tokens reserved by requests still running. The gateway keeps one [`Counters`] per key
//! behind a mutex (`keys/mod.rs`); nothing here reads a clock or blocks.
//!
//! Budgets are reserve-then-settle: a request reserves its worst case (its output limit plus
//! its prompt's estimate) when it is admitted, and settles what the engine counted when it
//! ends. A request is admitted only while `used + reserved < budget`, checked and reserved in
//! one step, so however many run at once the budget is overshot by at most the last admitted
//! request's own tokens (docs/gateway.md, "Budgets and their bound").

use plans::fleet::KeyLimits;

const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;

/// A token bucket of `capacity` that refills `capacity` per minute, continuously. Its level may
/// go below zero: a reservation larger than what is left is taken whole, and paid back by time.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    at_ms: u64,
}

impl Bucket {
    pub fn full(capacity: u64, now_ms: u64) -> Self {
        let capacity = capacity as f64;
        Bucket { capacity, level: capacity, at_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.level = (self.level + elapsed * self.capacity / MINUTE_MS as f64).min(self.capacity);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Whether something is left (`> 0`); else the seconds until there is.
    pub fn check(&mut self, now_ms: u64, need: f64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.level >= need {
            return Ok(());
        }
        let per_ms = self.capacity / MINUTE_MS as f64;
        let wait_ms = (need - self.level) / per_ms;
        Err(((wait_ms / 1000.0).ceil() as u64).max(1))
    }

    /// Take `amount` (may leave the level negative).
    pub fn take(&mut self, now_ms: u64, amount: f64) {
        self.refill(now_ms);
        self.level -= amount;
    }

    /// Give back `amount` (a reservation that turned out larger than what was used).
    pub fn give(&mut self, now_ms: u64, amount: f64) {
        self.refill(now_ms);
        self.level = (self.level + amount).min(self.capacity);
    }

    /// Follow a changed limit: the level keeps its share of the capacity.
    fn resize(&mut self, capacity: u64) {
        let capacity = capacity as f64;
        if capacity != self.capacity {
            self.level = self.level / self.capacity.max(1.0) * capacity;
            self.capacity = capacity;
        }
    }
}

pub use crate::usage::{Elsewhere, Window};

/// Which limit refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Requests per minute; retry after this many seconds.
    Rpm(u64),
    /// Tokens per minute.
    Tpm(u64),
    /// Requests in flight.
    Concurrency(u32),
    /// The day's budget is spent until the next UTC midnight.
    Day { budget: u64, retry_after_s: u64 },
    /// The month's budget is spent until the first of the next month.
    Month { budget: u64, retry_after_s: u64 },
}

/// Everything counted for one key.
#[derive(Clone, Debug)]
pub struct Counters {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    pub in_flight: u32,
    pub day: Window,
    pub month: Window,
    /// Tokens reserved by requests admitted and not yet settled.
    pub reserved: u64,
    /// Cluster mode: what the other replicas report this key used in their windows.
    pub elsewhere: Elsewhere,
}

impl Counters {
    /// Counters at `now_ms`, with the tokens already used this day and month (from the store).
    pub fn new(now_ms: u64, day_used: u64, month_used: u64) -> Self {
        Counters {
            rpm: None,
            tpm: None,
            in_flight: 0,
            day: Window { index: day_index(now_ms), used: day_used },
            month: Window { index: month_index(now_ms), used: month_used },
            reserved: 0,
            elsewhere: Elsewhere::default(),
        }
    }

    /// Follow the key's limits as the fleet now declares them (a bucket appears full, follows
    /// a new capacity, or goes).
    fn follow(&mut self, limits: &KeyLimits, now_ms: u64) {
        for (bucket, limit) in [(&mut self.rpm, limits.rpm), (&mut self.tpm, limits.tpm)] {
            match (bucket.as_mut(), limit) {
                (_, None) => *bucket = None,
                (None, Some(capacity)) => *bucket = Some(Bucket::full(capacity, now_ms)),
                (Some(existing), Some(capacity)) => existing.resize(capacity),
            }
        }
    }

    /// Start new windows when the day or month turned.
    fn roll(&mut self, now_ms: u64) {
        let (day, month) = (day_index(now_ms), month_index(now_ms));
        if day != self.day.index {
            self.day = Window { index: day, used: 0 };
        }
        if month != self.month.index {
            self.month = Window { index: month, used: 0 };
        }
    }

    /// The checks at the door, from the request's head: in flight, rate, budgets. Admitted, the
    /// request takes one from `rpm` and counts in flight until [`Counters::leave`].
    pub fn enter(&mut self, limits: &KeyLimits, now_ms: u64) -> Result<(), Refusal> {
        self.follow(limits, now_ms);
        self.roll(now_ms);
        if let Some(max) = limits.max_concurrency
            && self.in_flight >= max
        {
            return Err(Refusal::Concurrency(max));
        }
        self.budgets(limits, now_ms)?;
        if let Some(tpm) = &mut self.tpm {
            // Something must be left; the request's own size is reserved after its body.
            tpm.check(now_ms, f64::MIN_POSITIVE).map_err(Refusal::Tpm)?;
        }
        if let Some(rpm) = &mut self.rpm {
            rpm.check(now_ms, 1.0).map_err(Refusal::Rpm)?;
            rpm.take(now_ms, 1.0);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// A request that entered has ended.
    pub fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Reserve `tokens` for a request once its body is read, if the budgets still have room
    /// (checked again here, in the same step as the reservation: requests that passed the
    /// door together cannot all reserve past the budget).
    pub fn reserve(&mut self, limits: &KeyLimits, now_ms: u64, tokens: u64) -> Result<(), Refusal> {
        self.roll(now_ms);
        self.budgets(limits, now_ms)?;
        self.reserved = self.reserved.saturating_add(tokens);
        if let Some(tpm) = &mut self.tpm {
            tpm.take(now_ms, tokens as f64);
        }
        Ok(())
    }

    /// A request that reserved `reserved` tokens used `used`: the reservation goes, the use is
    /// counted in the windows of `now_ms`, and the rate bucket is paid back the difference.
    pub fn settle(&mut self, now_ms: u64, reserved: u64, used: u64) {
        self.roll(now_ms);
        self.reserved = self.reserved.saturating_sub(reserved);
        self.day.used = self.day.used.saturating_add(used);
        self.month.used = self.month.used.saturating_add(used);
        if let Some(tpm) = &mut self.tpm {
            tpm.give(now_ms, reserved as f64 - used as f64);
        }
    }

    fn budgets(&self, limits: &KeyLimits, now_ms: u64) -> Result<(), Refusal> {
        // The other replicas' use counts in the window it was published for.
        let others =
            |mine: &Window, theirs: &Window| if mine.index == theirs.index { theirs.used } else { 0 };
        let committed = |window: &Window, theirs: &Window| {
            window.used.saturating_add(self.reserved).saturating_add(others(window, theirs))
        };
        if let Some(budget) = limits.tokens_per_day
            && committed(&self.day, &self.elsewhere.day) >= budget
        {
            let next = (u64::from(self.day.index) + 1) * DAY_MS;
            return Err(Refusal::Day { budget, retry_after_s: seconds_until(now_ms, next) });
        }
        if let Some(budget) = limits.tokens_per_month
            && committed(&self.month, &self.elsewhere.month) >= budget
        {
            let next = month_start_ms(self.month.index + 1);
            return Err(Refusal::Month { budget, retry_after_s: seconds_until(now_ms, next) });
        }
        Ok(())
    }
}

fn seconds_until(now_ms: u64, at_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// Days since the epoch (UTC).
pub fn day_index(now_ms: u64) -> u32 {
    u32::try_from(now_ms / DAY_MS).unwrap_or(u32::MAX)
}

/// Months since January 1970 (UTC).
pub fn month_index(now_ms: u64) -> u32 {
    let (year, month, _) = civil_from_days(i64::from(day_index(now_ms)));
    u32::try_from((year - 1970) * 12 + i64::from(month) - 1).unwrap_or(0)
}

/// The first moment (Unix ms) of month `index` (months since January 1970).
pub fn month_start_ms(index: u32) -> u64 {
    let year = 1970 + i64::from(index / 12);
    let month = index % 12 + 1;
    u64::try_from(plans::fleet::keys::unix_ms(year, month, 1, 0, 0)).unwrap_or(0)
}

/// `(year, month, day)` of a day since the epoch (Howard Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 1_798_675_200_000 + 12 * 3_600_000; // 2026-12-31T12:00:00Z

    fn limits() -> KeyLimits {
        KeyLimits::default()
    }

    #[test]
    fn rpm_lets_a_minute_through_then_refills_continuously() {
        let limits = KeyLimits { rpm: Some(2), ..limits() };
        let mut counters = Counters::new(NOON, 0, 0);
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
        assert_eq!(counters.enter(&limits, NOON), Err(Refusal::Rpm(30)), "one request per 30 s");
        assert_eq!(counters.enter(&limits, NOON + 29_000), Err(Refusal::Rpm(1)));
        assert_eq!(counters.enter(&limits, NOON + 30_000), Ok(()));
    }

    #[test]
    fn concurrency_counts_requests_in_flight() {
        let limits = KeyLimits { max_concurrency: Some(1), ..limits() };
        let mut counters = Counters::new(NOON, 0, 0);
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
        assert_eq!(counters.enter(&limits, NOON), Err(Refusal::Concurrency(1)));
        counters.leave();
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
    }

    #[test]
    fn budgets_count_reservations_and_refuse_once_committed() {
        let limits = KeyLimits { tokens_per_day: Some(1_000), ..limits() };
        let mut counters = Counters::new(NOON, 900, 900);
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
        // 900 used, nothing reserved: room, so the reservation goes through (and overshoots).
        assert_eq!(counters.reserve(&limits, NOON, 300), Ok(()));
        let midnight_in = 12 * 3_600;
        assert_eq!(
            counters.enter(&limits, NOON),
            Err(Refusal::Day { budget: 1_000, retry_after_s: midnight_in }),
            "900 used + 300 reserved: spent"
        );
        assert_eq!(
            counters.reserve(&limits, NOON, 1),
            Err(Refusal::Day { budget: 1_000, retry_after_s: midnight_in })
        );
        counters.settle(NOON, 300, 50);
        assert_eq!((counters.day.used, counters.reserved), (950, 0));
        assert_eq!(counters.reserve(&limits, NOON, 10), Ok(()));
        // The next day starts from nothing; the month keeps counting.
        let tomorrow = NOON + DAY_MS;
        counters.settle(tomorrow, 10, 10);
        assert_eq!((counters.day.used, counters.month.used), (10, 10), "a new month too: 2027-01-01");
    }

    #[test]
    fn a_month_budget_waits_for_the_first_of_next_month() {
        let limits = KeyLimits { tokens_per_month: Some(10), ..limits() };
        let mut counters = Counters::new(NOON, 0, 10);
        let Err(Refusal::Month { retry_after_s, .. }) = counters.enter(&limits, NOON) else {
            panic!("the month is spent")
        };
        assert_eq!(retry_after_s, 12 * 3_600, "2027-01-01T00:00:00Z");
    }

    #[test]
    fn tpm_reserves_whole_requests_and_pays_back_the_difference() {
        let limits = KeyLimits { tpm: Some(600), ..limits() };
        let mut counters = Counters::new(NOON, 0, 0);
        assert_eq!(counters.enter(&limits, NOON), Ok(()));
        assert_eq!(counters.reserve(&limits, NOON, 1_200), Ok(()), "one request may go below zero");
        assert_eq!(counters.enter(&limits, NOON), Err(Refusal::Tpm(60)), "600 below zero at 10 tokens/s");
        counters.settle(NOON, 1_200, 200);
        assert_eq!(counters.enter(&limits, NOON), Ok(()), "the unused reservation came back");
    }

    #[test]
    fn the_other_replicas_use_counts_in_its_own_window_only() {
        let limits = KeyLimits { tokens_per_day: Some(1_000), ..limits() };
        let mut counters = Counters::new(NOON, 100, 100);
        let today = day_index(NOON);
        counters.elsewhere.day = Window { index: today - 1, used: 5_000 };
        assert_eq!(counters.enter(&limits, NOON), Ok(()), "yesterday's use elsewhere does not count");
        counters.elsewhere.day = Window { index: today, used: 900 };
        assert!(
            matches!(counters.enter(&limits, NOON), Err(Refusal::Day { .. })),
            "100 here + 900 elsewhere"
        );
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
        assert_eq!(month_index(0), 0);
        assert_eq!(month_index(NOON), (2026 - 1970) * 12 + 11);
        assert_eq!(month_start_ms(month_index(NOON) + 1), 1_798_761_600_000);
    }
}
