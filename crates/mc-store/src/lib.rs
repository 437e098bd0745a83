//! Storage for Mission Control.
//!
//! Every query lives behind [`Store`]; rows never leak above this crate (each backend
//! converts to `mc-domain` types at the boundary). Each trait method is one unit of
//! work: it owns its transaction, so a method either happens completely or not at all.
//!
//! Errors: [`StoreError`] is this layer's one error type. Constraint violations are
//! mapped to [`Constraint`] by the backend, in one place, so the HTTP edge can answer
//! 409 by constraint rather than by matching driver messages.

mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use mc_domain::activity::{ActivityEvent, NewActivity};
use mc_domain::agent::{Agent, AgentStatus, ReportedHealth};
use mc_domain::board::Board;
use mc_domain::enrollment::{EnrollmentRefusal, EnrollmentToken};
use mc_domain::gateway::Gateway;
use mc_domain::ids::{AgentId, BoardId, EnrollmentTokenId, GatewayId, OrganizationId, WebhookId};
use mc_domain::liveness::{Checkin, JobInProgress};
use mc_domain::page::{Page, PageRequest};
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, TokenDigest};
use mc_domain::webhook::{Delivery, DeliveryState, Webhook, WebhookUrl};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A uniqueness or reference rule the database enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// Agent names are unique per board (case-insensitively).
    AgentNameOnBoard,
    /// Board slugs are unique per organisation.
    BoardSlug,
    /// A gateway still has boards.
    GatewayHasBoards,
    /// A token digest collided (practically impossible with 256-bit tokens).
    TokenDigest,
    /// A gateway has one main agent (the agent without a board).
    GatewayMainAgent,
}

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A rule the database enforces was violated.
    #[error("constraint violated: {0:?}")]
    Conflict(Constraint),
    /// An enrollment token could not be spent.
    #[error("enrollment refused: {}", .0.message())]
    EnrollmentRefused(EnrollmentRefusal),
    /// The database cannot be reached or answered with an error.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database gave up a transaction that collided with a concurrent one (a deadlock
    /// or serialization failure): nothing was written, and the same call may succeed when
    /// retried. Not an outage: the store orders its locks so this should not happen.
    #[error("transaction collided with a concurrent one: {0}")]
    Contention(String),
    /// The database rejected a query (a bug, not a client error).
    #[error("database error: {0}")]
    Internal(String),
    /// Stored data that the domain rejects (a bug or a hand-edited database).
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table read.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The database URL or file is unusable.
    #[error("{0}")]
    Config(String),
}

/// Result alias for this crate.
pub type StoreResult<T> = Result<T, StoreError>;

/// Filters for the agent list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentFilter {
    /// Only agents of this board.
    pub board_id: Option<BoardId>,
    /// Only agents on this gateway.
    pub gateway_id: Option<GatewayId>,
}

/// Filters for the activity list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    /// Only events about this agent.
    pub agent_id: Option<AgentId>,
    /// Only events of this board.
    pub board_id: Option<BoardId>,
}

/// An agent's liveness fields, written behind the heartbeat hot path in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessWrite {
    /// The agent.
    pub agent_id: AgentId,
    /// Its last heartbeat.
    pub last_seen_at: Option<Timestamp>,
    /// Its last reported health.
    pub reported_health: Option<ReportedHealth>,
    /// Whether it has used its own token.
    pub own_token_used: bool,
    /// Its `updated_at`.
    pub updated_at: Timestamp,
    /// The check-in awaited after a wake (or given up on); `None` once it checked in.
    pub checkin: Option<Checkin>,
}

/// A change of an agent's published liveness status, recorded only when the stored status
/// is still `from`: two replicas never record the same transition twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The agent.
    pub agent_id: AgentId,
    /// The published status the change starts from.
    pub from: AgentStatus,
    /// The new published status.
    pub to: AgentStatus,
}

/// An event of a liveness batch: a transition (conditional) or any other event.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessEvent {
    /// The event to record.
    pub activity: NewActivity,
    /// For a transition: the change it records, applied only when it still holds.
    pub transition: Option<Transition>,
}

/// What a liveness batch recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LivenessOutcome {
    /// The events recorded (with their ids), in order.
    pub recorded: Vec<ActivityEvent>,
    /// Agents whose transitions were not recorded because their stored published status
    /// was no longer the one they start from (another replica recorded a change first), with
    /// that stored status; `None` when the agent no longer exists.
    pub refused: Vec<(AgentId, Option<AgentStatus>)>,
}

