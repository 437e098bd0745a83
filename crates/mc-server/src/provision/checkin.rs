//! The check-in after a wake: an agent woken by its provisioning job must heartbeat within
//! the check-in timeout. When a deadline passes without one, the agent is woken again
//! (`chat.send` under a fresh idempotency key), up to [`MAX_WAKES`] wakes in all; when the
//! last one goes unanswered too, the agent is offline with `last_provision_error` saying
//! why, and the transition is recorded like every other.
//!
//! The deadlines sit in the registry's check-in index (in memory, in due order; a
//! heartbeat clears the wait without touching it) and in the agent's liveness row (written
//! behind like `last_seen_at`, flushed at once when a deadline is set), so they survive a
//! restart.
//!
//! Each wake sent again is recorded as `agent.wakeup.sent`, in the write-behind batch that
//! stores the new wait.
//!
//! With several replicas on one database, only the leading one acts on deadlines: it also
//! reads the waits that came due from the database (another replica's job may have started
//! them, or a replica that died), and re-reads the agents first, as another replica may
//! have received their check-in heartbeat. The others drop their due entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mc_domain::activity::wakeup_sent;
use mc_domain::time::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::plan::{self, ProvisionError};
use super::{MAX_WAKES, after};
use crate::liveness::{DueCheckin, LiveAgent};
use crate::state::SharedState;

/// A duration in words: whole seconds as `30 s`, anything shorter in milliseconds.
pub fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// Why an agent that never answered its wakes is offline.
pub fn never_checked_in(wakes: u32, timeout: Duration) -> String {
    let times = if wakes == 1 { "once" } else { "times" };
    let count = if wakes == 1 {
        String::new()
    } else {
        format!("{wakes} ")
    };
    format!(
        "never checked in: woken {count}{times}, no heartbeat within {} of each wake",
        seconds(timeout)
    )
}

/// Why an agent that Mission Control cannot wake is offline.
pub fn unwakeable(reason: &str, timeout: Duration) -> String {
    format!(
        "never checked in: no heartbeat within {} of its creation, and Mission Control \
         cannot wake it ({reason})",
        seconds(timeout)
    )
}

/// How often the leading replica reads the due check-in waits from the database.
const STORED_WAITS_READ_EVERY: Duration = Duration::from_secs(1);

/// The most due waits read from the database at once.
const STORED_WAITS_PER_READ: u32 = 500;

/// Starts the task that handles passed check-in deadlines every `tick`; it stops when
/// `stop` turns true.
pub fn start(
    state: SharedState,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
            let now = Timestamp::now();
            let mut due = state.registry.due_checkins(now);
            if state.store.is_shared() {
                // Only the leader acts on check-in deadlines; it finds the waits other
                // replicas started (or left to it) in the database.
                if !state.engine.leading() {
                    continue;
                }
                if last_read.is_none_or(|at| at.elapsed() >= STORED_WAITS_READ_EVERY) {
                    last_read = Some(Instant::now());
                    match state.store.checkins_due(now, STORED_WAITS_PER_READ).await {
                        Ok(stored) => {
                            let adopted = state.registry.adopt_due_checkins(stored, &due);
                            due.extend(adopted);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "check-in: cannot read the due waits");
                        }
                    }
                }
            }
            if due.is_empty() {
                continue;
            }
            refresh_from_store(&state, &due).await;
            let due: Vec<DueCheckin> = due
                .into_iter()
                .filter(|due| due.agent.awaits_checkin())
                .collect();
            futures::future::join_all(due.into_iter().map(|due| handle_due(&state, due))).await;
            if let Err(error) = state.engine.flush().await {
                tracing::warn!(%error, "check-in: deadlines are not yet durable");
            }
        }
    })
}

