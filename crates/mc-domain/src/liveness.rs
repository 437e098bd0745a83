//! The liveness rule, in one place.
//!
//! Seed rule: an agent is offline when `last_seen_at < now - missing_tolerance`. Added
//! here: an agent that reported `offline` is offline, one never heard from is
//! `provisioning`, and after a server restart no agent goes offline before a full
//! tolerance has passed (`grace_until`): the server's downtime is not the agent's fault.

use crate::agent::{AgentStatus, ReportedHealth};
use crate::time::Timestamp;

/// Everything the computed status depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessFacts {
    /// The last heartbeat, if any.
    pub last_seen_at: Option<Timestamp>,
    /// The health last reported.
    pub reported: Option<ReportedHealth>,
    /// Seconds of silence tolerated.
    pub missing_tolerance_seconds: u32,
    /// Restart grace: the agent is not offline by silence before this instant.
    pub grace_until: Option<Timestamp>,
}

impl LivenessFacts {
    /// The last instant at which the agent is still not offline by silence, or `None`
    /// when silence does not matter (never seen, or already reported offline).
    pub fn silence_deadline(&self) -> Option<Timestamp> {
        let last_seen = self.last_seen_at?;
        if self.reported == Some(ReportedHealth::Offline) {
            return None;
        }
        let by_tolerance = last_seen.plus_seconds(i64::from(self.missing_tolerance_seconds));
        Some(match self.grace_until {
            Some(grace) if grace > by_tolerance => grace,
            _ => by_tolerance,
        })
    }

    /// The status a reader sees at `now`.
    pub fn status(&self, now: Timestamp) -> AgentStatus {
        if self.last_seen_at.is_none() {
            return AgentStatus::Provisioning;
        }
        match self.silence_deadline() {
            None => AgentStatus::Offline,
            Some(deadline) if now > deadline => AgentStatus::Offline,
            Some(_) => match self.reported {
                Some(ReportedHealth::Degraded) => AgentStatus::Degraded,
                _ => AgentStatus::Healthy,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000_000;

    fn facts(last_seen: Option<i64>, reported: Option<ReportedHealth>, tol: u32) -> LivenessFacts {
        LivenessFacts {
            last_seen_at: last_seen.map(Timestamp::from_millis),
            reported,
            missing_tolerance_seconds: tol,
            grace_until: None,
        }
    }

    #[test]
    fn never_seen_is_provisioning() {
        assert_eq!(
            facts(None, None, 120).status(Timestamp::from_millis(T0)),
            AgentStatus::Provisioning
        );
    }

    #[test]
    fn exactly_at_the_tolerance_is_still_alive_and_one_ms_later_offline() {
        let f = facts(Some(T0), Some(ReportedHealth::Healthy), 120);
        assert_eq!(
            f.status(Timestamp::from_millis(T0 + 120_000)),
            AgentStatus::Healthy
        );
        assert_eq!(
            f.status(Timestamp::from_millis(T0 + 120_001)),
            AgentStatus::Offline
        );
    }

    #[test]
    fn restart_grace_postpones_offline_by_silence() {
        let mut f = facts(Some(T0), Some(ReportedHealth::Degraded), 120);
        f.grace_until = Some(Timestamp::from_millis(T0 + 500_000));
        assert_eq!(
            f.status(Timestamp::from_millis(T0 + 400_000)),
            AgentStatus::Degraded
        );
        assert_eq!(
            f.status(Timestamp::from_millis(T0 + 500_001)),
            AgentStatus::Offline
        );
    }

    fn reported() -> impl Strategy<Value = Option<ReportedHealth>> {
        prop_oneof![
            Just(None),
            Just(Some(ReportedHealth::Healthy)),
            Just(Some(ReportedHealth::Degraded)),
            Just(Some(ReportedHealth::Offline)),
        ]
    }

    proptest! {
        #[test]
        fn status_follows_the_seed_rule_at_every_clock_position(
            last_seen in proptest::option::of(0i64..1_000_000),
            reported in reported(),
            tol in 1u32..10_000,
            grace in proptest::option::of(0i64..2_000_000),
            now in 0i64..3_000_000,
        ) {
            let f = LivenessFacts {
                last_seen_at: last_seen.map(Timestamp::from_millis),
                reported,
                missing_tolerance_seconds: tol,
                grace_until: grace.map(Timestamp::from_millis),
            };
            let now_ts = Timestamp::from_millis(now);
            let status = f.status(now_ts);
            match last_seen {
                None => prop_assert_eq!(status, AgentStatus::Provisioning),
                Some(seen) => {
                    let silent = seen < now - i64::from(tol) * 1000;
                    let graced = grace.is_some_and(|g| now <= g);
                    let expect_offline = reported == Some(ReportedHealth::Offline) || (silent && !graced);
                    prop_assert_eq!(status == AgentStatus::Offline, expect_offline);
                    if !expect_offline {
                        let expected = if reported == Some(ReportedHealth::Degraded) {
                            AgentStatus::Degraded
                        } else {
                            AgentStatus::Healthy
                        };
                        prop_assert_eq!(status, expected);
                    }
                }
            }
            // The deadline is exactly where the status flips to offline.
            if let Some(deadline) = f.silence_deadline() {
                prop_assert_ne!(f.status(deadline), AgentStatus::Offline);
                prop_assert_eq!(f.status(deadline.plus_millis(1)), AgentStatus::Offline);
            }
        }
    }
}