/// The transitions of a batch folded per agent, in order of first appearance: the status
/// the first starts from and the status the last ends in. A batch can hold several
/// transitions of one agent (e.g. offline and back within one write-behind window); they
/// are recorded all or none, depending on where the first starts.
pub(crate) fn transition_chains(events: &[LivenessEvent]) -> Vec<Transition> {
    let mut chains: Vec<Transition> = Vec::new();
    let mut position: HashMap<AgentId, usize> = HashMap::new();
    for transition in events.iter().filter_map(|e| e.transition) {
        match position.get(&transition.agent_id) {
            Some(&at) => chains[at].to = transition.to,
            None => {
                position.insert(transition.agent_id, chains.len());
                chains.push(transition);
            }
        }
    }
    chains
}

/// The events of a batch to record once the chains of `accepted` agents were applied.
pub(crate) fn accepted_events<'a>(
    events: &'a [LivenessEvent],
    accepted: &HashSet<AgentId>,
) -> Vec<&'a NewActivity> {
    events
        .iter()
        .filter(|e| e.transition.is_none_or(|t| accepted.contains(&t.agent_id)))
        .map(|e| &e.activity)
        .collect()
}

/// A heartbeat that changed nothing but an agent's `last_seen_at` and `updated_at`, as far
/// as the process that received it knows: the common case, cheaper to write than a
/// [`LivenessWrite`].
///
/// An unshared store appends it to the liveness log (one row per batch) instead of updating
/// the agent's row, without the health (the row holds the one this process wrote); reads
/// that go through [`Store::all_agents`] see it at once, and the rows catch up when
/// [`Store::compact_liveness_log`] folds the log into them. A shared store writes it to the
/// row at once, where the newest heartbeat wins: another replica may have written a newer
/// or an older heartbeat, with another health, so a newer one brings its health and ends a
/// check-in wait stored before it (the heartbeat is the check-in), an older one changes
/// nothing but a later `updated_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenWrite {
    /// The agent.
    pub agent_id: AgentId,
    /// Its last heartbeat.
    pub last_seen_at: Timestamp,
    /// The health it reported (with its last heartbeat or an earlier one); `None` when read
    /// back from the liveness log, which does not keep it.
    pub reported_health: Option<ReportedHealth>,
    /// Its `updated_at`.
    pub updated_at: Timestamp,
}

/// What one [`Store::compact_liveness_log`] folded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCompaction {
    /// Log rows (batches) folded and deleted.
    pub batches: u64,
    /// Heartbeats those batches held.
    pub entries: u64,
    /// Agent rows updated (each agent once, with its latest heartbeat).
    pub agents: u64,
}

/// An agent together with its token digest, as loaded into the in-memory index.
#[derive(Debug, Clone)]
pub struct StoredAgent {
    /// The agent.
    pub agent: Agent,
    /// Its token digest, if a token was minted.
    pub token_digest: Option<TokenDigest>,
    /// The check-in awaited after a wake (or given up on).
    pub checkin: Option<Checkin>,
}

/// The spending of one enrollment-token use, done in the same transaction as a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollmentSpend {
    /// The token spent.
    pub token_id: EnrollmentTokenId,
    /// The time of spending (for the expiry check).
    pub now: Timestamp,
}

/// A webhook delivery claimed for an attempt, with everything the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery (its attempts so far).
    pub delivery: Delivery,
    /// Where to post it.
    pub url: WebhookUrl,
    /// The subscription's signing key.
    pub secret: Secret,
    /// The event to deliver.
    pub event: ActivityEvent,
}

/// The outcome of one delivery attempt, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery attempted.
    pub delivery_id: i64,
    /// When the attempt was made.
    pub attempted_at: Timestamp,
    /// Where the delivery stands now.
    pub state: DeliveryState,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<String>,
    /// When to try again (pending only).
    pub next_attempt_at: Option<Timestamp>,
}

/// What a provisioning job does on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionAction {
    /// Put a new agent on its gateway.
    Create,
    /// Push changed settings and files to its gateway.
    Update,
    /// Remove the agent from its gateway.
    Delete,
}

impl ProvisionAction {
    /// The stored and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    /// Reads a stored name.
    pub fn from_stored(text: &str) -> Option<Self> {
        [Self::Create, Self::Update, Self::Delete]
            .into_iter()
            .find(|a| a.as_str() == text)
    }

