//! The event feed on PostgreSQL: every transaction that records events sends a `NOTIFY`
//! (delivered at commit, in commit order, to every process listening on the database);
//! one listener task per store reads the events committed since the last one it published
//! and publishes them in id order. Every replica's subscribers thus see every replica's
//! events, without polling.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mc_domain::activity::ActivityEvent;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::map_err;
use super::rows::{ACTIVITY_COLUMNS, activity_from_row};
use crate::StoreResult;

/// The notification channel.
const CHANNEL: &str = "mc_activity";

/// Events read per query when catching up.
const CATCH_UP_BATCH: i64 = 1000;

/// How long the listener waits before reconnecting after the database went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Tells listeners that events were committed (takes effect at commit).
pub(super) async fn notify(tx: &mut Transaction<'_, Postgres>) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Most event ids [`RecordedHere`] keeps; past that it starts over (a follower that does
/// not ask about every event, e.g. after it lagged, cannot make it grow without bound).
const RECORDED_HERE_CAPACITY: usize = 100_000;

/// The ids of events this process recorded, noted before their transaction commits and
/// forgotten once asked about, so the feed's follower can tell its own events from other
/// replicas'.
#[derive(Debug, Default)]
pub(super) struct RecordedHere {
    ids: Mutex<HashSet<i64>>,
}

impl RecordedHere {
    /// Notes ids about to be committed.
    pub(super) fn note(&self, ids: &[i64]) {
        let mut noted = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if noted.len() + ids.len() > RECORDED_HERE_CAPACITY {
            noted.clear();
        }
        noted.extend(ids);
    }

    /// Whether `id` was noted (then forgets it).
    pub(super) fn take(&self, id: i64) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }
}

/// Stops the listener task when the last clone of the store is dropped.
#[derive(Debug)]
pub(super) struct FeedTask(JoinHandle<()>);

impl Drop for FeedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the listener; it publishes events with ids above the current maximum.
pub(super) async fn start(
    pool: PgPool,
    sender: broadcast::Sender<ActivityEvent>,
) -> StoreResult<FeedTask> {
    let mut cursor: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM activity_events")
        .fetch_one(&pool)
        .await
        .map_err(map_err)?;
    Ok(FeedTask(tokio::spawn(async move {
        loop {
            // Listen first, then catch up: nothing committed in between is missed.
            let mut listener = match listen(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "event feed: cannot listen yet");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            loop {
                if let Err(error) = publish_since(&pool, &sender, &mut cursor).await {
                    tracing::warn!(%error, "event feed: cannot read new events; reconnecting");
                    break;
                }
                match listener.try_recv().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    })))
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Publishes every event committed after `cursor`, in id order, and advances it.
async fn publish_since(
    pool: &PgPool,
    sender: &broadcast::Sender<ActivityEvent>,
    cursor: &mut i64,
) -> StoreResult<()> {
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activity_events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(*cursor)
        .bind(CATCH_UP_BATCH)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
        let full = rows.len() as i64 == CATCH_UP_BATCH;
        for row in &rows {
            let event = activity_from_row(row)?;
            *cursor = event.id;
            let _ = sender.send(event);
        }
        if !full {
            return Ok(());
        }
    }
}
