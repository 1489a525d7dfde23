//! Retry delays: exponential from 1 s, capped at 60 s (the Python service's Dramatiq
//! `min_backoff=1000, max_backoff=60000`).

use std::time::Duration;

pub const MIN_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Delay before the next delivery after attempt `attempt` (1-based) failed.
pub fn retry_delay(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    (MIN_DELAY * 2u32.pow(exponent)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_and_caps_at_sixty() {
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(0), MIN_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_DELAY);
    }
}