    /// How a job of this action shows in its agent's status and progress events.
    pub const fn kind(self) -> JobInProgress {
        match self {
            Self::Create => JobInProgress::Create,
            Self::Update => JobInProgress::Update,
            Self::Delete => JobInProgress::Delete,
        }
    }
}

/// Where a provisioning job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionJobState {
    /// Waiting for its (next) attempt.
    Pending,
    /// Completed.
    Done,
    /// Given up after a permanent error.
    Failed,
}

impl ProvisionJobState {
    /// The stored and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Reads a stored name.
    pub fn from_stored(text: &str) -> Option<Self> {
        [Self::Pending, Self::Done, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A provisioning job to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProvisionJob {
    /// The agent.
    pub agent_id: AgentId,
    /// Its gateway.
    pub gateway_id: GatewayId,
    /// What to do.
    pub action: ProvisionAction,
    /// For a delete: the agent's id on the gateway (the agent row is gone by then).
    pub gateway_agent_id: Option<String>,
    /// For a delete: its main session key.
    pub session_key: Option<String>,
    /// When it was requested (and first due).
    pub requested_at: Timestamp,
}

/// A queued provisioning job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionJob {
    /// Queue id; jobs of one agent run in id order.
    pub id: i64,
    /// The agent.
    pub agent_id: AgentId,
    /// Its gateway.
    pub gateway_id: GatewayId,
    /// What to do.
    pub action: ProvisionAction,
    /// For a delete: the agent's id on the gateway.
    pub gateway_agent_id: Option<String>,
    /// For a delete: its main session key.
    pub session_key: Option<String>,
    /// Where it stands.
    pub state: ProvisionJobState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it is (or was last) due.
    pub next_attempt_at: Timestamp,
    /// When it first reached its gateway (its retry bound counts from then); `None` before.
    pub first_attempt_at: Option<Timestamp>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// Its last change.
    pub updated_at: Timestamp,
}

/// Where a provisioned agent lives on its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPlacement {
    /// The agent's id on the gateway.
    pub gateway_agent_id: String,
    /// Its workspace directory on the gateway host.
    pub workspace_path: String,
    /// Its main session key.
    pub session_key: String,
}

/// The outcome of one provisioning attempt, to record with the agent's error in one
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionAttempt {
    /// The job attempted.
    pub job_id: i64,
    /// Its agent (whose `last_provision_error` becomes `error`).
    pub agent_id: AgentId,
    /// When the attempt ended.
    pub attempted_at: Timestamp,
    /// Where the job stands now.
    pub state: ProvisionJobState,
    /// Why the attempt failed; `None` clears the agent's error.
    pub error: Option<String>,
    /// When to try again (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// The placement to store on the agent, when the attempt established it.
    pub placement: Option<AgentPlacement>,
}

/// The use of one database connection pool, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// The pool's name, e.g. `writer`.
    pub name: &'static str,
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Everything Mission Control persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The use of each connection pool right now (no I/O).
    fn pool_stats(&self) -> Vec<PoolStats>;
    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// The default organisation, created (with `admin` as owner) on first call.
    async fn ensure_default_organization(&self, now: Timestamp) -> StoreResult<OrganizationId>;

