//! The liveness engine: the heartbeat hot path and offline detection.
//!
//! - Every agent lives in memory ([`Registry`]): a heartbeat authenticates by a digest
//!   lookup in a concurrent map and updates the agent under its own small lock. No
//!   database round trip, no scan, no global lock held across I/O.
//! - `last_seen_at` and friends are written behind in batches ([`Engine::flush`]), one
//!   transaction per batch, at most `write_behind_interval` late. A heartbeat that changed
//!   nothing but the agent's times (nearly all of them) takes the cheap path: on SQLite a
//!   32-byte record in the batch's one row of the liveness log, whatever the fleet size,
//!   on PostgreSQL a plain row write where the newest heartbeat wins (with its health);
//!   the rest update agent rows with all their liveness fields. Every
//!   `liveness_log_fold_interval` the log is folded into the rows ([`Engine::fold_log`]),
//!   each agent once however often it heartbeated; at start the store replays what is
//!   left of the log over the rows.
//! - Offline detection is push: each agent with a silence deadline sits once in an
//!   ordered deadline index; a ticker pops passed deadlines and either reschedules the
//!   agent (it heartbeated since) or records the transition. Heartbeats never touch the
//!   index except to schedule an agent that was not scheduled.
//! - A change of computed status is one durable activity event, written with the next
//!   batch; the store publishes it on its event feed once committed.
//! - Several replicas on one database ([`Store::is_shared`]): the store records a
//!   transition only if the stored status is still the one it starts from; only the
//!   replica that holds the leadership lock marks agents offline, and only after reading
//!   the due agents again (their heartbeats may have gone to another replica), 250 ms
//!   after their deadline, while a heartbeat that arrives within a second of its agent's
//!   deadline is written at once; a replica that follows an `offline` its own newer
//!   heartbeat contradicts publishes the agent back at once. The others keep due agents
//!   under watch, to take over when the leader dies. Each replica follows
//!   the event feed for what other replicas changed (provisioning jobs they queued or ran
//!   included: `updating` / `deleting`, placement and `last_provision_error` show on every
//!   replica), in batches, catching up from the activity log when it falls behind (see
//!   `follower`), and looks a token it does not know up in the database once. On a
//!   database of its own a process always leads and does none of the extra reads.

mod counts;
mod follower;
mod registry;
mod unknown_tokens;

pub use follower::FeedReads;
pub use registry::{AgentView, DueCheckin, LiveAgent, Registry, STATUS_COUNT, status_index};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mc_domain::ids::AgentId;
use mc_domain::time::Timestamp;
use mc_domain::token::TokenDigest;
use mc_store::Store;
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;

use self::follower::{Follower, FollowerShared};
use self::unknown_tokens::UnknownTokens;

/// The background half of the engine: the write-behind flusher and the deadline ticker.
pub struct Engine {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    flush_lock: AsyncMutex<()>,
    unknown_tokens: UnknownTokens,
    leading: AtomicBool,
    follower: FollowerShared,
}

