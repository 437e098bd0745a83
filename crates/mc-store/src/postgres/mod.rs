//! The PostgreSQL backend: for fleets larger than one machine and for several `serve`
//! replicas sharing one database.
//!
//! - One connection pool; PostgreSQL handles concurrent writers itself. Every pooled
//!   connection is checked before use, so a database that restarted is picked up again
//!   without restarting Mission Control; while it is gone, calls fail fast-ish (the pool's
//!   acquire timeout) with [`StoreError::Unavailable`].
//! - Unique violations are mapped by constraint *name* (the names are fixed in the
//!   migrations), never by message text.
//! - Activity event ids come from an identity column and are allocated under a
//!   transaction-scoped advisory lock, so they become visible in id order: a reader that
//!   resumes after id N (SSE `Last-Event-ID`) never misses an event committed later with
//!   a smaller id.
//! - Liveness batches are one `UPDATE ... FROM unnest(...)` statement: one round trip for
//!   any number of agents, rows taken in agent-id order so that two replicas' batches
//!   cannot deadlock. Heartbeats that changed nothing but the times go straight to the
//!   rows too (no liveness log, unlike SQLite), newest heartbeat winning with its health:
//!   other replicas read those rows, the leader before it declares an agent offline. Only
//!   a batch that records transitions reads (and locks) its rows first.

mod feed;
mod leadership;
mod provision_jobs;
mod rows;
mod webhooks;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
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
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Row as _, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use self::rows::{
    ACTIVITY_COLUMNS, AGENT_COLUMNS, AGENT_FROM, AGENT_ORDER, BOARD_COLUMNS, CHECKIN_COLUMNS,
    ENROLLMENT_COLUMNS, GATEWAY_COLUMNS, activity_from_row, agent_from_row, board_from_row,
    enrollment_from_row, gateway_from_row, to_timestamptz as tz,
};
use crate::liveness_columns::{checkin_deadline, checkin_wakes};
use crate::{
    ActivityFilter, AgentFilter, Constraint, DeliveryAttempt, DueDelivery, EnrollmentSpend,
    LivenessEvent, LivenessOutcome, LivenessWrite, LogCompaction, PoolStats, SeenWrite, Store,
    StoreError, StoreResult, StoredAgent, Transition, accepted_events, transition_chains,
};
use mc_domain::liveness::Checkin;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per `serve` process. PostgreSQL's default limit is 100 connections, which
/// leaves room for several replicas, `migrate` and an operator's `psql`.
const POOL_MAX_CONNECTIONS: u32 = 10;

/// How long a request waits for a connection before it answers 503. Short: while the
/// database is down, callers learn it within this time.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the first connection at start may take (an unreachable host can otherwise
/// hang for the operating system's TCP timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock key held while activity ids are allocated ("mc-activity" in ASCII).
const ACTIVITY_ID_LOCK: i64 = 0x6d63_2d61_6374_6976;

/// Mission Control's store on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// How to open the leadership lock's own connection.
    options: PgConnectOptions,
    leadership: Arc<leadership::Leadership>,
    recorded_here: Arc<feed::RecordedHere>,
    feed: broadcast::Sender<ActivityEvent>,
    _listener: Arc<feed::FeedTask>,
}

/// Events the feed buffers for a slow subscriber before it lags.
const FEED_CAPACITY: usize = 4096;

