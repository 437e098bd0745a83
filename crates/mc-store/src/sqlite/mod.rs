//! The SQLite backend: the embedded default.
//!
//! Configured on purpose: WAL journal, `synchronous=NORMAL`, `foreign_keys=ON`, a busy
//! timeout, a page cache sized for a large fleet, one writer connection (SQLite allows one writer at a time; a single pooled
//! connection turns lock contention into an orderly queue) that leaves the copying of WAL
//! checkpoints to a connection of its own (every second: see `checkpoints`) and a small
//! reader pool.

mod checkpoints;
mod provision_jobs;
mod rows;
mod webhooks;

use std::collections::HashSet;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use mc_domain::activity::{ActivityEvent, NewActivity};
use mc_domain::agent::{Agent, AgentStatus};
use mc_domain::board::Board;
use mc_domain::enrollment::{EnrollmentRefusal, EnrollmentToken};
use mc_domain::gateway::Gateway;
use mc_domain::ids::{
    AgentId, BoardId, EnrollmentTokenId, GatewayId, OrganizationId, UserId, WebhookId,
};
use mc_domain::page::{Page, PageRequest};
use mc_domain::time::Timestamp;
use mc_domain::token::TokenDigest;
use mc_domain::webhook::{Delivery, Webhook};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, broadcast};

use self::rows::{
    ACTIVITY_COLUMNS, AGENT_COLUMNS, AGENT_FROM, AGENT_INSERT_COLUMNS, AGENT_ORDER, BOARD_COLUMNS,
    CHECKIN_COLUMNS, ENROLLMENT_COLUMNS, GATEWAY_COLUMNS, activity_from_row, agent_from_row,
    board_from_row, enrollment_from_row, gateway_from_row,
};
use crate::liveness_columns::{checkin_deadline, checkin_wakes};
use crate::{
    ActivityFilter, AgentFilter, Constraint, DeliveryAttempt, DueDelivery, EnrollmentSpend,
    LivenessEvent, LivenessOutcome, LivenessWrite, LogCompaction, PoolStats, SeenWrite, Store,
    StoreError, StoreResult, StoredAgent, accepted_events, liveness_log, transition_chains,
};
use mc_domain::liveness::Checkin;

/// Agents updated by one statement of a liveness batch (6 parameters each).
const LIVENESS_ROWS_PER_STATEMENT: usize = 1000;

/// Events the feed buffers for a slow subscriber before it lags.
const FEED_CAPACITY: usize = 4096;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Mission Control's store on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    feed: broadcast::Sender<ActivityEvent>,
    /// Held from the start of a transaction that records events until those events are
    /// on the feed, so the feed carries events in id order.
    publish_turn: Arc<AsyncMutex<()>>,
    _checkpointer: Arc<checkpoints::Checkpointer>,
}

/// A write transaction that records activity events and publishes them on the store's
/// feed once committed, before any later recording transaction can publish.
struct RecordingTx {
    tx: Transaction<'static, Sqlite>,
    recorded: Vec<ActivityEvent>,
    feed: broadcast::Sender<ActivityEvent>,
    _turn: OwnedMutexGuard<()>,
}

impl RecordingTx {
    /// Records `events` in this transaction.
    async fn record<'e>(
        &mut self,
        events: impl IntoIterator<Item = &'e NewActivity>,
    ) -> StoreResult<()> {
        for event in events {
            let recorded = insert_activity(&mut self.tx, event).await?;
            self.recorded.push(recorded);
        }
        Ok(())
    }

    /// Queues the webhook deliveries of the recorded events, commits, then publishes the
    /// events (a send without subscribers is fine).
    async fn commit(mut self) -> StoreResult<Vec<ActivityEvent>> {
        if let (Some(first), Some(last)) = (self.recorded.first(), self.recorded.last()) {
            webhooks::queue_deliveries(&mut self.tx, first.id, last.id).await?;
        }
        self.tx.commit().await.map_err(map_err)?;
        for event in &self.recorded {
            let _ = self.feed.send(event.clone());
        }
        Ok(self.recorded)
    }
}

fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            let message = db.message();
            let constraint = if message.contains("agents.name_key") {
                Constraint::AgentNameOnBoard
            } else if message.contains("boards.slug") {
                Constraint::BoardSlug
            } else if message.contains("token_digest") {
                Constraint::TokenDigest
            } else if message.contains("agents.gateway_id") {
                Constraint::GatewayMainAgent
            } else {
                return StoreError::Internal(message.to_owned());
            };
            StoreError::Conflict(constraint)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

fn ms(ts: Timestamp) -> i64 {
    ts.as_millis()
}

fn page_bounds(page: PageRequest) -> (i64, i64) {
    (
        i64::from(page.limit),
        i64::try_from(page.offset).unwrap_or(i64::MAX),
    )
}