/// Handles of the engine's background tasks, to stop them at shutdown.
pub struct EngineTasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Engine {
    /// An engine over a loaded registry.
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            store,
            flush_lock: AsyncMutex::new(()),
            unknown_tokens: UnknownTokens::default(),
            leading: AtomicBool::new(false),
            follower: FollowerShared::default(),
        })
    }

    /// Whether this replica did the singleton work (offline detection) at its last
    /// deadline pass: always, on a database no other process shares.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Writes every pending liveness change and event now. Concurrent callers queue; on a
    /// database error the batch is put back and the error returned.
    pub async fn flush(&self) -> Result<(), mc_store::StoreError> {
        let _guard = self.flush_lock.lock().await;
        let batch = self.registry.take_pending();
        if batch.is_empty() {
            return Ok(());
        }
        match self
            .store
            .apply_liveness(&batch.writes, &batch.seen, &batch.events)
            .await
        {
            // The store publishes the recorded events on its feed.
            Ok(outcome) => {
                self.registry.confirm_written(&batch);
                self.registry.recorded_transitions(&outcome.recorded);
                let now = Timestamp::now();
                for (id, stored) in outcome.refused {
                    if let Some(stored) = stored {
                        self.registry.adopt_published(id, stored, now);
                    }
                }
                Ok(())
            }
            Err(error) => {
                self.registry.restore_pending(batch);
                Err(error)
            }
        }
    }

    /// The agent holding a token: from memory, else (when replicas share the database)
    /// from the database once, for a token minted by another replica a moment ago. Unknown
    /// digests are remembered for a short while, so repeated bad tokens cost no queries.
    pub async fn agent_by_token(
        &self,
        digest: &TokenDigest,
    ) -> Result<Option<Arc<LiveAgent>>, mc_store::StoreError> {
        if let Some(agent) = self.registry.by_token(digest) {
            return Ok(Some(agent));
        }
        if !self.store.is_shared() || self.unknown_tokens.contains(digest) {
            return Ok(None);
        }
        match self.store.agent_by_token(*digest).await? {
            Some(stored) => Ok(Some(self.registry.upsert(stored))),
            None => {
                self.unknown_tokens.insert(*digest);
                Ok(None)
            }
        }
    }

    /// The agent with this id: from memory, else as stored (created a moment ago by
    /// another replica, not followed here yet); `None` when it is not stored.
    pub async fn agent_by_id(
        &self,
        id: AgentId,
    ) -> Result<Option<Arc<LiveAgent>>, mc_store::StoreError> {
        if let Some(agent) = self.registry.get(id) {
            return Ok(Some(agent));
        }
        let stored = self.store.stored_agents(&[id]).await?;
        Ok(stored
            .into_iter()
            .next()
            .map(|row| self.registry.upsert(row)))
    }

    /// Folds the liveness log into the agents' rows; a failure is logged (the log stays
    /// and the next fold retries: nothing is lost).
    pub async fn fold_log(&self) {
        let started = std::time::Instant::now();
        match self.store.compact_liveness_log().await {
            Ok(folded) if folded.batches > 0 => tracing::debug!(
                liveness_log.batches = folded.batches,
                liveness_log.entries = folded.entries,
                liveness_log.agents = folded.agents,
                duration_ms = started.elapsed().as_millis(),
                "liveness log folded"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "folding the liveness log failed; will retry")
            }
        }
    }

    /// One deadline pass at `now`: takes the agents whose deadline passed; when replicas
    /// share the database, re-reads them first (another replica may have received their
    /// heartbeats) and marks them offline only while this replica leads.
    async fn pass_deadlines(&self, now: Timestamp, leading: bool) {
        let due = if self.store.is_shared() {
            // A heartbeat another replica received just before the deadline is written
            // at once (see `Registry::heartbeat`); the grace lets that write commit.
            self.registry
                .take_due(now.plus_millis(-SHARED_DEADLINE_GRACE_MS))
        } else {
            self.registry.take_due(now)
        };
        if due.is_empty() {
            return;
        }
        let mut current = true;
        if self.store.is_shared() {
            let ids: Vec<AgentId> = due.iter().map(|agent| agent.id()).collect();
            match self.store.stored_agents(&ids).await {
                Ok(stored) => self.registry.refresh(&stored),
                Err(error) => {
                    tracing::warn!(%error, "deadlines: cannot re-read the due agents; retrying");
                    current = false;
                }
            }
        }
        self.registry.expire(due, now, leading && current);
    }

    /// Starts the flusher, the deadline ticker and the liveness log fold.
    pub fn start(
        self: &Arc<Self>,
        write_behind: Duration,
        tick: Duration,
        fold_every: Duration,
    ) -> EngineTasks {
        let (stop, stopped) = watch::channel(false);
        let flusher = {
            let engine = Arc::clone(self);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(write_behind);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failing = false;
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        () = engine.registry.flush_wanted() => {}
                        _ = stopped.changed() => break,
                    }
                    match engine.flush().await {
                        Ok(()) if failing => {
                            tracing::info!("liveness writes recovered");
                            failing = false;
                        }
                        Ok(()) => {}
                        Err(error) if !failing => {
                            tracing::warn!(error = %error, "liveness writes failing; will retry");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        let ticker = {
            let engine = Arc::clone(self);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut leadership = Leadership::default();
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let leading = leadership.confirm(engine.store.as_ref()).await;
                    engine.leading.store(leading, Ordering::Relaxed);
                    engine.pass_deadlines(Timestamp::now(), leading).await;
                }
            })
        };
        let mut handles = vec![flusher, ticker];
        // Only an unshared store logs plain heartbeats (a shared one writes them to the
        // rows, which the other replicas read), so only it has a log to fold; a shared one
        // follows the other replicas' events.
        if !self.store.is_shared() {
            handles.push({
                let engine = Arc::clone(self);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval_at(
                        tokio::time::Instant::now() + fold_every,
                        fold_every,
                    );
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = interval.tick() => {}
                            _ = stopped.changed() => break,
                        }
                        engine.fold_log().await;
                    }
                })
            });
        } else {
            let feed = self.store.subscribe_activity();
            let follower = Follower::new(Arc::clone(self), feed, stopped);
            handles.push(tokio::spawn(follower.run()));
        }
        EngineTasks { stop, handles }
    }
}

/// How long after an agent's deadline replicas sharing the database look at it: time for
/// a heartbeat that another replica received just before the deadline to be written.
const SHARED_DEADLINE_GRACE_MS: i64 = 250;

/// How long a confirmed (or refused) lead is taken as it stands before the store is asked
/// again: the deadline ticker runs every 100 ms, the lock is asked about once a second.
const LEADERSHIP_RECHECK: Duration = Duration::from_secs(1);

/// Whether this replica leads (does the singleton work), as last confirmed with the
/// store; a change is logged once.
#[derive(Debug, Default)]
struct Leadership {
    leading: bool,
    failing: bool,
    checked: Option<Instant>,
}

impl Leadership {
    /// Confirms or takes the lead (at most once per [`LEADERSHIP_RECHECK`]); false while
    /// the store cannot tell.
    async fn confirm(&mut self, store: &dyn Store) -> bool {
        if self
            .checked
            .is_some_and(|at| at.elapsed() < LEADERSHIP_RECHECK)
        {
            return self.leading;
        }
        self.checked = Some(Instant::now());
        let leading = match store.hold_leadership().await {
            Ok(leading) => {
                self.failing = false;
                leading
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%error, "leadership: cannot reach the lock; not leading");
                    self.failing = true;
                }
                false
            }
        };
        if leading != self.leading {
            if leading {
                tracing::info!("leadership: this replica now detects offline agents");
            } else {
                tracing::info!("leadership: another replica detects offline agents");
            }
            self.leading = leading;
        }
        leading
    }
}

impl EngineTasks {
    /// Stops the background tasks and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}
