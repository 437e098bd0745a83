//! One config writer per gateway: it folds the agent entries that many provisioning jobs
//! push at about the same time into one `config.get` + `config.patch`.
//!
//! Every config write costs the gateway a reload of its runtime config, and a protocol 3
//! gateway restarts after every `config.patch` (at most once per 30 s, dropping every
//! socket). One job per write made both the reloads and the `baseHash` conflicts between
//! concurrent jobs grow with the fleet; and gateways rate-limit config writes per device
//! (3 a minute on 2026.4.2, 30 on 2026.9.6), answering "rate limit exceeded" beyond that.
//! The writer collects the entries submitted while a short window is open
//! ([`GatewayGeneration::config_batch_window`]), and longer when the gateway's write budget
//! ([`GatewayGeneration::config_writes_per_minute`]) says to wait, writes them in one
//! patch (none when the config already says it all), re-reads and retries when the config
//! changed between read and write, and answers every submitter with the batch's outcome.
//! After a patch that announced a restart it holds new requests back around the restart
//! ([`GatewayHandle::pause_for_restart`]), so that jobs wait for it instead of failing.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connection::{GatewayHandle, WeakGatewayHandle};
use crate::error::GatewayError;
use crate::generation::{AgentConfigEntry, GatewayGeneration};

/// The most entries written in one patch.
const MAX_BATCH: usize = 500;

/// How often a batch re-reads the config after a `baseHash` conflict before giving up.
const CONFLICT_ATTEMPTS: u32 = 8;

/// How long before an announced restart new requests are held back: long enough for the
/// requests in flight to finish first (a busy gateway takes seconds per file write).
const RESTART_LEAD: Duration = Duration::from_secs(5);

/// How long after its announced time a restart may take (the gateway waits for running
/// agent turns, then starts up again) before held requests are let through anyway.
const RESTART_BOUND: Duration = Duration::from_secs(30);

/// An entry waiting for its batch, with whom to tell.
struct Submission {
    entry: AgentConfigEntry,
    reply: oneshot::Sender<Result<bool, GatewayError>>,
}

/// The sending side of a gateway's config writer task; the task ends when it drops.
#[derive(Debug)]
pub(crate) struct ConfigWriter {
    queue: mpsc::UnboundedSender<Submission>,
}

impl ConfigWriter {
    /// Starts the writer task for `handle`'s gateway.
    pub(crate) fn start(handle: WeakGatewayHandle) -> Self {
        let (queue, submissions) = mpsc::unbounded_channel();
        tokio::spawn(run(handle, submissions));
        Self { queue }
    }

    /// Queues `entry` for the next batch; the receiver gets that batch's outcome.
    fn submit(&self, entry: AgentConfigEntry) -> oneshot::Receiver<Result<bool, GatewayError>> {
        let (reply, outcome) = oneshot::channel();
        // A closed queue drops `reply`, which the caller reads as a shut-down connection.
        let _ = self.queue.send(Submission { entry, reply });
        outcome
    }
}

async fn run(handle: WeakGatewayHandle, mut submissions: mpsc::UnboundedReceiver<Submission>) {
    // When the last writes went out (at most a minute's budget of them), and no write
    // before `next_write_at` (set when the gateway said to wait).
    let mut recent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut next_write_at = Instant::now();
    let mut batch: Vec<Submission> = Vec::new();
    loop {
        if batch.is_empty() {
            match submissions.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
        }
        let generation = handle.upgrade().and_then(|h| h.generation());
        let window = generation.map_or(Duration::ZERO, GatewayGeneration::config_batch_window);
        let closes = (Instant::now() + window)
            .max(next_write_at)
            .max(budget_allows_at(&mut recent, generation));
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                next = submissions.recv() => match next {
                    Some(next) => batch.push(next),
                    None => break,
                },
                () = tokio::time::sleep_until(closes) => break,
            }
        }
        while batch.len() < MAX_BATCH
            && let Ok(next) = submissions.try_recv()
        {
            batch.push(next);
        }
        batch.retain(|s| !s.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        let entries = latest_per_agent(&batch);
        let started = Instant::now();
        let outcome = write(&handle, &entries).await;
        tracing::debug!(
            gateway.url = %handle.url(),
            batch.agents = entries.len(),
            batch.patched = ?outcome.as_ref().ok(),
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "config batch written"
        );
        match outcome {
            // Over the gateway's budget (another writer used it): the batch stays open
            // until the gateway takes writes again.
            Err(error) if error.rate_limit_retry_after().is_some() => {
                let wait = error.rate_limit_retry_after().unwrap_or_default();
                next_write_at = Instant::now() + wait + Duration::from_millis(250);
            }
            outcome => {
                if !matches!(outcome, Ok(false)) {
                    recent.push_back(Instant::now());
                }
                for submission in batch.drain(..) {
                    let _ = submission.reply.send(outcome.clone());
                }
            }
        }
    }
}

/// The gateway counts config writes per device over a minute.
const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// When the next write fits the gateway's budget, given the writes sent in the last minute
/// (`recent`, oldest first; older ones are forgotten).
fn budget_allows_at(
    recent: &mut std::collections::VecDeque<Instant>,
    generation: Option<GatewayGeneration>,
) -> Instant {
    let now = Instant::now();
    while recent.front().is_some_and(|at| *at + BUDGET_WINDOW <= now) {
        recent.pop_front();
    }
    let budget = generation.map_or(usize::MAX, |g| {
        usize::try_from(g.config_writes_per_minute()).unwrap_or(usize::MAX)
    });
    if recent.len() < budget.max(1) {
        return now;
    }
    recent[recent.len() - budget.max(1)] + BUDGET_WINDOW
}