fn count(total: i64) -> u64 {
    u64::try_from(total).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (and migrates) the database at `url` (`sqlite:PATH` or `sqlite://PATH`).
    /// Without `create_if_missing`, a missing file is an error, never a new empty database.
    pub async fn open(url: &str, create_if_missing: bool) -> StoreResult<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid SQLite URL {url:?}: {e}")))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory");
        let filename = base.get_filename().to_owned();
        if !create_if_missing && !filename.exists() {
            return Err(StoreError::Config(format!(
                "SQLite database {} does not exist (check the database URL)",
                filename.display()
            )));
        }
        if let Some(parent) = filename.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::Config(format!(
                "directory {} for the SQLite database does not exist",
                parent.display()
            )));
        }
        // The writer leaves the copying to `checkpoints`, which copies every second what was
        // written. Its own checkpoint, once the WAL is over 16,384 pages (64 MiB), finds
        // little left to copy; it is kept because only a writer starts the WAL over, and
        // under a steady stream of readers it gets the chance only by trying at every
        // commit, as it does once over the threshold.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(
                base.clone()
                    .create_if_missing(create_if_missing)
                    .pragma("wal_autocheckpoint", "16384")
                    // 8 MiB (negative means KiB): the pages a write-behind batch and a fold
                    // chunk touch; the rest of the liveness table stays in the operating
                    // system's cache.
                    .pragma("cache_size", "-8192"),
            )
            .await
            .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", filename.display())))?;
        let store_migrations = MIGRATOR.run(&writer).await;
        store_migrations.map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let checkpointer =
            checkpoints::start(base.clone().pragma("wal_autocheckpoint", "0")).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            // Reads are point lookups and index pages (the agents themselves are served
            // from memory): SQLite's default 2 MiB each, the operating system's cache
            // behind them.
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Ok(Self {
            writer,
            reader,
            feed,
            publish_turn: Arc::new(AsyncMutex::new(())),
            _checkpointer: Arc::new(checkpointer),
        })
    }

    /// The rows of one page of agents: `sql` (a query over [`agent_page_ids`]) with its
    /// filter values bound in order, then the page's limit and offset.
    async fn agent_page_rows(
        &self,
        sql: &str,
        params: &[String],
        page: PageRequest,
    ) -> StoreResult<Vec<SqliteRow>> {
        let (limit, offset) = page_bounds(page);
        let mut query = sqlx::query(sql);
        for param in params {
            query = query.bind(param);
        }
        query
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)
    }

    /// Runs the migrations only (the `migrate` command); `open` already does this.
    pub async fn migrate(url: &str) -> StoreResult<()> {
        Self::open(url, true).await.map(|_| ())
    }

    /// Every heartbeat in the liveness log, folded to each agent's latest. The log is read
    /// a few rows at a time (30 s of heartbeats at 60,000/s are 58 MiB of records, never
    /// all in memory at once) and each page is decoded on a blocking thread: its records
    /// take milliseconds of CPU, which would otherwise stall one of the runtime's workers
    /// (heartbeats included).
    async fn read_liveness_log(&self) -> StoreResult<liveness_log::Fold> {
        let mut fold = liveness_log::Fold::default();
        let mut after = i64::MIN;
        loop {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, entries FROM agent_liveness_log WHERE seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(after)
            .bind(liveness_log::ROWS_PER_READ)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
            let Some(&(last, _)) = rows.last() else {
                return Ok(fold);
            };
            after = last;
            fold = tokio::task::spawn_blocking(move || {
                for (seq, blob) in &rows {
                    fold.add(*seq, blob)?;
                }
                Ok::<_, StoreError>(fold)
            })
            .await
            .map_err(|e| StoreError::Internal(format!("folding the liveness log: {e}")))??;
        }
    }

    async fn begin(&self) -> StoreResult<Transaction<'_, Sqlite>> {
        self.writer.begin().await.map_err(map_err)
    }

    /// Begins a transaction that records events (waiting for the publishing turn first).
    async fn begin_recording(&self) -> StoreResult<RecordingTx> {
        let turn = Arc::clone(&self.publish_turn).lock_owned().await;
        let tx = self.writer.begin().await.map_err(map_err)?;
        Ok(RecordingTx {
            tx,
            recorded: Vec::new(),
            feed: self.feed.clone(),
            _turn: turn,
        })
    }
}

/// A filtered, ordered listing. Only the filters that are set become conditions (`column =
/// ?`), so each query is one an index can serve: an `(? IS NULL OR column = ?)` form would
/// make SQLite scan the table.
struct Listing<'a> {
    table: &'a str,
    columns: &'a str,
    filters: Vec<(&'static str, Option<String>)>,
    order_by: &'a str,
}

/// The query of the ids of one page of agents matching `filter`, newest first, and its
/// parameters: the filter's values, to be followed by the limit and the offset. It reads
/// a listing index alone (migration 0008): no table row for the rows the offset skips.
fn agent_page_ids(filter: AgentFilter) -> (String, Vec<String>) {
    let (condition, params) = where_clause(vec![
        ("a.board_id", filter.board_id.map(|b| b.to_string())),
        ("a.gateway_id", filter.gateway_id.map(|g| g.to_string())),
    ]);
    let n = params.len();
    let sql = format!(
        "SELECT a.id FROM agents a WHERE {condition} ORDER BY {AGENT_ORDER} LIMIT ?{} OFFSET ?{}",
        n + 1,
        n + 2
    );
    (sql, params)
}

/// The `WHERE` clause for the filters that are set, and their values in order.
fn where_clause(filters: Vec<(&'static str, Option<String>)>) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (column, value) in filters {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} = ?{}", params.len()));
        }
    }
    if conditions.is_empty() {
        conditions.push("1 = 1".to_owned());
    }
    (conditions.join(" AND "), params)
}

impl SqliteStore {
    /// The row `sql` selects for one bound id, converted, if there is one.
    async fn fetch_by_id<T>(
        &self,
        sql: &str,
        id: String,
        convert: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(convert).transpose()
    }