    /// Inserts a gateway.
    async fn insert_gateway(&self, gateway: &Gateway) -> StoreResult<()>;
    /// A gateway by id.
    async fn gateway(&self, id: GatewayId) -> StoreResult<Option<Gateway>>;
    /// Gateways of an organisation, newest first.
    async fn list_gateways(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Gateway>>;
    /// Replaces a gateway's mutable fields.
    async fn update_gateway(&self, gateway: &Gateway) -> StoreResult<()>;
    /// Deletes a gateway and its main agents; `Conflict(GatewayHasBoards)` while boards
    /// use it. Returns the deleted agents' ids, or `None` when the gateway did not exist.
    async fn delete_gateway(
        &self,
        id: GatewayId,
        events: &[NewActivity],
    ) -> StoreResult<Option<Vec<AgentId>>>;

    /// Inserts a board.
    async fn insert_board(&self, board: &Board) -> StoreResult<()>;
    /// A board by id.
    async fn board(&self, id: BoardId) -> StoreResult<Option<Board>>;
    /// Boards of an organisation ordered by name, optionally of one gateway.
    async fn list_boards(
        &self,
        org: OrganizationId,
        gateway_id: Option<GatewayId>,
        page: PageRequest,
    ) -> StoreResult<Page<Board>>;
    /// Replaces a board's mutable fields.
    async fn update_board(&self, board: &Board) -> StoreResult<()>;
    /// Deletes a board with its agents and enrollment tokens, recording `events` and
    /// queueing `cleanup` (the delete jobs that remove its agents from their gateway; they
    /// need no agent row to run) in the same transaction, each with its
    /// `agent.provision.queued` event: a board is never deleted without its clean-up, nor
    /// the clean-up queued without the deletion. Returns the deleted agents' ids, or `None`
    /// (and writes nothing) when the board did not exist.
    async fn delete_board(
        &self,
        id: BoardId,
        events: &[NewActivity],
        cleanup: &[NewProvisionJob],
    ) -> StoreResult<Option<Vec<AgentId>>>;

    /// Inserts an agent with its token digest and creation event; when `spend` is given,
    /// spends one use of that enrollment token in the same transaction.
    async fn insert_agent(
        &self,
        agent: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
    ) -> StoreResult<()>;
    /// Like [`Store::insert_agent`], queueing its first provisioning job in the same
    /// transaction (an agent is never stored without the job that provisions it); returns
    /// the job's id.
    async fn insert_agent_with_job(
        &self,
        agent: &Agent,
        token_digest: Option<TokenDigest>,
        spend: Option<EnrollmentSpend>,
        event: &NewActivity,
        job: &NewProvisionJob,
    ) -> StoreResult<i64>;
    /// An agent by id.
    async fn agent(&self, id: AgentId) -> StoreResult<Option<Agent>>;
    /// One page of the agents matching `filter`, newest first (`created_at`, then `id`,
    /// descending), read through an index. No total: counting every matching agent on
    /// each request took hundreds of milliseconds at 100,000 agents, so the caller counts
    /// them in memory.
    async fn list_agents(&self, filter: AgentFilter, page: PageRequest) -> StoreResult<Vec<Agent>>;
    /// The ids of the agents [`Store::list_agents`] lists, in its order, read from a
    /// listing index alone: for the agent listing, which takes the agents themselves from
    /// memory.
    async fn list_agent_ids(
        &self,
        filter: AgentFilter,
        page: PageRequest,
    ) -> StoreResult<Vec<AgentId>>;
    /// Agents whose case-insensitive name key is `name_key`, on `board_id` when given.
    async fn agents_named(
        &self,
        name_key: &str,
        board_id: Option<BoardId>,
    ) -> StoreResult<Vec<Agent>>;
    /// Every agent with its token digest (to build the in-memory index at start).
    async fn all_agents(&self) -> StoreResult<Vec<StoredAgent>>;
    /// Replaces an agent's settings (not its liveness fields) and records `event`.
    async fn update_agent(&self, agent: &Agent, event: &NewActivity) -> StoreResult<()>;
    /// Like [`Store::update_agent`], queueing `job` (the update job that puts the new
    /// settings on the gateway) in the same transaction; returns the job's id, or `None`
    /// (and writes nothing) when the agent does not exist.
    async fn update_agent_with_job(
        &self,
        agent: &Agent,
        event: &NewActivity,
        job: &NewProvisionJob,
    ) -> StoreResult<Option<i64>>;
    /// Queues the delete job `job` in one transaction with a check that its agent still
    /// exists (ordered against any concurrent write of that agent); returns the job's id,
    /// or `None` (and writes nothing) when the agent does not exist. The job removes the
    /// agent from its gateway, then from the store.
    async fn queue_agent_delete(&self, job: &NewProvisionJob) -> StoreResult<Option<i64>>;
    /// Replaces an agent's token digest (the old token stops working) and records `event`.
    async fn set_agent_token(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
    ) -> StoreResult<bool>;
    /// Like [`Store::set_agent_token`], queueing `job` (the update job that writes the new
    /// token into the agent's workspace) in the same transaction; returns the job's id, or
    /// `None` (and writes nothing) when the agent does not exist. A token the database
    /// refuses leaves neither the token nor the job.
    async fn set_agent_token_with_job(
        &self,
        id: AgentId,
        token_digest: TokenDigest,
        event: &NewActivity,
        job: &NewProvisionJob,
    ) -> StoreResult<Option<i64>>;
    /// Deletes an agent and records `event`; false when it did not exist.
    async fn delete_agent(&self, id: AgentId, event: &NewActivity) -> StoreResult<bool>;

    /// Writes a batch of liveness changes and events in one transaction: `writes` update
    /// the agents' rows, `seen` heartbeats are appended to the liveness log as one row, or
    /// written to the rows at once by a shared store (whose rows other replicas read; see
    /// [`SeenWrite`]). `last_seen_at` never moves backwards and the reported health goes
    /// with the newest heartbeat (a replica's older write loses to a newer one), and each
    /// agent's transitions are recorded only when its stored published status is the one
    /// the first starts from (see [`Transition`]). Two replicas' batches never deadlock.
    async fn apply_liveness(
        &self,
        writes: &[LivenessWrite],
        seen: &[SeenWrite],
        events: &[LivenessEvent],
    ) -> StoreResult<LivenessOutcome>;
    /// Folds the liveness log into the agents' rows (each agent's latest heartbeat wins;
    /// a row never moves back in time) and deletes the folded log rows. Idempotent and
    /// safe to interrupt: the log rows go only after their heartbeats are in the rows.
    async fn compact_liveness_log(&self) -> StoreResult<LogCompaction>;
    /// These agents (those that exist) with their token digests and check-ins, as stored
    /// now: the re-read before a deadline is acted on, and the agent another replica changed.
    async fn stored_agents(&self, ids: &[AgentId]) -> StoreResult<Vec<StoredAgent>>;
    /// Up to `limit` agents whose stored check-in wait ends at or before `now`, earliest
    /// first (the leading replica's read of waits another replica may have started).
    async fn checkins_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<StoredAgent>>;
    /// The agent holding a token digest, as stored now (a token minted by another replica).
    async fn agent_by_token(&self, digest: TokenDigest) -> StoreResult<Option<StoredAgent>>;
    /// Whether other processes may share this database (then the in-memory index follows
    /// the event feed, and singleton work needs [`Store::hold_leadership`]).
    fn is_shared(&self) -> bool;
    /// Whether this process recorded the event with this id (a feed follower asks once
    /// per event it receives, to leave its own events alone; the answer is not kept).
    fn recorded_here(&self, event_id: i64) -> bool;
    /// Takes, or confirms, the lock on singleton work (offline detection): true while this
    /// process holds it. A process that dies releases it; a single-process database always
    /// holds it.
    async fn hold_leadership(&self) -> StoreResult<bool>;

    /// Inserts an enrollment token.
    async fn insert_enrollment_token(
        &self,
        token: &EnrollmentToken,
        digest: TokenDigest,
    ) -> StoreResult<()>;
    /// An enrollment token by its digest.
    async fn enrollment_token_by_digest(
        &self,
        digest: TokenDigest,
    ) -> StoreResult<Option<EnrollmentToken>>;
    /// A board's enrollment tokens, newest first.
    async fn list_enrollment_tokens(
        &self,
        board_id: BoardId,
        page: PageRequest,
    ) -> StoreResult<Page<EnrollmentToken>>;
    /// Revokes a board's enrollment token; `None` when there is no such token on the board.
    async fn revoke_enrollment_token(
        &self,
        board_id: BoardId,
        id: EnrollmentTokenId,
        now: Timestamp,
    ) -> StoreResult<Option<EnrollmentToken>>;

    /// Activity events matching `filter`, newest first.
    async fn list_activity(
        &self,
        filter: ActivityFilter,
        page: PageRequest,
    ) -> StoreResult<Page<ActivityEvent>>;
    /// Up to `limit` events matching `filter` with an id above `after_id`, oldest first
    /// (the resume of an event stream).
    async fn activity_since(
        &self,
        after_id: i64,
        filter: ActivityFilter,
        limit: u32,
    ) -> StoreResult<Vec<ActivityEvent>>;
    /// The id of the newest event committed, 0 when there is none: where a reader that
    /// has just seen everything stored (e.g. read every agent) picks up the log.
    async fn latest_activity_id(&self) -> StoreResult<i64>;

    /// Inserts a webhook subscription.
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    /// A webhook subscription by id.
    async fn webhook(&self, id: WebhookId) -> StoreResult<Option<Webhook>>;
    /// An organisation's webhook subscriptions, newest first.
    async fn list_webhooks(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Webhook>>;
    /// Replaces a subscription's mutable fields.
    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    /// Deletes a subscription with its delivery log; false when it did not exist.
    async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool>;
    /// A subscription's deliveries, newest first.
    async fn list_deliveries(
        &self,
        webhook_id: WebhookId,
        page: PageRequest,
    ) -> StoreResult<Page<Delivery>>;
    /// Claims up to `limit` pending deliveries due at `now` until `lease_until` (a claim
    /// that is not recorded by then is due again), oldest due first.
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records an attempt (one more attempt counted) and releases the claim.
    async fn record_delivery_attempt(&self, attempt: &DeliveryAttempt) -> StoreResult<()>;
    /// When the earliest pending delivery is due, claimed ones included.
    async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>>;
    /// How many deliveries are pending.
    async fn pending_deliveries(&self) -> StoreResult<u64>;
    /// How many provisioning jobs are pending.
    async fn pending_provision_jobs(&self) -> StoreResult<u64>;

    /// Queues a provisioning job, recording `agent.provision.queued` in the same
    /// transaction (as every method that queues a job does); returns its id.
    async fn enqueue_provision_job(&self, job: &NewProvisionJob) -> StoreResult<i64>;
    /// Claims up to `limit` pending jobs due at `now` until `lease_until`, skipping jobs
    /// behind an earlier pending job of the same agent; jobs under way (with a first
    /// attempt) are chosen before jobs not yet started. Returned in queue order.
    async fn claim_due_provision_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<ProvisionJob>>;
    /// Records an attempt (one more attempt counted), releases the claim and stores the
    /// agent's `last_provision_error` (and placement, when given) in the same transaction,
    /// with the attempt's progress event (`agent.provision.retrying`, `.done` or
    /// `.failed`, carrying the error, next attempt and placement).
    async fn record_provision_attempt(&self, attempt: &ProvisionAttempt) -> StoreResult<()>;
    /// When the earliest pending provisioning job is due, claimed ones included.
    async fn next_provision_job_due(&self) -> StoreResult<Option<Timestamp>>;
    /// An agent's provisioning jobs, oldest first.
    async fn provision_jobs(&self, agent_id: AgentId) -> StoreResult<Vec<ProvisionJob>>;
    /// Every pending provisioning job (claimed ones included), in queue order: what each
    /// agent has in progress, to rebuild the in-memory index at start.
    async fn unfinished_provision_jobs(&self) -> StoreResult<Vec<ProvisionJob>>;
    /// Sets an agent's `last_provision_error` (`None` clears it); false when the agent
    /// does not exist.
    async fn set_provision_error(&self, id: AgentId, error: Option<&str>) -> StoreResult<bool>;
    /// Records that job `id` reached its gateway for the first time at `at`; an earlier
    /// record is kept.
    async fn mark_provision_job_started(&self, id: i64, at: Timestamp) -> StoreResult<()>;

    /// The feed of events as they are committed, in id order. A subscriber that falls
    /// more than the feed's buffer behind is told it lagged (and resumes from the log).
    fn subscribe_activity(&self) -> tokio::sync::broadcast::Receiver<ActivityEvent>;
}

/// The progress events of provisioning jobs, recorded by both backends in the transaction
/// that queues a job or records its attempt, so that the log (and every replica following
/// it) never disagrees with the queue.
mod job_events {
    use mc_domain::activity::{JobPlacement, JobProgress, JobStep, JobSubject, NewActivity};
    use mc_domain::ids::BoardId;

    use crate::{NewProvisionJob, ProvisionAction, ProvisionAttempt, ProvisionJobState};

    /// The agent's name and board as stored, when it still exists.
    pub(crate) type StoredSubject = Option<(String, Option<BoardId>)>;

    fn subject(agent_id: mc_domain::ids::AgentId, stored: &StoredSubject) -> JobSubject<'_> {
        JobSubject {
            agent_id,
            board_id: stored.as_ref().and_then(|(_, board)| *board),
            name: stored.as_ref().map(|(name, _)| name.as_str()),
        }
    }

    /// `agent.provision.queued` for the job `id` just stored.
    pub(crate) fn queued(job: &NewProvisionJob, id: i64, stored: &StoredSubject) -> NewActivity {
        JobProgress {
            job: id,
            action: job.action.kind(),
            attempt: 0,
            step: JobStep::Queued,
        }
        .event(subject(job.agent_id, stored), job.requested_at)
    }

    /// The event of an attempt of a job of `action`, which has now made `attempts`.
    pub(crate) fn attempted(
        attempt: &ProvisionAttempt,
        action: ProvisionAction,
        attempts: u32,
        stored: &StoredSubject,
    ) -> NewActivity {
        let error = attempt.error.as_deref().unwrap_or("unknown error");
        let step = match attempt.state {
            ProvisionJobState::Pending => JobStep::Retrying {
                error,
                next_attempt_at: attempt.next_attempt_at.unwrap_or(attempt.attempted_at),
            },
            ProvisionJobState::Done => JobStep::Done {
                warning: attempt.error.as_deref(),
                placement: attempt.placement.as_ref().map(|p| JobPlacement {
                    gateway_agent_id: &p.gateway_agent_id,
                    workspace_path: &p.workspace_path,
                    session_key: &p.session_key,
                }),
            },
            ProvisionJobState::Failed => JobStep::Failed { error },
        };
        JobProgress {
            job: attempt.job_id,
            action: action.kind(),
            attempt: attempts,
            step,
        }
        .event(subject(attempt.agent_id, stored), attempt.attempted_at)
    }
}

/// How a [`LivenessWrite`]'s check-in maps onto the stored columns, for both backends.
mod liveness_columns {
    use mc_domain::liveness::Checkin;
    use mc_domain::time::Timestamp;