/// The entries of a batch, the last one submitted per agent id, in first-seen order.
fn latest_per_agent(batch: &[Submission]) -> Vec<AgentConfigEntry> {
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut entries: Vec<AgentConfigEntry> = Vec::new();
    for submission in batch {
        match position.get(submission.entry.id.as_str()) {
            Some(&at) => entries[at] = submission.entry.clone(),
            None => {
                position.insert(&submission.entry.id, entries.len());
                entries.push(submission.entry.clone());
            }
        }
    }
    entries
}

/// The delay until the restart a `config.patch` answer announces, if it announces one.
fn announced_restart(answer: Option<&Value>) -> Option<Duration> {
    let restart = answer?.as_object()?;
    let delay = restart.get("delayMs").and_then(Value::as_u64).unwrap_or(0);
    Some(Duration::from_millis(delay))
}

/// Writes `entries` in one patch: `config.get`, then `config.patch` with its `baseHash`
/// when something differs, both in one config-write turn (so that no `agents.create` of
/// this client lands in between and turns the hash stale), again from a fresh read when
/// another client changed the config in between. Returns whether a patch was sent.
async fn write(handle: &GatewayHandle, entries: &[AgentConfigEntry]) -> Result<bool, GatewayError> {
    let mut attempt = 1;
    loop {
        match handle
            .serialize_config_write(read_and_patch(handle, entries))
            .await
        {
            Err(error) if error.is_stale_config() && attempt < CONFLICT_ATTEMPTS => {
                attempt += 1;
                let pause = rand::rng().random_range(20..=120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            outcome => return outcome,
        }
    }
}

/// One read of the config and, when something differs, one patch computed from it.
async fn read_and_patch(
    handle: &GatewayHandle,
    entries: &[AgentConfigEntry],
) -> Result<bool, GatewayError> {
    let session = handle.session();
    let plan = handle.plan_agent_config(entries).await?;
    let generation = plan.generation;
    let Some(patch) = plan.patch else {
        return Ok(false);
    };
    let patched = handle
        .config_patch_in_turn(&patch, plan.base_hash.as_deref())
        .await?;
    if generation.restarts_after_config_patch()
        && let Some(delay) = announced_restart(patched.restart.as_ref())
    {
        handle.pause_for_restart(session, Instant::now() + delay, RESTART_LEAD, RESTART_BOUND);
    }
    Ok(true)
}

impl GatewayHandle {
    /// Makes sure `entry` (one agent's workspace and heartbeat) is in the gateway config,
    /// written together with the entries other callers submit at about the same time.
    /// Returns whether the batch sent a patch. Safe to retry after a transient failure: a
    /// retry that finds the entry in place writes nothing.
    pub async fn write_agent_config(&self, entry: AgentConfigEntry) -> Result<bool, GatewayError> {
        let outcome = self.config_writer().submit(entry);
        // A batch may wait for the gateway's write budget (a minute at most), then makes up
        // to CONFLICT_ATTEMPTS round trips of two requests each.
        let limit = self.request_timeout() * 2 * CONFLICT_ATTEMPTS + Duration::from_secs(120);
        match tokio::time::timeout(limit, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(GatewayError::Transient {
                message: format!(
                    "config.patch: the connection to {} is shut down",
                    self.url()
                ),
            }),
            Err(_) => Err(GatewayError::Transient {
                message: format!(
                    "config.patch timed out after {} ms waiting for {}",
                    limit.as_millis(),
                    self.url()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::HeartbeatSettings;

    fn entry(id: &str, every: &str) -> AgentConfigEntry {
        AgentConfigEntry {
            id: id.to_owned(),
            workspace: format!("/ws/{id}"),
            name: None,
            heartbeat: HeartbeatSettings {
                every: every.to_owned(),
                target: "last".to_owned(),
            },
        }
    }

    fn submission(entry: AgentConfigEntry) -> Submission {
        Submission {
            entry,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_keeps_the_last_entry_submitted_per_agent() {
        let batch = [
            submission(entry("a", "1m")),
            submission(entry("b", "1m")),
            submission(entry("a", "5m")),
        ];
        let entries = latest_per_agent(&batch);
        assert_eq!(entries, vec![entry("a", "5m"), entry("b", "1m")]);
    }

    #[tokio::test]
    async fn a_write_over_the_minutes_budget_waits_for_the_oldest_to_age_out() {
        let mut recent = std::collections::VecDeque::new();
        let v3 = Some(GatewayGeneration::V3);
        let now = Instant::now();
        assert!(budget_allows_at(&mut recent, v3) <= Instant::now());
        recent.extend([now, now, now]);
        let allowed = budget_allows_at(&mut recent, v3);
        assert!(allowed >= now + Duration::from_secs(59), "3 a minute on v3");
        // 30 a minute on v4: three recent writes leave room.
        assert!(budget_allows_at(&mut recent, Some(GatewayGeneration::V4)) <= Instant::now());
        // Writes older than a minute no longer count.
        let mut old = std::collections::VecDeque::from([now - Duration::from_secs(61); 3]);
        assert!(budget_allows_at(&mut old, v3) <= Instant::now());
        assert!(old.is_empty());
    }

    #[test]
    fn a_restart_is_announced_only_by_a_restart_object() {
        assert_eq!(announced_restart(None), None);
        assert_eq!(announced_restart(Some(&Value::Null)), None);
        assert_eq!(
            announced_restart(Some(&serde_json::json!({"ok": true, "delayMs": 2000}))),
            Some(Duration::from_millis(2000))
        );
    }
}