/// When replicas share the database, another one may have received the agent's check-in
/// heartbeat: the due agents are read again first, and a wait that a stored heartbeat
/// ended is dropped.
async fn refresh_from_store(state: &SharedState, due: &[DueCheckin]) {
    if !state.store.is_shared() {
        return;
    }
    let ids: Vec<_> = due.iter().map(|due| due.agent.id()).collect();
    match state.store.stored_agents(&ids).await {
        Ok(stored) => state.registry.refresh(&stored),
        Err(error) => tracing::warn!(%error, "check-in: cannot re-read the due agents"),
    }
}

/// Wakes the agent again, or gives up on it after its last wake.
async fn handle_due(state: &SharedState, due: DueCheckin) {
    let timeout = state.provisioner.bounds.checkin_timeout;
    let DueCheckin { agent, wakes } = due;
    if wakes >= MAX_WAKES {
        give_up(state, &agent, &never_checked_in(wakes, timeout)).await;
        return;
    }
    match wake_again(state, &agent).await {
        Err(Unwakeable(reason)) if wakes == 0 => {
            give_up(state, &agent, &unwakeable(&reason, timeout)).await;
        }
        Err(Unwakeable(reason)) => {
            // Counted all the same: the wait stays bounded while the gateway is away.
            tracing::warn!(agent = %agent.id(), %reason, "check-in: could not wake the agent again");
            state
                .registry
                .rewoken(&agent, wakes + 1, after(Timestamp::now(), timeout), None);
        }
        Ok(()) => {
            tracing::info!(agent = %agent.id(), wake = wakes + 1, "check-in: woke the agent again");
            let now = Timestamp::now();
            let deadline = after(now, timeout);
            let profile = agent.profile();
            let sent = wakeup_sent(
                agent.id(),
                profile.board_id,
                profile.name.as_str(),
                wakes + 1,
                deadline,
                now,
            );
            state
                .registry
                .rewoken(&agent, wakes + 1, deadline, Some(sent));
        }
    }
}

/// Why a wake could not be sent.
struct Unwakeable(String);

/// Sends one more wake to the agent's main session.
async fn wake_again(state: &SharedState, agent: &Arc<LiveAgent>) -> Result<(), Unwakeable> {
    let profile = agent.profile();
    let gateway = state
        .store
        .gateway(profile.gateway_id)
        .await
        .map_err(|e| Unwakeable(e.to_string()))?
        .ok_or_else(|| Unwakeable("its gateway no longer exists".into()))?;
    if !profile.is_mc_agent || !gateway.url.is_managed() {
        return Err(Unwakeable(
            "its gateway is unmanaged; start the agent by hand".into(),
        ));
    }
    super::connect_gateway(&state.gateways, &gateway);
    let handle = state
        .gateways
        .get(gateway.id)
        .ok_or_else(|| Unwakeable("the gateway is not connected".into()))?;
    let placement = plan::placement_of(&profile, &gateway);
    let key = format!("mc-wake-{}", Uuid::new_v4());
    plan::wake(&handle, &profile, &placement, "provisioned", &key)
        .await
        .map(|_| ())
        .map_err(|error: ProvisionError| Unwakeable(error.to_string()))
}

/// Marks the agent offline for not checking in, durably with the reason.
async fn give_up(state: &SharedState, agent: &Arc<LiveAgent>, reason: &str) {
    if !state
        .registry
        .give_up_checkin(agent, reason, Timestamp::now())
    {
        return;
    }
    tracing::warn!(agent = %agent.id(), reason, "check-in: gave up on the agent");
    let mut profile = (*agent.profile()).clone();
    profile.last_provision_error = Some(reason.to_owned());
    state.registry.update_profile(agent, profile);
    if let Err(error) = state
        .store
        .set_provision_error(agent.id(), Some(reason))
        .await
    {
        tracing::warn!(agent = %agent.id(), %error, "check-in: could not store the reason");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_wakes_and_the_timeout() {
        assert_eq!(
            never_checked_in(3, Duration::from_secs(30)),
            "never checked in: woken 3 times, no heartbeat within 30 s of each wake"
        );
        assert_eq!(
            never_checked_in(1, Duration::from_millis(400)),
            "never checked in: woken once, no heartbeat within 400 ms of each wake"
        );
    }
}
