//! The one retry delay of the crate: what the background checkpointer waits after a failed
//! checkpoint, and the upload task after a failed storage request.
//!
//! Exponential with jitter: `min × 2^(failures − 1)`, capped at `max`, then drawn uniformly
//! from its upper half. The jitter keeps many databases (or processes) that failed together,
//! say on one full disk or one storage outage, from retrying in lockstep; the lower bound
//! keeps the delay growing.

use std::time::Duration;

/// How long to wait before the next attempt, after `failures` failures in a row (≥ 1).
pub(crate) fn retry_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let delay = min.saturating_mul(1u32 << exponent).min(max);
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_within_its_jitter_and_stops_at_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for failures in 1..=40 {
            let ceiling = min.saturating_mul(1u32 << (failures - 1).min(20)).min(max);
            let delay = retry_delay(min, max, failures);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{failures} failures: {delay:?} vs {ceiling:?}");
        }
        assert!(retry_delay(min, max, 0) <= min, "no failure counted yet: the shortest delay");
        assert!(retry_delay(min, max, u32::MAX) <= max);
    }
}
