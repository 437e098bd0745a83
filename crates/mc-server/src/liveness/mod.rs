//! The liveness engine: the heartbeat hot path and offline detection.
//!
//! - Every agent lives in memory ([`Registry`]): a heartbeat authenticates by a digest
//!   lookup in a concurrent map and updates the agent under its own small lock. No
//!   database round trip, no scan, no global lock held across I/O.
//! - `last_seen_at` and friends are written behind in batches ([`Engine::flush`]), one
//!   transaction per batch, at most `write_behind_interval` late. A heartbeat that changed
//!   nothing but the agent's times (nearly all of them) is a 32-byte record in the batch's
//!   one row of the liveness log, whatever the fleet size; the rest update agent rows.
//!   Every `liveness_log_fold_interval` the log is folded into the rows
//!   ([`Engine::fold_log`]), each agent once however often it heartbeated; at start the
//!   store replays what is left of the log over the rows.
//! - Offline detection is push: each agent with a silence deadline sits once in an
//!   ordered deadline index; a ticker pops passed deadlines and either reschedules the
//!   agent (it heartbeated since) or records the transition. Heartbeats never touch the
//!   index except to schedule an agent that was not scheduled.
//! - A change of computed status is one durable activity event, written with the next
//!   batch; the store publishes it on its event feed once committed.

mod registry;

pub use registry::{AgentView, DueCheckin, LiveAgent, Registry, STATUS_COUNT, status_index};

use std::sync::Arc;
use std::time::Duration;

use mc_domain::time::Timestamp;
use mc_store::Store;
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;

/// The background half of the engine: the write-behind flusher and the deadline ticker.
pub struct Engine {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    flush_lock: AsyncMutex<()>,
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
        })
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
            Ok(_recorded) => {
                self.registry.confirm_written(&batch);
                Ok(())
            }
            Err(error) => {
                self.registry.restore_pending(batch);
                Err(error)
            }
        }
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
                        () = engine.registry.events_waiting() => {}
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
        let folder = {
            let engine = Arc::clone(self);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + fold_every, fold_every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    engine.fold_log().await;
                }
            })
        };
        let ticker = {
            let engine = Arc::clone(self);
            let mut stopped = stopped;
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    engine.registry.expire_deadlines(Timestamp::now());
                }
            })
        };
        EngineTasks {
            stop,
            handles: vec![flusher, folder, ticker],
        }
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
