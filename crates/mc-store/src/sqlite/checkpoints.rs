//! WAL checkpoints off the writer.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL over its
//! threshold, on that commit's connection: here the one writer, so every write queued behind
//! it (the write-behind batches, and the transition events they record) waits while tens of
//! megabytes are copied into the database file and synced (80–380 ms per 64 MiB at 100,000
//! agents on a shared two-core machine). Here a connection of its own checkpoints every
//! second, in `PASSIVE` mode: it never waits for the writer or the readers, and they never
//! wait for it. What the writer's own checkpoint (at its threshold) still finds to copy is
//! at most a second of writes.

use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::task::JoinHandle;

use super::map_err;
use crate::StoreResult;

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The checkpointing task; it stops when the store is dropped.
#[derive(Debug)]
pub(super) struct Checkpointer(JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the checkpointing connection (`options` must allow writing) and starts the task.
pub(super) async fn start(options: SqliteConnectOptions) -> StoreResult<Checkpointer> {
    let mut connection = options.connect().await.map_err(map_err)?;
    Ok(Checkpointer(tokio::spawn(async move {
        let mut interval = tokio::time::interval(CHECKPOINT_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            interval.tick().await;
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut connection)
                .await
            {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    tracing::warn!(%error, "SQLite: checkpointing the WAL failed; will retry");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    })))
}