/// The one place driver errors become [`StoreError`]s.
fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let constraint = match (code.as_ref(), db.constraint()) {
                ("23505", Some("agents_board_name_key")) => Some(Constraint::AgentNameOnBoard),
                ("23505", Some("boards_slug_key")) => Some(Constraint::BoardSlug),
                ("23505", Some("agents_gateway_main")) => Some(Constraint::GatewayMainAgent),
                (
                    "23505",
                    Some("agents_token_digest_key" | "enrollment_tokens_token_digest_key"),
                ) => Some(Constraint::TokenDigest),
                // A board added to the gateway while it was being deleted.
                ("23503", Some("boards_gateway_id_fkey")) => Some(Constraint::GatewayHasBoards),
                _ => None,
            };
            if let Some(constraint) = constraint {
                return StoreError::Conflict(constraint);
            }
            if matches!(code.as_ref(), "40001" | "40P01") {
                return StoreError::Contention(db.message().to_owned());
            }
            if is_transient(&code) {
                StoreError::Unavailable(db.message().to_owned())
            } else {
                StoreError::Internal(error.to_string())
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

/// SQLSTATEs that say "the database cannot serve this now; the same call may succeed
/// later": connection exceptions (08), shutdown or start-up in progress (57P01..57P03),
/// insufficient resources (53: too many connections, disk full). Deadlocks and
/// serialization failures are not outages: they are [`StoreError::Contention`].
fn is_transient(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
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

/// Where a URL points, for messages: never the password.
fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or(options.get_username());
    format!(
        "database {database:?} on {}:{} as {:?}",
        options.get_host(),
        options.get_port(),
        options.get_username()
    )
}

fn profile_json(agent: &Agent) -> Option<String> {
    agent
        .identity_profile
        .as_ref()
        .map(|p| serde_json::to_string(p).unwrap_or_default())
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and brings its
    /// schema up to date. The database itself must exist: a mistyped name is an error,
    /// never a new empty database.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("mission-control");
        let target = describe(&options);
        // One connection outside the pool first: its error (refused, authentication,
        // unknown database) is the operator's answer, where a pool would only time out.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                StoreError::Config(format!(
                    "cannot connect to PostgreSQL {target}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                StoreError::Config(format!("cannot connect to PostgreSQL {target}: {e}"))
            })?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_MAX_CONNECTIONS)
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(600))
            .test_before_acquire(true)
            .connect_lazy_with(options.clone());
        // The migrator holds an advisory lock while it runs, so replicas starting together
        // migrate once.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migrating {target} failed: {e}")))?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let listener = feed::start(pool.clone(), feed.clone()).await?;
        Ok(Self {
            pool,
            options,
            leadership: Arc::default(),
            recorded_here: Arc::default(),
            feed,
            _listener: Arc::new(listener),
        })
    }

    /// The rows of one page of agents: `sql` (a query over [`agent_page_ids`]) with its
    /// filter values bound in order, then the page's limit and offset.
    async fn agent_page_rows(
        &self,
        sql: &str,
        params: &[Uuid],
        page: PageRequest,
    ) -> StoreResult<Vec<PgRow>> {
        let (limit, offset) = page_bounds(page);
        let mut query = sqlx::query(sql);
        for param in params {
            query = query.bind(param);
        }
        query
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    /// Runs the migrations only (the `migrate` command); `open` already does this.
    pub async fn migrate(url: &str) -> StoreResult<()> {
        let store = Self::open(url).await?;
        store.pool.close().await;
        Ok(())
    }

    async fn begin(&self) -> StoreResult<Transaction<'_, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }

    /// The row `sql` selects for one bound id, converted, if there is one.
    async fn fetch_by_id<T>(
        &self,
        sql: &str,
        id: Uuid,
        convert: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(convert).transpose()
    }

    /// One page of a listing and the total count before paging.
    async fn fetch_page<T>(
        &self,
        listing: Listing<'_>,
        page: PageRequest,
        convert: fn(&PgRow) -> StoreResult<T>,
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
        let total = count_query.fetch_one(&self.pool).await.map_err(map_err)?;
        let n = params.len();
        let rows_sql = format!(
            "SELECT {columns} FROM {table} WHERE {filter} ORDER BY {order_by} LIMIT ${} OFFSET ${}",
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
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(Page {
            items: rows.iter().map(convert).collect::<Result<_, _>>()?,
            total: count(total),
        })
    }
}

/// A filtered, ordered listing. Only the filters that are set become conditions, so each
/// query has a plan that uses the matching index (no `$1 IS NULL OR ...` generic plans).
struct Listing<'a> {
    table: &'a str,
    columns: &'a str,
    filters: Vec<(&'static str, Option<Uuid>)>,
    order_by: &'a str,
}

/// The query of the ids of one page of agents matching `filter`, newest first, and its
/// parameters: the filter's values, to be followed by the limit and the offset. It reads
/// a listing index alone (migration 0008): no table row for the rows the offset skips.
fn agent_page_ids(filter: AgentFilter) -> (String, Vec<Uuid>) {
    let (condition, params) = where_clause(vec![
        ("a.board_id", filter.board_id.map(|b| b.as_uuid())),
        ("a.gateway_id", filter.gateway_id.map(|g| g.as_uuid())),
    ]);
    let n = params.len();
    let sql = format!(
        "SELECT a.id FROM agents a WHERE {condition} ORDER BY {AGENT_ORDER} LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    );
    (sql, params)
}

/// The `WHERE` clause for the filters that are set, and their values in order.
fn where_clause(filters: Vec<(&'static str, Option<Uuid>)>) -> (String, Vec<Uuid>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (column, value) in filters {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} = ${}", params.len()));
        }
    }
    if conditions.is_empty() {
        conditions.push("TRUE".to_owned());
    }
    (conditions.join(" AND "), params)
}

/// Records `events` in order, as the last step of the caller's transaction.
///
/// The advisory lock is held until the transaction ends, so transactions that record
/// events commit in the order their ids were allocated. Callers take no other lock after
/// this one (it is always their last statement), so it cannot take part in a deadlock.
async fn insert_activities(
    tx: &mut Transaction<'_, Postgres>,
    events: &[impl Borrow<NewActivity>],
    here: &feed::RecordedHere,
) -> StoreResult<Vec<ActivityEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let events: Vec<&NewActivity> = events.iter().map(Borrow::borrow).collect();
    // The lock joins every row, so it is held before the first id is drawn; taking it in
    // the same statement saves a round trip.
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "WITH id_order AS (SELECT pg_advisory_xact_lock($7))
         INSERT INTO activity_events (event_type, message, agent_id, board_id, data, created_at)
         SELECT e.event_type, e.message, e.agent_id, e.board_id, e.data::jsonb, e.created_at
         FROM id_order,
              unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                     $6::timestamptz[])
              WITH ORDINALITY
              AS e (event_type, message, agent_id, board_id, data, created_at, position)
         ORDER BY e.position
         RETURNING id",
    )
    .bind(
        events
            .iter()
            .map(|e| e.event_type.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.message.clone()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.agent_id.map(|id| id.as_uuid()))
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.board_id.map(|id| id.as_uuid()))
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.data.as_ref().map(ToString::to_string))
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| tz(e.created_at)).collect::<Vec<_>>())
    .bind(ACTIVITY_ID_LOCK)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_err)?;
    // Rows are inserted in `position` order, so the identity values ascend with it.
    ids.sort_unstable();
    // Noted before the commit, so the feed can never deliver them unnoted.
    here.note(&ids);
    if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
        webhooks::queue_deliveries(tx, *first, *last).await?;
        feed::notify(tx).await?;
    }
    Ok(ids
        .into_iter()
        .zip(events)
        .map(|(id, event)| ActivityEvent {
            id,
            event_type: event.event_type.as_str().to_owned(),
            message: event.message.clone(),
            agent_id: event.agent_id,
            board_id: event.board_id,
            data: event.data.clone(),
            created_at: event.created_at,
        })
        .collect())
}

