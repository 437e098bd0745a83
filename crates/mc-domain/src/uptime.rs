//! Uptime and the liveness timeline of one agent, computed from its status transitions
//! (the `agent.healthy` / `agent.degraded` / `agent.offline` / `agent.provisioning`
//! events of the activity log). Pure: the caller passes the transitions and `now`.
//!
//! An agent is *up* while healthy or degraded (it heartbeats); provisioning and offline
//! count as down. Time before the agent existed is not counted at all.

use crate::agent::AgentStatus;
use crate::time::Timestamp;

/// The agent entered status `to` at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    /// When the transition was recorded.
    pub at: Timestamp,
    /// The status entered.
    pub to: AgentStatus,
}

/// A stretch of time in one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSpan {
    /// Start (inclusive).
    pub from: Timestamp,
    /// End (exclusive).
    pub until: Timestamp,
    /// The status throughout.
    pub status: AgentStatus,
}

impl StatusSpan {
    /// Length in milliseconds.
    pub const fn millis(&self) -> i64 {
        self.until.as_millis() - self.from.as_millis()
    }
}

/// Whether an agent in `status` counts as up.
pub const fn is_up(status: AgentStatus) -> bool {
    matches!(status, AgentStatus::Healthy | AgentStatus::Degraded)
}

/// The agent's statuses over `[window_start, now)`, oldest first, adjacent spans merged.
///
/// `changes` may be in any order; the agent starts out provisioning at `created_at`.
/// Empty when the window ends before the agent existed.
pub fn timeline(
    created_at: Timestamp,
    changes: &[StatusChange],
    window_start: Timestamp,
    now: Timestamp,
) -> Vec<StatusSpan> {
    let start = window_start.max(created_at);
    if start >= now {
        return Vec::new();
    }
    let mut sorted: Vec<StatusChange> = changes.to_vec();
    sorted.sort_by_key(|c| c.at);
    let mut status = AgentStatus::Provisioning;
    let mut spans: Vec<StatusSpan> = Vec::new();
    let mut cursor = start;
    for change in sorted {
        if change.at <= start {
            status = change.to;
            continue;
        }
        if change.at >= now {
            break;
        }
        push_span(&mut spans, cursor, change.at, status);
        cursor = change.at;
        status = change.to;
    }
    push_span(&mut spans, cursor, now, status);
    spans
}

fn push_span(spans: &mut Vec<StatusSpan>, from: Timestamp, until: Timestamp, status: AgentStatus) {
    if until <= from {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.status == status && last.until == from => last.until = until,
        _ => spans.push(StatusSpan {
            from,
            until,
            status,
        }),
    }
}

/// The share of `[window_start, now)` (from the agent's creation on) that the agent was
/// up, between 0 and 1; `None` when the agent did not exist yet in that window.
pub fn uptime(
    created_at: Timestamp,
    changes: &[StatusChange],
    window_start: Timestamp,
    now: Timestamp,
) -> Option<f64> {
    let spans = timeline(created_at, changes, window_start, now);
    let total: i64 = spans.iter().map(StatusSpan::millis).sum();
    if total <= 0 {
        return None;
    }
    let up: i64 = spans
        .iter()
        .filter(|s| is_up(s.status))
        .map(StatusSpan::millis)
        .sum();
    #[expect(
        clippy::cast_precision_loss,
        reason = "millisecond sums fit an f64 mantissa for any realistic window"
    )]
    Some(up as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentStatus::{Degraded, Healthy, Offline, Provisioning};
    use proptest::prelude::*;

    const HOUR: i64 = 3600;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000).plus_seconds(seconds)
    }

    fn change(seconds: i64, to: AgentStatus) -> StatusChange {
        StatusChange {
            at: at(seconds),
            to,
        }
    }

    #[test]
    fn an_agent_healthy_all_window_long_has_full_uptime() {
        let changes = [change(-48 * HOUR, Healthy)];
        let up = uptime(at(-100 * HOUR), &changes, at(-24 * HOUR), at(0));
        assert_eq!(up, Some(1.0));
    }

    #[test]
    fn six_offline_hours_of_twenty_four_give_three_quarters() {
        let changes = [
            change(-30 * HOUR, Healthy),
            change(-12 * HOUR, Offline),
            change(-6 * HOUR, Healthy),
        ];
        let up = uptime(at(-100 * HOUR), &changes, at(-24 * HOUR), at(0)).unwrap();
        assert!((up - 0.75).abs() < 1e-9, "{up}");
    }

    #[test]
    fn degraded_counts_as_up_and_provisioning_as_down() {
        let changes = [change(-12 * HOUR, Degraded)];
        let up = uptime(at(-24 * HOUR), &changes, at(-24 * HOUR), at(0)).unwrap();
        assert!((up - 0.5).abs() < 1e-9, "{up}");
    }

    #[test]
    fn time_before_creation_is_not_counted() {
        let changes = [change(-2 * HOUR, Healthy)];
        let up = uptime(at(-2 * HOUR), &changes, at(-24 * HOUR), at(0));
        assert_eq!(up, Some(1.0));
    }

    #[test]
    fn an_agent_created_after_now_has_no_uptime() {
        assert_eq!(uptime(at(10), &[], at(-24 * HOUR), at(0)), None);
    }

    #[test]
    fn timeline_merges_repeated_statuses_and_orders_unsorted_changes() {
        let changes = [
            change(-HOUR, Healthy),
            change(-3 * HOUR, Offline),
            change(-2 * HOUR, Healthy),
            change(-4 * HOUR, Healthy),
        ];
        let spans = timeline(at(-10 * HOUR), &changes, at(-5 * HOUR), at(0));
        let shape: Vec<_> = spans
            .iter()
            .map(|s| (s.status, s.millis() / 1000))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Provisioning, HOUR),
                (Healthy, HOUR),
                (Offline, HOUR),
                (Healthy, 2 * HOUR),
            ]
        );
    }

    fn status() -> impl Strategy<Value = AgentStatus> {
        prop::sample::select(AgentStatus::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn spans_tile_the_window_exactly_and_uptime_stays_in_bounds(
            created in -200i64..0,
            moves in prop::collection::vec((-300i64..10, status()), 0..30),
        ) {
            let changes: Vec<_> = moves.iter().map(|&(s, to)| change(s * 600, to)).collect();
            let created_at = at(created * 600);
            let window_start = at(-24 * HOUR);
            let spans = timeline(created_at, &changes, window_start, at(0));
            prop_assert_eq!(spans.first().map(|s| s.from), Some(window_start.max(created_at)));
            prop_assert_eq!(spans.last().map(|s| s.until), Some(at(0)));
            for pair in spans.windows(2) {
                prop_assert_eq!(pair[0].until, pair[1].from);
                prop_assert_ne!(pair[0].status, pair[1].status);
            }
            let up = uptime(created_at, &changes, window_start, at(0)).unwrap();
            prop_assert!((0.0..=1.0).contains(&up));
        }
    }
}