    use crate::LivenessWrite;

    /// The stored `checkin_deadline_at`.
    pub(crate) fn checkin_deadline(write: &LivenessWrite) -> Option<Timestamp> {
        match write.checkin {
            Some(Checkin::Awaiting { deadline, .. }) => Some(deadline),
            _ => None,
        }
    }

    /// The stored `checkin_wakes`.
    pub(crate) fn checkin_wakes(write: &LivenessWrite) -> u32 {
        match write.checkin {
            Some(Checkin::Awaiting { wakes, .. }) => wakes,
            _ => 0,
        }
    }
}

/// The liveness log's row format and the fold of its rows (SQLite's: PostgreSQL writes
/// plain heartbeats to the rows, which other replicas read).
///
/// A row's `entries` blob is a sequence of fixed-size records, one per heartbeat: the
/// agent's UUID (16 bytes), then `last_seen_at` and `updated_at` as milliseconds since
/// the epoch (little-endian `i64` each). Fixed-size binary records cost one copy to write
/// and read, and a batch of any size is one row.
pub(crate) mod liveness_log {
    use std::collections::HashMap;

    use mc_domain::ids::AgentId;
    use mc_domain::time::Timestamp;
    use uuid::Uuid;

    use crate::{LogCompaction, SeenWrite, StoreError, StoreResult};