/// What a liveness batch writes to one agent's row.
enum RowChange<'a> {
    /// Every liveness field (`writes`).
    Full(&'a LivenessWrite),
    /// A plain heartbeat (`seen`).
    Seen(&'a SeenWrite),
    /// Only the published status (a transition without a field change).
    StatusOnly,
}

/// One agent's row in a liveness batch: its change, and the status its accepted
/// transitions end in.
struct RowWrite<'a> {
    agent_id: AgentId,
    change: RowChange<'a>,
    to_status: Option<AgentStatus>,
}

/// Locks the rows of `ids` in agent-id order and returns the stored published status of
/// those in `chains` (agents without a row are missing). Under these locks no other
/// transaction can change the statuses until this one ends, so each transition's verdict
/// is final.
async fn lock_rows_for_transitions(
    tx: &mut Transaction<'_, Postgres>,
    ids: Vec<Uuid>,
    chains: &[Transition],
) -> StoreResult<HashMap<AgentId, Option<AgentStatus>>> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "WITH locked AS (
             SELECT agent_id, published_status FROM agent_liveness
              WHERE agent_id = ANY($1) ORDER BY agent_id FOR NO KEY UPDATE)
         SELECT agent_id, published_status FROM locked WHERE agent_id = ANY($2)",
    )
    .bind(ids)
    .bind(
        chains
            .iter()
            .map(|c| c.agent_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(rows
        .into_iter()
        .map(|(id, stored)| (AgentId::from(id), AgentStatus::from_stored(&stored)))
        .collect())
}

/// Updates every row of a batch in one statement, each row once (a second update of a row
/// in one transaction makes PostgreSQL check its foreign key, which waits for the agent's
/// row: a token rotation holding that row and waiting for this one's liveness row would
/// deadlock).
///
/// Per row: `last_seen_at` and `updated_at` never move back; the reported health goes with
/// the newest heartbeat (another replica may have written a newer or an older one); a full
/// write sets the token use and the check-in wait as this replica knows them, while a plain
/// heartbeat newer than the stored one ends the stored wait (the heartbeat is the
/// check-in); the published status becomes the accepted transition's `to`.
///
/// Unless the batch `locked` its rows already, the rows are locked as the statement reaches
/// them, in agent-id order (the sorted `v`, joined by merge join or by index lookups: hash
/// joins and sequential scans, which can take the table's physical order, are switched off
/// for the statement), so two replicas' batches lock shared rows in the same order and
/// cannot deadlock, without a locking read before the write.
async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[RowWrite<'_>],
    locked: bool,
) -> StoreResult<()> {
    let columns = RowColumns::of(rows);
    if !locked {
        sqlx::query(
            "SELECT set_config('enable_hashjoin', 'off', true),
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    sqlx::query(
        "UPDATE agent_liveness AS l SET
           last_seen_at = GREATEST(l.last_seen_at, v.last_seen_at),
           reported_health = CASE WHEN COALESCE(v.last_seen_at >= l.last_seen_at,
                                                v.last_seen_at IS NOT NULL)
                                  THEN v.reported_health ELSE l.reported_health END,
           own_token_used = COALESCE(v.own_token_used, l.own_token_used),
           updated_at = GREATEST(l.updated_at, v.updated_at),
           checkin_deadline_at = CASE
               WHEN v.full_write THEN v.checkin_deadline_at
               WHEN COALESCE(v.last_seen_at > l.last_seen_at, v.last_seen_at IS NOT NULL)
               THEN NULL ELSE l.checkin_deadline_at END,
           checkin_wakes = CASE
               WHEN v.full_write THEN v.checkin_wakes
               WHEN COALESCE(v.last_seen_at > l.last_seen_at, v.last_seen_at IS NOT NULL)
               THEN 0 ELSE l.checkin_wakes END,
           checkin_gave_up = CASE
               WHEN v.full_write THEN v.checkin_gave_up
               WHEN COALESCE(v.last_seen_at > l.last_seen_at, v.last_seen_at IS NOT NULL)
               THEN FALSE ELSE l.checkin_gave_up END,
           published_status = COALESCE(v.to_status, l.published_status)
         FROM (SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[],
                                    $4::timestamptz[], $5::boolean[], $6::boolean[],
                                    $7::timestamptz[], $8::bigint[], $9::boolean[], $10::text[])
                   AS v (agent_id, last_seen_at, reported_health, updated_at, full_write,
                         own_token_used, checkin_deadline_at, checkin_wakes, checkin_gave_up,
                         to_status)
                ORDER BY agent_id) AS v
         WHERE l.agent_id = v.agent_id",
    )
    .bind(columns.agent_id)
    .bind(columns.last_seen_at)
    .bind(columns.reported_health)
    .bind(columns.updated_at)
    .bind(columns.full_write)
    .bind(columns.own_token_used)
    .bind(columns.checkin_deadline_at)
    .bind(columns.checkin_wakes)
    .bind(columns.checkin_gave_up)
    .bind(columns.to_status)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    // The rest of the transaction (recording the events) plans as usual.
    if !locked {
        sqlx::query(
            "SELECT set_config(name, reset_val, true) FROM pg_settings
              WHERE name IN ('enable_hashjoin', 'enable_seqscan')",
        )
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

/// The arrays [`write_rows`] binds, one element per row, except that the columns only full
/// writes use stop after them, and `to_status` after the last row with a transition:
/// `unnest` pads the shorter arrays with NULLs, so the plain heartbeats (most of a batch)
/// cost nothing there.
struct RowColumns {
    agent_id: Vec<Uuid>,
    last_seen_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    reported_health: Vec<Option<&'static str>>,
    updated_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    full_write: Vec<bool>,
    own_token_used: Vec<bool>,
    checkin_deadline_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    checkin_wakes: Vec<i64>,
    checkin_gave_up: Vec<bool>,
    to_status: Vec<Option<&'static str>>,
}

impl RowColumns {
    fn of(rows: &[RowWrite<'_>]) -> Self {
        // Full writes first, then the other rows with a transition, then the rest.
        let rank = |row: &RowWrite<'_>| match row.change {
            RowChange::Full(_) => 0,
            _ if row.to_status.is_some() => 1,
            _ => 2,
        };
        let mut ordered: Vec<&RowWrite<'_>> = rows.iter().collect();
        ordered.sort_by_key(|row| rank(row));
        let with_status = ordered.iter().take_while(|row| rank(row) < 2).count();
        let mut columns = Self {
            agent_id: Vec::with_capacity(ordered.len()),
            last_seen_at: Vec::with_capacity(ordered.len()),
            reported_health: Vec::with_capacity(ordered.len()),
            updated_at: Vec::with_capacity(ordered.len()),
            full_write: Vec::new(),
            own_token_used: Vec::new(),
            checkin_deadline_at: Vec::new(),
            checkin_wakes: Vec::new(),
            checkin_gave_up: Vec::new(),
            to_status: Vec::with_capacity(with_status),
        };
        for (position, row) in ordered.iter().enumerate() {
            let (last_seen_at, reported_health, updated_at) = match row.change {
                RowChange::Full(write) => {
                    columns.full_write.push(true);
                    columns.own_token_used.push(write.own_token_used);
                    columns
                        .checkin_deadline_at
                        .push(checkin_deadline(write).map(tz));
                    columns.checkin_wakes.push(i64::from(checkin_wakes(write)));
                    columns
                        .checkin_gave_up
                        .push(write.checkin == Some(Checkin::GaveUp));
                    (
                        write.last_seen_at,
                        write.reported_health,
                        Some(write.updated_at),
                    )
                }
                RowChange::Seen(seen) => (
                    Some(seen.last_seen_at),
                    seen.reported_health,
                    Some(seen.updated_at),
                ),
                RowChange::StatusOnly => (None, None, None),
            };
            columns.agent_id.push(row.agent_id.as_uuid());
            columns.last_seen_at.push(last_seen_at.map(tz));
            columns
                .reported_health
                .push(reported_health.map(|health| health.as_str()));
            columns.updated_at.push(updated_at.map(tz));
            if position < with_status {
                columns
                    .to_status
                    .push(row.to_status.map(|status| status.as_str()));
            }
        }
        columns
    }
}

/// An agent read with its token digest and check-in columns.
fn stored_agent_from_row(row: &PgRow) -> StoreResult<StoredAgent> {
    let digest: Option<Vec<u8>> = row.try_get("token_digest").map_err(map_err)?;
    Ok(StoredAgent {
        agent: agent_from_row(row)?,
        token_digest: digest.as_deref().and_then(TokenDigest::from_slice),
        checkin: rows::checkin_from_row(row)?,
    })
}

async fn insert_activity(
    tx: &mut Transaction<'_, Postgres>,
    event: &NewActivity,
    here: &feed::RecordedHere,
) -> StoreResult<()> {
    insert_activities(tx, std::slice::from_ref(event), here)
        .await
        .map(drop)
}

/// Replaces an agent's token digest in `tx` (its own-token flag starts over); false when
/// the agent does not exist.
async fn write_agent_token(
    tx: &mut Transaction<'_, Postgres>,
    id: AgentId,
    token_digest: TokenDigest,
) -> StoreResult<bool> {
    let changed = sqlx::query("UPDATE agents SET token_digest = $1 WHERE id = $2")
        .bind(token_digest.as_bytes().to_vec())
        .bind(id.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?
        .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE agent_liveness SET own_token_used = FALSE WHERE agent_id = $1")
        .bind(id.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(true)
}

/// Writes an agent's settings (not its liveness fields); returns the rows changed (0 when
/// the agent does not exist).
async fn write_agent_settings(tx: &mut Transaction<'_, Postgres>, a: &Agent) -> StoreResult<u64> {
    let changed = sqlx::query(
        "UPDATE agents SET board_id = $1, gateway_id = $2, name = $3, name_key = $4,
           is_board_lead = $5, gateway_agent_id = $6, workspace_path = $7,
           openclaw_session_id = $8, heartbeat_interval_seconds = $9,
           heartbeat_missing_tolerance = $10, identity_profile = $11::jsonb,
           identity_template = $12, soul_template = $13, last_provision_error = $14,
           updated_at = $15
         WHERE id = $16",
    )
    .bind(a.board_id.map(|b| b.as_uuid()))
    .bind(a.gateway_id.as_uuid())
    .bind(a.name.as_str())
    .bind(a.name.key())
    .bind(a.is_board_lead)
    .bind(&a.gateway_agent_id)
    .bind(&a.workspace_path)
    .bind(&a.openclaw_session_id)
    .bind(i64::from(a.heartbeat_config.interval_seconds))
    .bind(i64::from(a.heartbeat_config.missing_tolerance))
    .bind(profile_json(a))
    .bind(&a.identity_template)
    .bind(&a.soul_template)
    .bind(&a.last_provision_error)
    .bind(tz(a.updated_at))
    .bind(a.id.as_uuid())
    .execute(&mut **tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    Ok(changed)
}

async fn delete_agents_returning(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    key: Uuid,
) -> StoreResult<Vec<AgentId>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(ids.into_iter().map(AgentId::from).collect())
}

/// Spends one use of an enrollment token, or refuses with the reason. The row is locked
/// first, so concurrent enrollments on a one-use token cannot both succeed.
async fn spend_enrollment_use(
    tx: &mut Transaction<'_, Postgres>,
    spend: EnrollmentSpend,
) -> StoreResult<()> {
    let row = sqlx::query(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE id = $1 FOR UPDATE"
    ))
    .bind(spend.token_id.as_uuid())
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    let Some(token) = row.as_ref().map(enrollment_from_row).transpose()? else {
        return Err(StoreError::EnrollmentRefused(EnrollmentRefusal::Revoked));
    };
    token
        .check_usable(spend.now)
        .map_err(StoreError::EnrollmentRefused)?;
    sqlx::query("UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = $1")
        .bind(spend.token_id.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn ensure_default_organization(&self, now: Timestamp) -> StoreResult<OrganizationId> {
        let mut tx = self.begin().await?;
        // Replicas starting together race here: the partial unique index lets exactly one
        // insert win, and the others read the winner's row.
        let created: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO organizations (id, name, is_default, created_at, updated_at)
             VALUES ($1, 'Default', TRUE, $2, $2)
             ON CONFLICT (is_default) WHERE is_default DO NOTHING
             RETURNING id",
        )
        .bind(OrganizationId::new().as_uuid())
        .bind(tz(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(org) = created else {
            let existing: Uuid =
                sqlx::query_scalar("SELECT id FROM organizations WHERE is_default")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            return Ok(OrganizationId::from(existing));
        };
        sqlx::query(
            "INSERT INTO users (id, external_id, name, email, created_at)
             VALUES ($1, 'local-admin', 'Administrator', NULL, $2)
             ON CONFLICT (external_id) DO NOTHING",
        )
        .bind(UserId::new().as_uuid())
        .bind(tz(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO organization_members
               (organization_id, user_id, role, all_boards_read, all_boards_write, created_at)
             SELECT $1, id, 'owner', TRUE, TRUE, $2 FROM users WHERE external_id = 'local-admin'",
        )
        .bind(org)
        .bind(tz(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(OrganizationId::from(org))
    }

    async fn insert_gateway(&self, g: &Gateway) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO gateways ({GATEWAY_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(g.id.as_uuid())
        .bind(g.organization_id.as_uuid())
        .bind(&g.name)
        .bind(g.url.stored())
        .bind(g.token.as_ref().map(|t| t.expose().to_owned()))
        .bind(&g.workspace_root)
        .bind(g.allow_insecure_tls)
        .bind(g.disable_device_pairing)
        .bind(tz(g.created_at))
        .bind(tz(g.updated_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn gateway(&self, id: GatewayId) -> StoreResult<Option<Gateway>> {
        let sql = format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = $1");
        self.fetch_by_id(&sql, id.as_uuid(), gateway_from_row).await
    }

    async fn list_gateways(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Gateway>> {
        let listing = Listing {
            table: "gateways",
            columns: GATEWAY_COLUMNS,
            filters: vec![("organization_id", Some(org.as_uuid()))],
            order_by: "created_at DESC, id DESC",
        };
        self.fetch_page(listing, page, gateway_from_row).await
    }

    async fn update_gateway(&self, g: &Gateway) -> StoreResult<()> {
        sqlx::query(
            "UPDATE gateways SET name = $1, url = $2, token = $3, workspace_root = $4,
               allow_insecure_tls = $5, disable_device_pairing = $6, updated_at = $7
             WHERE id = $8",
        )
        .bind(&g.name)
        .bind(g.url.stored())
        .bind(g.token.as_ref().map(|t| t.expose().to_owned()))
        .bind(&g.workspace_root)
        .bind(g.allow_insecure_tls)
        .bind(g.disable_device_pairing)
        .bind(tz(g.updated_at))
        .bind(g.id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn delete_gateway(
        &self,
        id: GatewayId,
        events: &[NewActivity],
    ) -> StoreResult<Option<Vec<AgentId>>> {
        let mut tx = self.begin().await?;
        let boards: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM boards WHERE gateway_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if boards > 0 {
            return Err(StoreError::Conflict(Constraint::GatewayHasBoards));
        }
        let agents = delete_agents_returning(
            &mut tx,
            "DELETE FROM agents WHERE gateway_id = $1 RETURNING id",
            id.as_uuid(),
        )
        .await?;
        let deleted = sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        insert_activities(&mut tx, events, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(agents))
    }

    async fn insert_board(&self, b: &Board) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO boards ({BOARD_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(b.id.as_uuid())
        .bind(b.organization_id.as_uuid())
        .bind(&b.name)
        .bind(b.slug.as_str())
        .bind(&b.description)
        .bind(b.gateway_id.as_uuid())
        .bind(b.rules.require_approval_for_done)
        .bind(b.rules.require_review_before_done)
        .bind(b.rules.comment_required_for_review)
        .bind(b.rules.block_status_changes_with_pending_approval)
        .bind(b.rules.only_lead_can_change_status)
        .bind(i64::from(b.rules.max_agents))
        .bind(tz(b.created_at))
        .bind(tz(b.updated_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn board(&self, id: BoardId) -> StoreResult<Option<Board>> {
        let sql = format!("SELECT {BOARD_COLUMNS} FROM boards WHERE id = $1");
        self.fetch_by_id(&sql, id.as_uuid(), board_from_row).await
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
                ("organization_id", Some(org.as_uuid())),
                ("gateway_id", gateway_id.map(|g| g.as_uuid())),
            ],
            // Byte order, as on SQLite, whatever the database's collation.
            order_by: "lower(name) COLLATE \"C\" ASC, created_at DESC",
        };
        self.fetch_page(listing, page, board_from_row).await
    }

    async fn update_board(&self, b: &Board) -> StoreResult<()> {
        sqlx::query(
            "UPDATE boards SET name = $1, slug = $2, description = $3, gateway_id = $4,
               require_approval_for_done = $5, require_review_before_done = $6,
               comment_required_for_review = $7, block_status_changes_with_pending_approval = $8,
               only_lead_can_change_status = $9, max_agents = $10, updated_at = $11
             WHERE id = $12",
        )
        .bind(&b.name)
        .bind(b.slug.as_str())
        .bind(&b.description)
        .bind(b.gateway_id.as_uuid())
        .bind(b.rules.require_approval_for_done)
        .bind(b.rules.require_review_before_done)
        .bind(b.rules.comment_required_for_review)
        .bind(b.rules.block_status_changes_with_pending_approval)
        .bind(b.rules.only_lead_can_change_status)
        .bind(i64::from(b.rules.max_agents))
        .bind(tz(b.updated_at))
        .bind(b.id.as_uuid())
        .execute(&self.pool)
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
        let mut tx = self.begin().await?;
        // Queued while the agents still exist, so that each queued event names its agent
        // and board.
        let mut recorded = Vec::with_capacity(cleanup.len() + events.len());
        for job in cleanup {
            recorded.push(provision_jobs::queue_job(&mut tx, job).await?.1);
        }
        recorded.extend_from_slice(events);
        let agents = delete_agents_returning(
            &mut tx,
            "DELETE FROM agents WHERE board_id = $1 RETURNING id",
            id.as_uuid(),
        )
        .await?;
        let deleted = sqlx::query("DELETE FROM boards WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        insert_activities(&mut tx, &recorded, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
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
        let sql = format!("SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE a.id = $1");
        self.fetch_by_id(&sql, id.as_uuid(), agent_from_row).await
    }

    async fn list_agents(&self, filter: AgentFilter, page: PageRequest) -> StoreResult<Vec<Agent>> {
        let (ids, params) = agent_page_ids(filter);
        // The settings and the liveness rows, which every write-behind batch rewrites,
        // are read for the page's rows only, never for those the offset skips.
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM ({ids}) page
             JOIN agents a ON a.id = page.id JOIN agent_liveness l ON l.agent_id = a.id
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
        rows.iter().map(|row| rows::id(row, "id")).collect()
    }

    async fn agents_named(
        &self,
        name_key: &str,
        board_id: Option<BoardId>,
    ) -> StoreResult<Vec<Agent>> {
        let on_board = if board_id.is_some() {
            " AND a.board_id = $2"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE a.name_key = $1{on_board}
             ORDER BY a.created_at LIMIT 50"
        );
        let mut query = sqlx::query(&sql).bind(name_key);
        if let Some(board_id) = board_id {
            query = query.bind(board_id.as_uuid());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn all_agents(&self) -> StoreResult<Vec<StoredAgent>> {
        // Row by row: a fleet's rows are never all held besides the agents made of them.
        let query =
            format!("SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}");
        let mut rows = sqlx::query(&query).fetch(&self.pool);
        let mut agents = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(map_err)? {
            agents.push(stored_agent_from_row(&row)?);
        }
        Ok(agents)
    }

    async fn update_agent(&self, a: &Agent, event: &NewActivity) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        write_agent_settings(&mut tx, a).await?;
        insert_activity(&mut tx, event, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    async fn update_agent_with_job(
        &self,
        a: &Agent,
        event: &NewActivity,
        job: &crate::NewProvisionJob,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.begin().await?;
        if write_agent_settings(&mut tx, a).await? == 0 {
            return Ok(None);
        }
        let (id, queued) = provision_jobs::queue_job(&mut tx, job).await?;
        insert_activities(&mut tx, &[event.clone(), queued], &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(id))
    }

    async fn queue_agent_delete(&self, job: &crate::NewProvisionJob) -> StoreResult<Option<i64>> {
        let mut tx = self.begin().await?;
        // The row lock orders this against a concurrent delete or update of the agent.
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE")
                .bind(job.agent_id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let (id, queued) = provision_jobs::queue_job(&mut tx, job).await?;
        insert_activities(&mut tx, &[queued], &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(id))
    }

    async fn set_agent_token(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        if !write_agent_token(&mut tx, id, token_digest).await? {
            return Ok(false);
        }
        insert_activity(&mut tx, event, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn set_agent_token_with_job(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
        job: &crate::NewProvisionJob,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.begin().await?;
        if !write_agent_token(&mut tx, id, token_digest).await? {
            return Ok(None);
        }
        let (job_id, queued) = provision_jobs::queue_job(&mut tx, job).await?;
        insert_activities(&mut tx, &[event.clone(), queued], &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(job_id))
    }

    async fn delete_agent(&self, id: AgentId, event: &NewActivity) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        insert_activity(&mut tx, event, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn apply_liveness(
        &self,
        writes: &[LivenessWrite],
        seen: &[SeenWrite],
        events: &[LivenessEvent],
    ) -> StoreResult<LivenessOutcome> {
        let chains = transition_chains(events);
        let written: HashSet<AgentId> = writes.iter().map(|w| w.agent_id).collect();
        let mut rows: Vec<RowWrite<'_>> = writes
            .iter()
            .map(|w| RowWrite {
                agent_id: w.agent_id,
                change: RowChange::Full(w),
                to_status: None,
            })
            .chain(
                seen.iter()
                    .filter(|s| !written.contains(&s.agent_id))
                    .map(|s| RowWrite {
                        agent_id: s.agent_id,
                        change: RowChange::Seen(s),
                        to_status: None,
                    }),
            )
            .collect();
        let mut tx = self.begin().await?;
        let mut outcome = LivenessOutcome::default();
        let mut accepted = HashSet::new();
        // A batch that records transitions locks all its rows first, in agent-id order (the
        // verdicts need the stored statuses, and a row locked in that pass must not be
        // locked out of order by the write); a batch of plain writes takes its locks in the
        // write itself, in the same order.
        let locked = !chains.is_empty();
        if locked {
            let mut ids: Vec<Uuid> = rows.iter().map(|row| row.agent_id.as_uuid()).collect();
            ids.extend(chains.iter().map(|c| c.agent_id.as_uuid()));
            let stored = lock_rows_for_transitions(&mut tx, ids, &chains).await?;
            let mut to_status: HashMap<AgentId, AgentStatus> = HashMap::new();
            for chain in &chains {
                match stored.get(&chain.agent_id) {
                    Some(&status) if status == Some(chain.from) => {
                        accepted.insert(chain.agent_id);
                        to_status.insert(chain.agent_id, chain.to);
                    }
                    Some(&status) => outcome.refused.push((chain.agent_id, status)),
                    // Agents that no longer exist have no row to answer for them.
                    None => outcome.refused.push((chain.agent_id, None)),
                }
            }
            for row in &mut rows {
                row.to_status = to_status.remove(&row.agent_id);
            }
            rows.extend(to_status.into_iter().map(|(agent_id, to)| RowWrite {
                agent_id,
                change: RowChange::StatusOnly,
                to_status: Some(to),
            }));
        }
        if !rows.is_empty() {
            write_rows(&mut tx, &rows, locked).await?;
        }
        let to_record = accepted_events(events, &accepted);
        outcome.recorded = insert_activities(&mut tx, &to_record, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn stored_agents(&self, ids: &[AgentId]) -> StoreResult<Vec<StoredAgent>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
             WHERE a.id = ANY($1)"
        ))
        .bind(ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_agent_from_row).collect()
    }

    async fn checkins_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<StoredAgent>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
             WHERE l.checkin_deadline_at IS NOT NULL AND l.checkin_deadline_at <= $1
             ORDER BY l.checkin_deadline_at LIMIT $2"
        ))
        .bind(tz(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_agent_from_row).collect()
    }

    async fn agent_by_token(&self, digest: TokenDigest) -> StoreResult<Option<StoredAgent>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, a.token_digest, {CHECKIN_COLUMNS} FROM {AGENT_FROM}
             WHERE a.token_digest = $1"
        ))
        .bind(digest.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(stored_agent_from_row).transpose()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn recorded_here(&self, event_id: i64) -> bool {
        self.recorded_here.take(event_id)
    }

    async fn hold_leadership(&self) -> StoreResult<bool> {
        self.leadership.hold(&self.options).await
    }

    async fn compact_liveness_log(&self) -> StoreResult<LogCompaction> {
        // Seen heartbeats are written to the rows at once (see `write_rows`): no log.
        Ok(LogCompaction::default())
    }

    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentToken,
        digest: TokenDigest,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO enrollment_tokens ({ENROLLMENT_COLUMNS}, token_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(t.id.as_uuid())
        .bind(t.board_id.as_uuid())
        .bind(tz(t.expires_at))
        .bind(t.max_uses.map(i64::from))
        .bind(i64::from(t.uses))
        .bind(t.revoked_at.map(tz))
        .bind(tz(t.created_at))
        .bind(digest.as_bytes().to_vec())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn enrollment_token_by_digest(
        &self,
        digest: TokenDigest,
    ) -> StoreResult<Option<EnrollmentToken>> {
        let row = sqlx::query(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE token_digest = $1"
        ))
        .bind(digest.as_bytes().to_vec())
        .fetch_optional(&self.pool)
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
            filters: vec![("board_id", Some(board_id.as_uuid()))],
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
            "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, $1)
             WHERE id = $2 AND board_id = $3 RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(tz(now))
        .bind(id.as_uuid())
        .bind(board_id.as_uuid())
        .fetch_optional(&self.pool)
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
                ("agent_id", filter.agent_id.map(|a| a.as_uuid())),
                ("board_id", filter.board_id.map(|b| b.as_uuid())),
            ],
            order_by: "id DESC",
        };
        self.fetch_page(listing, page, activity_from_row).await
    }

    async fn activity_since(
        &self,
        after_id: i64,
        filter: ActivityFilter,
        limit: u32,
    ) -> StoreResult<Vec<ActivityEvent>> {
        let (conditions, params) = where_clause(vec![
            ("agent_id", filter.agent_id.map(|a| a.as_uuid())),
            ("board_id", filter.board_id.map(|b| b.as_uuid())),
        ]);
        let sql = format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activity_events
             WHERE id > ${after} AND {conditions} ORDER BY id LIMIT ${limit}",
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
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(activity_from_row).collect()
    }

    async fn latest_activity_id(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM activity_events")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    fn subscribe_activity(&self) -> broadcast::Receiver<ActivityEvent> {
        self.feed.subscribe()
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        vec![PoolStats {
            name: "postgres",
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: POOL_MAX_CONNECTIONS,
        }]
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
                .fetch_one(&self.pool)
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
}

impl PostgresStore {
    /// Inserts an agent (and its first provisioning job, when given) in one transaction.
    async fn insert_agent_and_job(
        &self,
        a: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
        job: Option<&crate::NewProvisionJob>,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.begin().await?;
        if let Some(spend) = spend {
            spend_enrollment_use(&mut tx, spend).await?;
        }
        sqlx::query(
            "INSERT INTO agents (id, board_id, gateway_id, name, name_key, is_board_lead,
               is_mc_agent, gateway_agent_id, workspace_path, openclaw_session_id,
               heartbeat_interval_seconds, heartbeat_missing_tolerance, identity_profile,
               identity_template, soul_template, last_provision_error, enrolled_via, created_at,
               updated_at, token_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15,
               $16, $17, $18, $19, $20)",
        )
        .bind(a.id.as_uuid())
        .bind(a.board_id.map(|b| b.as_uuid()))
        .bind(a.gateway_id.as_uuid())
        .bind(a.name.as_str())
        .bind(a.name.key())
        .bind(a.is_board_lead)
        .bind(a.is_mc_agent)
        .bind(&a.gateway_agent_id)
        .bind(&a.workspace_path)
        .bind(&a.openclaw_session_id)
        .bind(i64::from(a.heartbeat_config.interval_seconds))
        .bind(i64::from(a.heartbeat_config.missing_tolerance))
        .bind(profile_json(a))
        .bind(&a.identity_template)
        .bind(&a.soul_template)
        .bind(&a.last_provision_error)
        .bind(a.enrolled_via.map(|id| id.as_uuid()))
        .bind(tz(a.created_at))
        .bind(tz(a.updated_at))
        .bind(token_digest.map(|d| d.as_bytes().to_vec()))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO agent_liveness
               (agent_id, last_seen_at, reported_health, published_status, own_token_used,
                updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(a.id.as_uuid())
        .bind(a.last_seen_at.map(tz))
        .bind(a.reported_health.map(|h| h.as_str()))
        .bind(a.published_status.as_str())
        .bind(a.own_token_used)
        .bind(tz(a.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut events = vec![event.clone()];
        let job_id = match job {
            Some(job) => {
                let (id, queued) = provision_jobs::queue_job(&mut tx, job).await?;
                events.push(queued);
                Some(id)
            }
            None => None,
        };
        insert_activities(&mut tx, &events, &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(job_id)
    }
}
