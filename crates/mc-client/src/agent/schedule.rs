//! When heartbeats go out. Pure functions of their inputs and a random source, so the
//! bounds are unit-tested without waiting.
//!
//! - After a success: the agent's own `heartbeat_config.interval_seconds` plus up to 10 %
//!   jitter (at most [`MAX_INTERVAL_JITTER`]). Jitter only ever *adds*: an agent never
//!   heartbeats more often than configured, and a fleet started together spreads out.
//! - After a transient failure: capped exponential backoff with "equal jitter" (half the
//!   ceiling fixed, half random), so the delay grows even in the unluckiest draw; and never
//!   sooner than the server's `Retry-After`.

use std::time::Duration;

use rand::Rng;

/// The most jitter added to an interval, however long the interval.
pub const MAX_INTERVAL_JITTER: Duration = Duration::from_secs(30);

/// The longest `Retry-After` honoured; a larger one is taken as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Capped exponential backoff for failed heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling after the first failure.
    pub initial: Duration,
    /// The ceiling never exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s after the first failure, doubling up to 60 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The largest delay after `failures` consecutive failures (1 = the first):
    /// `initial * 2^(failures-1)`, capped at `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The delay before the retry after `failures` consecutive failures: uniform in
    /// `[ceiling/2, ceiling]`, and at least the server's `retry_after` (capped at
    /// [`MAX_RETRY_AFTER`]).
    pub fn delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let jittered = half + random_up_to(ceiling - half, rng);
        match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// The delay until the next heartbeat after a successful one: `interval` plus up to
/// 10 % of it (at most [`MAX_INTERVAL_JITTER`]); never less than `interval`.
pub fn next_heartbeat_in(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval + random_up_to((interval / 10).min(MAX_INTERVAL_JITTER), rng)
}

fn random_up_to(limit: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    const SEEDS: u64 = 200;

    #[test]
    fn the_backoff_ceiling_doubles_from_the_initial_delay_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let ceilings: Vec<u128> = (1..=7).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn a_backoff_delay_lies_between_half_the_ceiling_and_the_ceiling() {
        let backoff = Backoff::default();
        for seed in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed);
            for failures in 1..12 {
                let ceiling = backoff.ceiling(failures);
                let delay = backoff.delay(failures, None, &mut rng);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{failures}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_delays_are_jittered() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.delay(5, None, &mut rng)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn a_retry_after_from_the_server_is_a_lower_bound_with_a_cap() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let asked = Duration::from_secs(45);
        assert!(backoff.delay(1, Some(asked), &mut rng) >= asked);
        let huge = Duration::from_secs(10 * 3600);
        assert_eq!(backoff.delay(1, Some(huge), &mut rng), MAX_RETRY_AFTER);
        let small = Duration::from_millis(1);
        assert!(backoff.delay(3, Some(small), &mut rng) >= backoff.ceiling(3) / 2);
    }

    #[test]
    fn the_next_heartbeat_is_never_sooner_than_the_interval_and_at_most_ten_percent_later() {
        for seed in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed);
            for seconds in [1, 5, 60, 3600] {
                let interval = Duration::from_secs(seconds);
                let next = next_heartbeat_in(interval, &mut rng);
                let most = interval + (interval / 10).min(MAX_INTERVAL_JITTER);
                assert!(next >= interval && next <= most, "{seconds}: {next:?}");
            }
        }
    }
}