    /// Bytes per record.
    const RECORD: usize = 32;

    /// Log rows read per query when the log is folded or replayed (a row holds one
    /// write-behind batch: a few thousand records at most rates).
    pub(crate) const ROWS_PER_READ: i64 = 16;

    /// Agent rows updated per transaction (one statement, three parameters each) when the
    /// log is folded: a chunk holds the single writer for milliseconds, so the write-behind
    /// batches are not held up behind a fold of the whole fleet.
    pub(crate) const AGENTS_PER_TRANSACTION: usize = 2000;

    /// The blob for `seen`.
    pub(crate) fn encode(seen: &[SeenWrite]) -> Vec<u8> {
        let mut blob = Vec::with_capacity(seen.len() * RECORD);
        for write in seen {
            blob.extend_from_slice(write.agent_id.as_uuid().as_bytes());
            blob.extend_from_slice(&write.last_seen_at.as_millis().to_le_bytes());
            blob.extend_from_slice(&write.updated_at.as_millis().to_le_bytes());
        }
        blob
    }

    /// The records of one blob, in order.
    pub(crate) fn decode(blob: &[u8]) -> StoreResult<impl Iterator<Item = SeenWrite> + '_> {
        if !blob.len().is_multiple_of(RECORD) {
            return Err(StoreError::Internal(format!(
                "liveness log row of {} bytes is not a whole number of {RECORD}-byte records",
                blob.len()
            )));
        }
        Ok(blob.chunks_exact(RECORD).map(|record| {
            let (id, times) = record.split_at(16);
            let (seen, updated) = times.split_at(8);
            let millis = |bytes: &[u8]| {
                let mut word = [0; 8];
                word.copy_from_slice(bytes);
                Timestamp::from_millis(i64::from_le_bytes(word))
            };
            let mut uuid = [0; 16];
            uuid.copy_from_slice(id);
            SeenWrite {
                agent_id: AgentId::from_uuid(Uuid::from_bytes(uuid)),
                last_seen_at: millis(seen),
                reported_health: None,
                updated_at: millis(updated),
            }
        }))
    }

