//! The liveness rule, in one place.
//!
//! Seed rule: an agent is offline when `last_seen_at < now - missing_tolerance`. Added
//! here: an agent that reported `offline` is offline, one never heard from is
//! `provisioning`, and after a server restart no agent goes offline before a full
//! tolerance has passed (`grace_until`): the server's downtime is not the agent's fault.
//!
//! Lifecycle (provisioning jobs and the check-in after a wake) comes on top, and every
//! lifecycle state is bounded: `updating` / `deleting` only while a job of that kind is
//! queued or running (jobs give up after their bound), `provisioning` only while a create
//! job is queued or running or a check-in deadline lies ahead. A never-seen agent with
//! neither reads `offline`, as does one that never checked in after its last wake.

use crate::agent::{AgentStatus, ReportedHealth};
use crate::time::Timestamp;

/// How many times Mission Control wakes an agent (the provisioning job's own wake
/// included) before it gives up waiting for the agent's check-in.
pub const MAX_WAKES: u32 = 3;

/// Default seconds an agent has after each wake to check in (heartbeat).
pub const DEFAULT_CHECKIN_TIMEOUT_SECONDS: u32 = 30;

/// The kind of provisioning job an agent has queued or running that shows in its status
/// (the strongest one when several are queued: delete, then update, then create).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobInProgress {
    /// A create job: the agent is being put on its gateway.
    Create,
    /// An update job.
    Update,
    /// A delete job.
    Delete,
}

impl JobInProgress {
    /// The wire name of the job's action: `create`, `update` or `delete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    /// The job kind with wire name `name`, if there is one.
    pub fn from_wire(name: &str) -> Option<Self> {
        [Self::Create, Self::Update, Self::Delete]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// The wait for an agent's heartbeat after Mission Control woke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkin {
    /// Woken `wakes` times; the agent has until `deadline` to heartbeat.
    Awaiting {
        /// When the current wait ends.
        deadline: Timestamp,
        /// Wakes sent so far (at most [`MAX_WAKES`]).
        wakes: u32,
    },
    /// The agent never checked in after its last wake: offline until it heartbeats.
    GaveUp,
}

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
    /// The provisioning job queued or running, if any.
    pub job: Option<JobInProgress>,
    /// The check-in awaited after a wake, or given up on; `None` once the agent checked in.
    pub checkin: Option<Checkin>,
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

    /// The status a reader sees at `now`: `deleting` / `updating` while such a job is in
    /// progress, else the [liveness status](Self::liveness_status).
    pub fn status(&self, now: Timestamp) -> AgentStatus {
        match self.job {
            Some(JobInProgress::Delete) => AgentStatus::Deleting,
            Some(JobInProgress::Update) => AgentStatus::Updating,
            _ => self.liveness_status(now),
        }
    }

    /// The status without job overlays: what transitions are published for.
    pub fn liveness_status(&self, now: Timestamp) -> AgentStatus {
        if self.checkin == Some(Checkin::GaveUp) {
            return AgentStatus::Offline;
        }
        if self.last_seen_at.is_none() {
            let underway =
                self.job.is_some() || matches!(self.checkin, Some(Checkin::Awaiting { .. }));
            return if underway {
                AgentStatus::Provisioning
            } else {
                AgentStatus::Offline
            };
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
            job: None,
            checkin: None,
        }
    }

    fn awaiting() -> Option<Checkin> {
        Some(Checkin::Awaiting {
            deadline: Timestamp::from_millis(T0),
            wakes: 1,
        })
    }

    #[test]
    fn never_seen_is_provisioning_only_while_a_job_runs_or_a_check_in_is_awaited() {
        let now = Timestamp::from_millis(T0);
        let mut f = facts(None, None, 120);
        assert_eq!(f.status(now), AgentStatus::Offline);
        f.job = Some(JobInProgress::Create);
        assert_eq!(f.status(now), AgentStatus::Provisioning);
        f.job = None;
        f.checkin = awaiting();
        assert_eq!(f.status(now), AgentStatus::Provisioning);
        f.checkin = Some(Checkin::GaveUp);
        assert_eq!(f.status(now), AgentStatus::Offline);
    }