    /// One page of a listing and the total count before paging.
    async fn fetch_page<T>(
        &self,
        listing: Listing<'_>,
        page: PageRequest,
        convert: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let (limit, offset) = page_bounds(page);
        let Listing {
            table,
            columns,
            filters,
            order_by,
        } = listing;
        let (filter, params) = where_clause(filters);
        let count_sql = format!("SELECT COUNT(*) FROM {table} WHERE {filter}");
        let mut count_query = sqlx::query_scalar::<_, i64>(&count_sql);
        for param in &params {
            count_query = count_query.bind(param);
        }
        let total = count_query.fetch_one(&self.reader).await.map_err(map_err)?;
        let n = params.len();
        let rows_sql = format!(
            "SELECT {columns} FROM {table} WHERE {filter} ORDER BY {order_by} LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        );
        let mut rows_query = sqlx::query(&rows_sql);
        for param in &params {
            rows_query = rows_query.bind(param);
        }
        let rows = rows_query
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(Page {
            items: rows.iter().map(convert).collect::<Result<_, _>>()?,
            total: count(total),
        })
    }
}

/// An agent read with its token digest and check-in columns.
fn stored_agent_from_row(row: &SqliteRow) -> StoreResult<StoredAgent> {
    let digest: Option<Vec<u8>> = row.try_get("token_digest").map_err(map_err)?;
    Ok(StoredAgent {
        agent: agent_from_row(row)?,
        token_digest: digest.as_deref().and_then(TokenDigest::from_slice),
        checkin: rows::checkin_from_row(row)?,
    })
}

async fn insert_activity(
    tx: &mut Transaction<'_, Sqlite>,
    event: &NewActivity,
) -> StoreResult<ActivityEvent> {
    let data = event.data.as_ref().map(ToString::to_string);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO activity_events (event_type, message, agent_id, board_id, data, created_at)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(event.event_type.as_str())
    .bind(&event.message)
    .bind(event.agent_id.map(|id| id.to_string()))
    .bind(event.board_id.map(|id| id.to_string()))
    .bind(data)
    .bind(ms(event.created_at))
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(ActivityEvent {
        id,
        event_type: event.event_type.as_str().to_owned(),
        message: event.message.clone(),
        agent_id: event.agent_id,
        board_id: event.board_id,
        data: event.data.clone(),
        created_at: event.created_at,
    })
}

/// Replaces an agent's token digest in `tx` (its own-token flag starts over); false when
/// the agent does not exist.
async fn write_agent_token(
    tx: &mut Transaction<'_, Sqlite>,
    id: AgentId,
    token_digest: TokenDigest,
) -> StoreResult<bool> {
    let changed = sqlx::query("UPDATE agents SET token_digest = ? WHERE id = ?")
        .bind(token_digest.as_bytes().to_vec())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?
        .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE agent_liveness SET own_token_used = 0 WHERE agent_id = ?")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(true)
}

/// Writes an agent's settings (not its liveness fields); returns the rows changed (0 when
/// the agent does not exist).
async fn write_agent_settings(tx: &mut Transaction<'_, Sqlite>, a: &Agent) -> StoreResult<u64> {
    let changed = sqlx::query(
        "UPDATE agents SET board_id = ?, gateway_id = ?, name = ?, name_key = ?,
           is_board_lead = ?, gateway_agent_id = ?, workspace_path = ?,
           openclaw_session_id = ?, heartbeat_interval_seconds = ?,
           heartbeat_missing_tolerance = ?, identity_profile = ?, identity_template = ?,
           soul_template = ?, last_provision_error = ?, updated_at = ?
         WHERE id = ?",
    )
    .bind(a.board_id.map(|b| b.to_string()))
    .bind(a.gateway_id.to_string())
    .bind(a.name.as_str())
    .bind(a.name.key())
    .bind(a.is_board_lead)
    .bind(&a.gateway_agent_id)
    .bind(&a.workspace_path)
    .bind(&a.openclaw_session_id)
    .bind(i64::from(a.heartbeat_config.interval_seconds))
    .bind(i64::from(a.heartbeat_config.missing_tolerance))
    .bind(rows::profile_json(a))
    .bind(&a.identity_template)
    .bind(&a.soul_template)
    .bind(&a.last_provision_error)
    .bind(ms(a.updated_at))
    .bind(a.id.to_string())
    .execute(&mut **tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    Ok(changed)
}

async fn delete_agents_returning(
    tx: &mut Transaction<'_, Sqlite>,
    sql: &str,
    key: String,
) -> StoreResult<Vec<AgentId>> {
    let ids: Vec<String> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    ids.iter()
        .map(|id| {
            AgentId::from_str(id).map_err(|e| StoreError::Corrupt {
                table: "agents",
                reason: e.to_string(),
            })
        })
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    fn pool_stats(&self) -> Vec<PoolStats> {
        [("writer", &self.writer), ("reader", &self.reader)]
            .into_iter()
            .map(|(name, pool)| PoolStats {
                name,
                size: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                max: pool.options().get_max_connections(),
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn ensure_default_organization(&self, now: Timestamp) -> StoreResult<OrganizationId> {
        let mut tx = self.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM organizations WHERE is_default = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if let Some(id) = existing {
            tx.commit().await.map_err(map_err)?;
            return rows::parse_id(&id, "organizations");
        }
        let org = OrganizationId::new();
        let user = UserId::new();
        sqlx::query(
            "INSERT INTO organizations (id, name, is_default, created_at, updated_at)
             VALUES (?, 'Default', 1, ?, ?)",
        )
        .bind(org.to_string())
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO users (id, external_id, name, email, created_at)
             VALUES (?, 'local-admin', 'Administrator', NULL, ?)
             ON CONFLICT (external_id) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO organization_members
               (organization_id, user_id, role, all_boards_read, all_boards_write, created_at)
             SELECT ?, id, 'owner', 1, 1, ? FROM users WHERE external_id = 'local-admin'",
        )
        .bind(org.to_string())
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(org)
    }

    async fn insert_gateway(&self, g: &Gateway) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(g.id.to_string())
        .bind(g.organization_id.to_string())
        .bind(&g.name)
        .bind(g.url.stored())
        .bind(g.token.as_ref().map(|t| t.expose().to_owned()))
        .bind(&g.workspace_root)
        .bind(g.allow_insecure_tls)
        .bind(g.disable_device_pairing)
        .bind(ms(g.created_at))
        .bind(ms(g.updated_at))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn gateway(&self, id: GatewayId) -> StoreResult<Option<Gateway>> {
        let sql = format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = ?");
        self.fetch_by_id(&sql, id.to_string(), gateway_from_row)
            .await
    }

    async fn list_gateways(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Gateway>> {
        let listing = Listing {
            table: "gateways",
            columns: GATEWAY_COLUMNS,
            filters: vec![("organization_id", Some(org.to_string()))],
            order_by: "created_at DESC, id DESC",
        };
        self.fetch_page(listing, page, gateway_from_row).await
    }

    async fn update_gateway(&self, g: &Gateway) -> StoreResult<()> {
        sqlx::query(
            "UPDATE gateways SET name = ?, url = ?, token = ?, workspace_root = ?,
               allow_insecure_tls = ?, disable_device_pairing = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(&g.name)
        .bind(g.url.stored())
        .bind(g.token.as_ref().map(|t| t.expose().to_owned()))
        .bind(&g.workspace_root)
        .bind(g.allow_insecure_tls)
        .bind(g.disable_device_pairing)
        .bind(ms(g.updated_at))
        .bind(g.id.to_string())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn delete_gateway(
        &self,
        id: GatewayId,
        events: &[NewActivity],
    ) -> StoreResult<Option<Vec<AgentId>>> {
        let mut rtx = self.begin_recording().await?;
        let boards: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM boards WHERE gateway_id = ?")
            .bind(id.to_string())
            .fetch_one(&mut *rtx.tx)
            .await
            .map_err(map_err)?;
        if boards > 0 {
            return Err(StoreError::Conflict(Constraint::GatewayHasBoards));
        }
        let agents = delete_agents_returning(
            &mut rtx.tx,
            "DELETE FROM agents WHERE gateway_id = ? RETURNING id",
            id.to_string(),
        )
        .await?;
        let deleted = sqlx::query("DELETE FROM gateways WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *rtx.tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        rtx.record(events).await?;
        rtx.commit().await?;
        Ok(Some(agents))
    }

    async fn insert_board(&self, b: &Board) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO boards ({BOARD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(b.id.to_string())
        .bind(b.organization_id.to_string())
        .bind(&b.name)
        .bind(b.slug.as_str())
        .bind(&b.description)
        .bind(b.gateway_id.to_string())
        .bind(b.rules.require_approval_for_done)
        .bind(b.rules.require_review_before_done)
        .bind(b.rules.comment_required_for_review)
        .bind(b.rules.block_status_changes_with_pending_approval)
        .bind(b.rules.only_lead_can_change_status)
        .bind(i64::from(b.rules.max_agents))
        .bind(ms(b.created_at))
        .bind(ms(b.updated_at))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn board(&self, id: BoardId) -> StoreResult<Option<Board>> {
        let sql = format!("SELECT {BOARD_COLUMNS} FROM boards WHERE id = ?");
        self.fetch_by_id(&sql, id.to_string(), board_from_row).await
    }

    async fn list_boards(
        &self,
        org: OrganizationId,
        gateway_id: Option<GatewayId>,
        page: PageRequest,
    ) -> StoreResult<Page<Board>> {
        let listing = Listing {
            table: "boards",
            columns: BOARD_COLUMNS,
            filters: vec![
                ("organization_id", Some(org.to_string())),
                ("gateway_id", gateway_id.map(|g| g.to_string())),
            ],
            order_by: "lower(name) ASC, created_at DESC",
        };
        self.fetch_page(listing, page, board_from_row).await
    }

    async fn update_board(&self, b: &Board) -> StoreResult<()> {
        sqlx::query(
            "UPDATE boards SET name = ?, slug = ?, description = ?, gateway_id = ?,
               require_approval_for_done = ?, require_review_before_done = ?,
               comment_required_for_review = ?, block_status_changes_with_pending_approval = ?,
               only_lead_can_change_status = ?, max_agents = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(&b.name)
        .bind(b.slug.as_str())
        .bind(&b.description)
        .bind(b.gateway_id.to_string())
        .bind(b.rules.require_approval_for_done)
        .bind(b.rules.require_review_before_done)
        .bind(b.rules.comment_required_for_review)
        .bind(b.rules.block_status_changes_with_pending_approval)
        .bind(b.rules.only_lead_can_change_status)
        .bind(i64::from(b.rules.max_agents))
        .bind(ms(b.updated_at))
        .bind(b.id.to_string())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn delete_board(
        &self,
        id: BoardId,
        events: &[NewActivity],
        cleanup: &[crate::NewProvisionJob],
    ) -> StoreResult<Option<Vec<AgentId>>> {
        let mut rtx = self.begin_recording().await?;
        // Queued while the agents still exist, so that each queued event names its agent
        // and board.
        let mut queued = Vec::with_capacity(cleanup.len());
        for job in cleanup {
            queued.push(provision_jobs::queue_job(&mut rtx.tx, job).await?.1);
        }
        let agents = delete_agents_returning(
            &mut rtx.tx,
            "DELETE FROM agents WHERE board_id = ? RETURNING id",
            id.to_string(),
        )
        .await?;
        let deleted = sqlx::query("DELETE FROM boards WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *rtx.tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        rtx.record(&queued).await?;
        rtx.record(events).await?;
        rtx.commit().await?;
        Ok(Some(agents))
    }

    async fn insert_agent(
        &self,
        a: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
    ) -> StoreResult<()> {
        self.insert_agent_and_job(a, token_digest, spend, event, None)
            .await
            .map(|_| ())
    }

    async fn insert_agent_with_job(
        &self,
        a: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
        job: &crate::NewProvisionJob,
    ) -> StoreResult<i64> {
        let id = self
            .insert_agent_and_job(a, token_digest, spend, event, Some(job))
            .await?;
        Ok(id.unwrap_or_default())
    }

    async fn agent(&self, id: AgentId) -> StoreResult<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE a.id = ?");
        self.fetch_by_id(&sql, id.to_string(), agent_from_row).await
    }

    async fn list_agents(&self, filter: AgentFilter, page: PageRequest) -> StoreResult<Vec<Agent>> {
        let (ids, params) = agent_page_ids(filter);
        // The settings and the liveness rows, which every write-behind batch rewrites,
        // are read for the page's rows only, never for those the offset skips. SQLite
        // keeps the order of a CROSS JOIN: with a plain JOIN, SQLite 3.46 (the bundled
        // one) walks every agent in index order and looks each up in the page, to spare
        // the final sort of the page's rows (over 100 ms at 100,000 agents).
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM ({ids}) page
             CROSS JOIN agents a ON a.id = page.id
             CROSS JOIN agent_liveness l ON l.agent_id = a.id
             ORDER BY {AGENT_ORDER}"
        );
        let rows = self.agent_page_rows(&sql, &params, page).await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn list_agent_ids(
        &self,
        filter: AgentFilter,
        page: PageRequest,
    ) -> StoreResult<Vec<AgentId>> {
        let (sql, params) = agent_page_ids(filter);
        let rows = self.agent_page_rows(&sql, &params, page).await?;
        rows.iter()
            .map(|row| rows::id(row, "id", "agents"))
            .collect()
    }

    async fn agents_named(
        &self,
        name_key: &str,
        board_id: Option<BoardId>,
    ) -> StoreResult<Vec<Agent>> {
        let (filter, params) = where_clause(vec![
            ("a.name_key", Some(name_key.to_owned())),
            ("a.board_id", board_id.map(|b| b.to_string())),
        ]);
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE {filter} ORDER BY a.created_at LIMIT 50"
        );
        let mut query = sqlx::query(&sql);
        for param in &params {
            query = query.bind(param);
        }
        let rows = query.fetch_all(&self.writer).await.map_err(map_err)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn all_agents(&self) -> StoreResult<Vec<StoredAgent>> {
        // The log is read before the rows: a fold in between only moves heartbeats from
        // the log into the rows, so none is missed (replaying one twice is harmless).
        let log = self.read_liveness_log().await?;
        // Row by row: a fleet's rows are never all held besides the agents made of them.
        let query =
            format!("SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}");
        let mut rows = sqlx::query(&query).fetch(&self.reader);
        let mut agents = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(map_err)? {
            let mut stored = stored_agent_from_row(&row)?;
            let agent = &mut stored.agent;
            if let Some(&(seen, updated)) = log.latest.get(&agent.id) {
                agent.last_seen_at = agent.last_seen_at.max(Some(seen));
                agent.updated_at = agent.updated_at.max(updated);
            }
            agents.push(stored);
        }
        Ok(agents)
    }

    async fn update_agent(&self, a: &Agent, event: &NewActivity) -> StoreResult<()> {
        let mut rtx = self.begin_recording().await?;
        write_agent_settings(&mut rtx.tx, a).await?;
        rtx.record(std::slice::from_ref(event)).await?;
        rtx.commit().await?;
        Ok(())
    }

    async fn update_agent_with_job(
        &self,
        a: &Agent,
        event: &NewActivity,
        job: &crate::NewProvisionJob,
    ) -> StoreResult<Option<i64>> {
        let mut rtx = self.begin_recording().await?;
        if write_agent_settings(&mut rtx.tx, a).await? == 0 {
            return Ok(None);
        }
        let (id, queued) = provision_jobs::queue_job(&mut rtx.tx, job).await?;
        rtx.record([event, &queued]).await?;
        rtx.commit().await?;
        Ok(Some(id))
    }

    async fn queue_agent_delete(&self, job: &crate::NewProvisionJob) -> StoreResult<Option<i64>> {
        // The one writer connection orders this against every other write of the agent.
        let mut rtx = self.begin_recording().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM agents WHERE id = ?")
            .bind(job.agent_id.to_string())
            .fetch_optional(&mut *rtx.tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let (id, queued) = provision_jobs::queue_job(&mut rtx.tx, job).await?;
        rtx.record([&queued]).await?;
        rtx.commit().await?;
        Ok(Some(id))
    }

    async fn set_agent_token(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
    ) -> StoreResult<bool> {
        let mut rtx = self.begin_recording().await?;
        if !write_agent_token(&mut rtx.tx, id, token_digest).await? {
            return Ok(false);
        }
        rtx.record(std::slice::from_ref(event)).await?;
        rtx.commit().await?;
        Ok(true)
    }

    async fn set_agent_token_with_job(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
        job: &crate::NewProvisionJob,
    ) -> StoreResult<Option<i64>> {
        let mut rtx = self.begin_recording().await?;
        if !write_agent_token(&mut rtx.tx, id, token_digest).await? {
            return Ok(None);
        }
        let (job_id, queued) = provision_jobs::queue_job(&mut rtx.tx, job).await?;
        rtx.record([event, &queued]).await?;
        rtx.commit().await?;
        Ok(Some(job_id))
    }

    async fn delete_agent(&self, id: AgentId, event: &NewActivity) -> StoreResult<bool> {
        let mut rtx = self.begin_recording().await?;
        let deleted = sqlx::query("DELETE FROM agents WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *rtx.tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        rtx.record(std::slice::from_ref(event)).await?;
        rtx.commit().await?;
        Ok(true)
    }

    async fn apply_liveness(
        &self,
        writes: &[LivenessWrite],
        seen: &[SeenWrite],
        events: &[LivenessEvent],
    ) -> StoreResult<LivenessOutcome> {
        let mut rtx = self.begin_recording().await?;
        if !seen.is_empty() {
            sqlx::query("INSERT INTO agent_liveness_log (entries) VALUES (?)")
                .bind(liveness_log::encode(seen))
                .execute(&mut *rtx.tx)
                .await
                .map_err(map_err)?;
        }
        // Many rows per statement: a statement costs a round trip to SQLite's worker
        // thread, and a batch can hold tens of thousands of agents. `last_seen_at` only
        // moves forward and the reported health goes with the newer heartbeat; the
        // published status is the transitions' to set.
        for chunk in writes.chunks(LIVENESS_ROWS_PER_STATEMENT) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH v (id, last_seen_at, reported_health, own_token_used, updated_at,
                         checkin_deadline_at, checkin_wakes, checkin_gave_up)
                   AS (VALUES {values})
                 UPDATE agent_liveness SET
                   last_seen_at = CASE WHEN agent_liveness.last_seen_at IS NULL
                                         OR v.last_seen_at >= agent_liveness.last_seen_at
                                       THEN v.last_seen_at ELSE agent_liveness.last_seen_at END,
                   reported_health = CASE WHEN agent_liveness.last_seen_at IS NULL
                                            OR v.last_seen_at >= agent_liveness.last_seen_at
                                          THEN v.reported_health
                                          ELSE agent_liveness.reported_health END,
                   own_token_used = v.own_token_used,
                   updated_at = max(agent_liveness.updated_at, v.updated_at),
                   checkin_deadline_at = v.checkin_deadline_at, checkin_wakes = v.checkin_wakes,
                   checkin_gave_up = v.checkin_gave_up
                 FROM v WHERE agent_liveness.agent_id = v.id"
            );
            let mut query = sqlx::query(&sql);
            for w in chunk {
                query = query
                    .bind(w.agent_id.to_string())
                    .bind(w.last_seen_at.map(ms))
                    .bind(w.reported_health.map(|h| h.as_str()))
                    .bind(w.own_token_used)
                    .bind(ms(w.updated_at))
                    .bind(checkin_deadline(w).map(ms))
                    .bind(i64::from(checkin_wakes(w)))
                    .bind(w.checkin == Some(Checkin::GaveUp));
            }
            query.execute(&mut *rtx.tx).await.map_err(map_err)?;
        }
        let chains = transition_chains(events);
        let mut accepted = HashSet::new();
        let mut refused = Vec::new();
        for chunk in chains.chunks(LIVENESS_ROWS_PER_STATEMENT) {
            let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH v (id, from_status, to_status) AS (VALUES {values})
                 UPDATE agent_liveness SET published_status = v.to_status
                 FROM v WHERE agent_liveness.agent_id = v.id
                   AND agent_liveness.published_status = v.from_status
                 RETURNING agent_liveness.agent_id"
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for chain in chunk {
                query = query
                    .bind(chain.agent_id.to_string())
                    .bind(chain.from.as_str())
                    .bind(chain.to.as_str());
            }
            let ids: HashSet<String> = query
                .fetch_all(&mut *rtx.tx)
                .await
                .map_err(map_err)?
                .into_iter()
                .collect();
            for chain in chunk {
                if ids.contains(&chain.agent_id.to_string()) {
                    accepted.insert(chain.agent_id);
                } else {
                    refused.push(chain.agent_id);
                }
            }
        }
        let mut outcome = LivenessOutcome::default();
        for id in refused {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT published_status FROM agent_liveness WHERE agent_id = ?",
            )
            .bind(id.to_string())
            .fetch_optional(&mut *rtx.tx)
            .await
            .map_err(map_err)?;
            outcome
                .refused
                .push((id, stored.as_deref().and_then(AgentStatus::from_stored)));
        }
        rtx.record(accepted_events(events, &accepted)).await?;
        outcome.recorded = rtx.commit().await?;
        Ok(outcome)
    }

    async fn stored_agents(&self, ids: &[AgentId]) -> StoreResult<Vec<StoredAgent>> {
        let mut stored = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIVENESS_ROWS_PER_STATEMENT) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
                 WHERE a.id IN ({marks})"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            let rows = query.fetch_all(&self.reader).await.map_err(map_err)?;
            for row in &rows {
                stored.push(stored_agent_from_row(row)?);
            }
        }
        Ok(stored)
    }

    async fn checkins_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<StoredAgent>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
             WHERE l.checkin_deadline_at IS NOT NULL AND l.checkin_deadline_at <= ?
             ORDER BY l.checkin_deadline_at LIMIT ?"
        ))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_agent_from_row).collect()
    }

    async fn agent_by_token(&self, digest: TokenDigest) -> StoreResult<Option<StoredAgent>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
             WHERE a.token_digest = ?"
        ))
        .bind(digest.as_bytes().to_vec())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(stored_agent_from_row).transpose()
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn recorded_here(&self, _event_id: i64) -> bool {
        // One process owns an SQLite file: it recorded every event.
        true
    }

    async fn hold_leadership(&self) -> StoreResult<bool> {
        // One process owns an SQLite file: it always leads.
        Ok(true)
    }

    async fn compact_liveness_log(&self) -> StoreResult<LogCompaction> {
        let fold = self.read_liveness_log().await?;
        let Some(&last_seq) = fold.seqs.last() else {
            return Ok(LogCompaction::default());
        };
        let rows = fold.sorted();
        let mut agents = 0;
        // One short transaction per chunk, its statement bound before the writer is taken:
        // the write-behind batches (and the events they record) get the writer between
        // chunks, so a fold of the whole fleet never holds them up by more than one chunk.
        // A fold that fails part way leaves the log in place; the next one applies it
        // again, which changes nothing where it already did (rows only move forward).
        for chunk in rows.chunks(liveness_log::AGENTS_PER_TRANSACTION) {
            let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "WITH v (id, last_seen_at, updated_at) AS (VALUES {values})
                 UPDATE agent_liveness
                   SET last_seen_at = max(coalesce(agent_liveness.last_seen_at,
                                                   v.last_seen_at), v.last_seen_at),
                       updated_at = max(agent_liveness.updated_at, v.updated_at)
                 FROM v WHERE agent_liveness.agent_id = v.id"
            );
            let mut query = sqlx::query(&sql);
            for (id, seen, updated) in chunk {
                query = query
                    .bind(id.to_string())
                    .bind(ms(*seen))
                    .bind(ms(*updated));
            }
            let mut tx = self.begin().await?;
            agents += query
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
            tx.commit().await.map_err(map_err)?;
        }
        // Only now, with every heartbeat they hold in the rows, do the log rows go. One
        // writer: every row up to the last one read was committed before the read, and
        // rows appended since have higher numbers.
        sqlx::query("DELETE FROM agent_liveness_log WHERE seq <= ?")
            .bind(last_seq)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(fold.outcome(agents))
    }

    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentToken,
        digest: TokenDigest,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO enrollment_tokens ({ENROLLMENT_COLUMNS}, token_digest)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(t.id.to_string())
        .bind(t.board_id.to_string())
        .bind(ms(t.expires_at))
        .bind(t.max_uses.map(i64::from))
        .bind(i64::from(t.uses))
        .bind(t.revoked_at.map(ms))
        .bind(ms(t.created_at))
        .bind(digest.as_bytes().to_vec())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn enrollment_token_by_digest(
        &self,
        digest: TokenDigest,
    ) -> StoreResult<Option<EnrollmentToken>> {
        let row = sqlx::query(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE token_digest = ?"
        ))
        .bind(digest.as_bytes().to_vec())
        .fetch_optional(&self.writer)
        .await
        .map_err(map_err)?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn list_enrollment_tokens(
        &self,
        board_id: BoardId,
        page: PageRequest,
    ) -> StoreResult<Page<EnrollmentToken>> {
        let listing = Listing {
            table: "enrollment_tokens",
            columns: ENROLLMENT_COLUMNS,
            filters: vec![("board_id", Some(board_id.to_string()))],
            order_by: "created_at DESC, id DESC",
        };
        self.fetch_page(listing, page, enrollment_from_row).await
    }

    async fn revoke_enrollment_token(
        &self,
        board_id: BoardId,
        id: EnrollmentTokenId,
        now: Timestamp,
    ) -> StoreResult<Option<EnrollmentToken>> {
        let row = sqlx::query(&format!(
            "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, ?)
             WHERE id = ? AND board_id = ? RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(ms(now))
        .bind(id.to_string())
        .bind(board_id.to_string())
        .fetch_optional(&self.writer)
        .await
        .map_err(map_err)?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn list_activity(
        &self,
        filter: ActivityFilter,
        page: PageRequest,
    ) -> StoreResult<Page<ActivityEvent>> {
        let listing = Listing {
            table: "activity_events",
            columns: ACTIVITY_COLUMNS,
            filters: vec![
                ("agent_id", filter.agent_id.map(|a| a.to_string())),
                ("board_id", filter.board_id.map(|b| b.to_string())),
            ],
            order_by: "id DESC",
        };
        self.fetch_page(listing, page, activity_from_row).await
    }

    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        self.insert_webhook_row(webhook).await
    }

    async fn webhook(&self, id: WebhookId) -> StoreResult<Option<Webhook>> {
        self.webhook_row(id).await
    }

    async fn list_webhooks(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Webhook>> {
        self.webhook_page(org, page).await
    }

    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        self.update_webhook_row(webhook).await
    }

    async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool> {
        self.delete_webhook_row(id).await
    }

    async fn list_deliveries(
        &self,
        webhook_id: WebhookId,
        page: PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        self.delivery_page(webhook_id, page).await
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.claim_deliveries(now, lease_until, limit).await
    }

    async fn record_delivery_attempt(&self, attempt: &DeliveryAttempt) -> StoreResult<()> {
        self.record_attempt(attempt).await
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        self.earliest_due().await
    }

    async fn pending_deliveries(&self) -> StoreResult<u64> {
        self.count_pending().await
    }

    async fn pending_provision_jobs(&self) -> StoreResult<u64> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM provision_jobs WHERE state = 'pending'")
                .fetch_one(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(count(pending))
    }

    async fn enqueue_provision_job(&self, job: &crate::NewProvisionJob) -> StoreResult<i64> {
        self.insert_provision_job(job).await
    }

    async fn claim_due_provision_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<crate::ProvisionJob>> {
        self.claim_provision_jobs(now, lease_until, limit).await
    }

    async fn record_provision_attempt(&self, attempt: &crate::ProvisionAttempt) -> StoreResult<()> {
        self.record_provision_outcome(attempt).await
    }

    async fn next_provision_job_due(&self) -> StoreResult<Option<Timestamp>> {
        self.earliest_provision_due().await
    }

    async fn provision_jobs(&self, agent_id: AgentId) -> StoreResult<Vec<crate::ProvisionJob>> {
        self.provision_jobs_of(agent_id).await
    }

    async fn unfinished_provision_jobs(&self) -> StoreResult<Vec<crate::ProvisionJob>> {
        self.pending_jobs().await
    }

    async fn set_provision_error(&self, id: AgentId, error: Option<&str>) -> StoreResult<bool> {
        self.write_provision_error(id, error).await
    }

    async fn mark_provision_job_started(&self, id: i64, at: Timestamp) -> StoreResult<()> {
        self.mark_started(id, at).await
    }

    fn subscribe_activity(&self) -> broadcast::Receiver<ActivityEvent> {
        self.feed.subscribe()
    }

    async fn activity_since(
        &self,
        after_id: i64,
        filter: ActivityFilter,
        limit: u32,
    ) -> StoreResult<Vec<ActivityEvent>> {
        let (conditions, params) = where_clause(vec![
            ("agent_id", filter.agent_id.map(|a| a.to_string())),
            ("board_id", filter.board_id.map(|b| b.to_string())),
        ]);
        let sql = format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activity_events
             WHERE id > ?{after} AND {conditions} ORDER BY id LIMIT ?{limit}",
            after = params.len() + 1,
            limit = params.len() + 2,
        );
        let mut query = sqlx::query(&sql);
        for param in params {
            query = query.bind(param);
        }
        let rows = query
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(activity_from_row).collect()
    }

    async fn latest_activity_id(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM activity_events")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)
    }
}

/// Spends one use of an enrollment token, or refuses with the reason.
async fn spend_enrollment_use(
    tx: &mut Transaction<'_, Sqlite>,
    spend: EnrollmentSpend,
) -> StoreResult<()> {
    let row = sqlx::query(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE id = ?"
    ))
    .bind(spend.token_id.to_string())
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    let Some(token) = row.as_ref().map(enrollment_from_row).transpose()? else {
        return Err(StoreError::EnrollmentRefused(EnrollmentRefusal::Revoked));
    };
    token
        .check_usable(spend.now)
        .map_err(StoreError::EnrollmentRefused)?;
    sqlx::query("UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?")
        .bind(spend.token_id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
    /// Inserts an agent (and its first provisioning job, when given) in one transaction.
    async fn insert_agent_and_job(
        &self,
        a: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
        job: Option<&crate::NewProvisionJob>,
    ) -> StoreResult<Option<i64>> {
        let mut rtx = self.begin_recording().await?;
        if let Some(spend) = spend {
            spend_enrollment_use(&mut rtx.tx, spend).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO agents ({AGENT_INSERT_COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(a.id.to_string())
        .bind(a.board_id.map(|b| b.to_string()))
        .bind(a.gateway_id.to_string())
        .bind(a.name.as_str())
        .bind(a.name.key())
        .bind(a.is_board_lead)
        .bind(a.is_mc_agent)
        .bind(&a.gateway_agent_id)
        .bind(&a.workspace_path)
        .bind(&a.openclaw_session_id)
        .bind(i64::from(a.heartbeat_config.interval_seconds))
        .bind(i64::from(a.heartbeat_config.missing_tolerance))
        .bind(rows::profile_json(a))
        .bind(&a.identity_template)
        .bind(&a.soul_template)
        .bind(&a.last_provision_error)
        .bind(a.enrolled_via.map(|id| id.to_string()))
        .bind(ms(a.created_at))
        .bind(ms(a.updated_at))
        .bind(token_digest.map(|d| d.as_bytes().to_vec()))
        .execute(&mut *rtx.tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO agent_liveness
               (agent_id, last_seen_at, reported_health, published_status, own_token_used, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(a.id.to_string())
        .bind(a.last_seen_at.map(ms))
        .bind(a.reported_health.map(|h| h.as_str()))
        .bind(a.published_status.as_str())
        .bind(a.own_token_used)
        .bind(ms(a.updated_at))
        .execute(&mut *rtx.tx)
        .await
        .map_err(map_err)?;
        rtx.record(std::slice::from_ref(event)).await?;
        let job_id = match job {
            Some(job) => {
                let (id, queued) = provision_jobs::queue_job(&mut rtx.tx, job).await?;
                rtx.record([&queued]).await?;
                Some(id)
            }
            None => None,
        };
        rtx.commit().await?;
        Ok(job_id)
    }
}