    /// The latest heartbeat of each agent across log rows, and how many records they
    /// held.
    #[derive(Debug, Default)]
    pub(crate) struct Fold {
        /// Latest `(last_seen_at, updated_at)` by agent.
        pub(crate) latest: HashMap<AgentId, (Timestamp, Timestamp)>,
        /// Records folded.
        pub(crate) entries: u64,
        /// The log rows folded, by `seq`.
        pub(crate) seqs: Vec<i64>,
    }

    impl Fold {
        /// Folds in log row `seq`.
        pub(crate) fn add(&mut self, seq: i64, blob: &[u8]) -> StoreResult<()> {
            self.seqs.push(seq);
            for write in decode(blob)? {
                self.entries += 1;
                let slot = self
                    .latest
                    .entry(write.agent_id)
                    .or_insert((write.last_seen_at, write.updated_at));
                slot.0 = slot.0.max(write.last_seen_at);
                slot.1 = slot.1.max(write.updated_at);
            }
            Ok(())
        }

        /// What folding these rows did, once `agents` rows were updated.
        pub(crate) fn outcome(&self, agents: u64) -> LogCompaction {
            LogCompaction {
                batches: u64::try_from(self.seqs.len()).unwrap_or(u64::MAX),
                entries: self.entries,
                agents,
            }
        }