    #[test]
    fn update_and_delete_jobs_show_over_any_liveness_status() {
        let now = Timestamp::from_millis(T0);
        let mut f = facts(Some(T0), Some(ReportedHealth::Healthy), 120);
        f.job = Some(JobInProgress::Update);
        assert_eq!(f.status(now), AgentStatus::Updating);
        assert_eq!(f.liveness_status(now), AgentStatus::Healthy);
        f.job = Some(JobInProgress::Delete);
        f.checkin = Some(Checkin::GaveUp);
        assert_eq!(f.status(now), AgentStatus::Deleting);
        assert_eq!(f.liveness_status(now), AgentStatus::Offline);
    }

    #[test]
    fn giving_up_on_a_check_in_makes_even_a_recently_seen_agent_offline() {
        let mut f = facts(Some(T0), Some(ReportedHealth::Healthy), 120);
        f.checkin = Some(Checkin::GaveUp);
        assert_eq!(
            f.status(Timestamp::from_millis(T0 + 1)),
            AgentStatus::Offline
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

    fn job() -> impl Strategy<Value = Option<JobInProgress>> {
        prop_oneof![
            Just(None),
            Just(Some(JobInProgress::Create)),
            Just(Some(JobInProgress::Update)),
            Just(Some(JobInProgress::Delete)),
        ]
    }

    fn checkin() -> impl Strategy<Value = Option<Checkin>> {
        prop_oneof![
            Just(None),
            (0i64..3_000_000, 1u32..=MAX_WAKES).prop_map(|(d, wakes)| Some(Checkin::Awaiting {
                deadline: Timestamp::from_millis(d),
                wakes
            })),
            Just(Some(Checkin::GaveUp)),
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
            job in job(),
            checkin in checkin(),
        ) {
            let f = LivenessFacts {
                last_seen_at: last_seen.map(Timestamp::from_millis),
                reported,
                missing_tolerance_seconds: tol,
                grace_until: grace.map(Timestamp::from_millis),
                job,
                checkin,
            };
            let now_ts = Timestamp::from_millis(now);
            let status = f.status(now_ts);
            match job {
                Some(JobInProgress::Delete) => prop_assert_eq!(status, AgentStatus::Deleting),
                Some(JobInProgress::Update) => prop_assert_eq!(status, AgentStatus::Updating),
                _ => prop_assert_eq!(status, f.liveness_status(now_ts)),
            }
            let status = f.liveness_status(now_ts);
            prop_assert!(!status.is_lifecycle_overlay());
            let gave_up = checkin == Some(Checkin::GaveUp);
            // Provisioning never lasts without a job in progress or a check-in ahead.
            if status == AgentStatus::Provisioning {
                let awaiting = matches!(checkin, Some(Checkin::Awaiting { .. }));
                prop_assert!(job.is_some() || awaiting, "provisioning without a bound");
            }
            match last_seen {
                None if gave_up => prop_assert_eq!(status, AgentStatus::Offline),
                None => {
                    let underway = job.is_some() || checkin.is_some();
                    let expected = if underway { AgentStatus::Provisioning } else { AgentStatus::Offline };
                    prop_assert_eq!(status, expected);
                }
                Some(seen) => {
                    let silent = seen < now - i64::from(tol) * 1000;
                    let graced = grace.is_some_and(|g| now <= g);
                    let expect_offline = gave_up || reported == Some(ReportedHealth::Offline) || (silent && !graced);
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
            if let (Some(deadline), false) = (f.silence_deadline(), gave_up) {
                prop_assert_ne!(f.liveness_status(deadline), AgentStatus::Offline);
                prop_assert_eq!(f.liveness_status(deadline.plus_millis(1)), AgentStatus::Offline);
            }
        }
    }
}