        /// The folded agents in id order (rows are updated in one order everywhere, so
        /// two folds cannot deadlock).
        pub(crate) fn sorted(&self) -> Vec<(AgentId, Timestamp, Timestamp)> {
            let mut rows: Vec<_> = self
                .latest
                .iter()
                .map(|(id, (seen, updated))| (*id, *seen, *updated))
                .collect();
            rows.sort_unstable_by_key(|row| row.0);
            rows
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn write(seen: i64, updated: i64) -> SeenWrite {
            SeenWrite {
                agent_id: AgentId::new(),
                last_seen_at: Timestamp::from_millis(seen),
                reported_health: None,
                updated_at: Timestamp::from_millis(updated),
            }
        }

        #[test]
        fn records_read_back_as_written() {
            let writes = [write(1, 2), write(-5, i64::MAX), write(0, 0)];
            let blob = encode(&writes);
            assert_eq!(blob.len(), 3 * RECORD);
            assert_eq!(decode(&blob).unwrap().collect::<Vec<_>>(), writes);
        }

        #[test]
        fn a_truncated_row_is_an_error() {
            let blob = encode(&[write(1, 2)]);
            assert!(decode(&blob[..RECORD - 1]).is_err());
        }

        #[test]
        fn the_fold_keeps_each_agents_latest_times() {
            let a = write(10, 10);
            let later = SeenWrite {
                last_seen_at: Timestamp::from_millis(20),
                ..a
            };
            let mut fold = Fold::default();
            fold.add(1, &encode(&[a, write(5, 5)])).unwrap();
            fold.add(2, &encode(&[later, a])).unwrap();
            assert_eq!(fold.entries, 4);
            assert_eq!(fold.seqs, [1, 2]);
            assert_eq!(fold.latest.len(), 2);
            assert_eq!(fold.latest[&a.agent_id].0, Timestamp::from_millis(20));
        }
    }
}

/// The database a URL names, by its scheme.
enum Backend {
    Sqlite,
    Postgres,
}

/// What `open` and `migrate` accept, for error messages.
const ACCEPTED_URLS: &str = "sqlite:PATH or postgres://USER:PASSWORD@HOST[:PORT]/DATABASE";

fn backend(database_url: &str) -> StoreResult<Backend> {
    let scheme = database_url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Backend::Sqlite),
        "postgres" | "postgresql" => Ok(Backend::Postgres),
        "" => Err(StoreError::Config(format!(
            "the database URL has no scheme: expected {ACCEPTED_URLS}"
        ))),
        other => Err(StoreError::Config(format!(
            "unsupported database URL scheme {other:?}: expected {ACCEPTED_URLS}"
        ))),
    }
}

/// Opens (and migrates) the store a database URL names: `sqlite:` (the file is created
/// only when `create_if_missing`) or `postgres://` / `postgresql://` (the database must
/// exist). Any other scheme is an error naming the accepted ones.
pub async fn open(database_url: &str, create_if_missing: bool) -> StoreResult<Arc<dyn Store>> {
    Ok(match backend(database_url)? {
        Backend::Sqlite => Arc::new(SqliteStore::open(database_url, create_if_missing).await?),
        Backend::Postgres => Arc::new(PostgresStore::open(database_url).await?),
    })
}

/// Creates or upgrades the schema of the database a URL names, then closes it.
pub async fn migrate(database_url: &str) -> StoreResult<()> {
    match backend(database_url)? {
        Backend::Sqlite => SqliteStore::migrate(database_url).await,
        Backend::Postgres => PostgresStore::migrate(database_url).await,
    }
}
