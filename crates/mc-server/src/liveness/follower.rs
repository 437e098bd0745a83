//! Following the other replicas (a store shared with other processes): every event they
//! commit comes through the store's feed, and this replica applies it to its registry.
//!
//! The feed is a bounded channel, so the follower must keep up with whatever rate the
//! other replicas write at (an enrollment burst is thousands of events a second):
//!
//! - Events are applied in batches: what is already waiting on the channel (up to
//!   [`FOLLOW_BATCH`]) is taken at once, the agents whose rows must be read again are
//!   read with one query, and every event is then applied in id order. Transitions and
//!   queued jobs are applied from the event alone, in memory.
//! - A deletion in a batch wins over every re-read of the same agent in it (the agent is
//!   not read at all), so a read can never bring a deleted agent back.
//! - When the follower falls behind the channel anyway, the events it missed are read
//!   from the activity log (the durable source; the feed only says what came after an
//!   id) and applied the same way. Only a gap of more than [`CATCH_UP_LIMIT`] events, or
//!   a gap whose start is unknown, reloads every agent.
//! - A read that fails (the database is away) is tried again until it succeeds; the
//!   follower meanwhile falls behind and catches up from the log afterwards.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use mc_domain::activity::{ActivityEvent, EventType};
use mc_domain::agent::AgentStatus;
use mc_domain::ids::AgentId;
use mc_domain::liveness::JobInProgress;
use mc_domain::time::Timestamp;
use mc_store::{ActivityFilter, StoreResult, StoredAgent};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;

use super::{Engine, Registry};

/// The most events applied as one batch (one read of the agents they name).
const FOLLOW_BATCH: usize = 1024;

/// Events read from the activity log per query when catching up.
const LOG_PAGE: u32 = 1000;

/// The largest gap caught up from the log; past it every agent is read again instead
/// (about as costly as reading that many events, and bounded whatever the gap).
const CATCH_UP_LIMIT: u64 = 100_000;

/// The pause before a failed read is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What the follower shares with the rest of the engine: its read counters and where it
/// starts.
#[derive(Debug)]
pub(super) struct FollowerShared {
    agent_reads: AtomicU64,
    log_reads: AtomicU64,
    reloads: AtomicU64,
    /// The newest event already reflected in the registry when it was loaded (-1: not
    /// known).
    start_after: AtomicI64,
}

impl Default for FollowerShared {
    fn default() -> Self {
        Self {
            agent_reads: AtomicU64::new(0),
            log_reads: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            start_after: AtomicI64::new(-1),
        }
    }
}

/// The database reads the follower has made since start (see [`Engine::feed_reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedReads {
    /// Queries re-reading the agents a batch of events changed (one per batch at most).
    pub agent_reads: u64,
    /// Pages of missed events read from the activity log.
    pub log_reads: u64,
    /// Reloads of every agent (a gap too large, or of unknown start).
    pub reloads: u64,
}

impl Engine {
    /// The database reads the feed's follower has made since start.
    pub fn feed_reads(&self) -> FeedReads {
        let shared = &self.follower;
        FeedReads {
            agent_reads: shared.agent_reads.load(Ordering::Relaxed),
            log_reads: shared.log_reads.load(Ordering::Relaxed),
            reloads: shared.reloads.load(Ordering::Relaxed),
        }
    }

    /// Tells the follower that the registry was loaded after event `id` had committed
    /// (read before the agents were): it starts by reading what came after `id` from the
    /// log, so nothing committed between the load and its subscription is missed.
    pub fn follow_after(&self, id: i64) {
        self.follower.start_after.store(id, Ordering::Relaxed);
    }
}

/// One event's effect on the registry, in the order of the events.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// The agent was deleted.
    Remove(AgentId),
    /// The agent was created or changed: its stored row is taken.
    Reread(AgentId),
    /// A job of the agent ended: its stored row (placement, error, wait) comes with it.
    JobFinished(AgentId, i64),
    /// A job was queued for the agent.
    JobQueued(AgentId, i64, JobInProgress),
    /// The agent's published status changed (`reason`: why, when the event says).
    Transition {
        agent: AgentId,
        event: i64,
        to: AgentStatus,
        at: Timestamp,
        reason: Option<String>,
    },
}

/// A batch of events turned into steps, and the agents to read for them.
#[derive(Debug, Default)]
struct Plan {
    steps: Vec<Step>,
    removed: HashSet<AgentId>,
}

impl Plan {
    /// The agents whose rows the steps need: each once, none deleted in the batch.
    fn reads(&self) -> Vec<AgentId> {
        let mut seen = HashSet::new();
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Reread(id) | Step::JobFinished(id, _) => Some(*id),
                _ => None,
            })
            .filter(|id| !self.removed.contains(id) && seen.insert(*id))
            .collect()
    }
}

/// Turns events into steps: `own` says whether this process recorded an event (then it is
/// in memory already, and an own transition applied again could even move the status
/// back past a newer one still being written). Events without an agent or of other kinds
/// change nothing.
fn plan(events: &[ActivityEvent], mut own: impl FnMut(i64) -> bool) -> Plan {
    let mut plan = Plan::default();
    for event in events {
        if own(event.id) {
            continue;
        }
        let Some(id) = event.agent_id else {
            continue;
        };
        let step = match EventType::from_wire(&event.event_type) {
            Some(EventType::AgentDeleted) => {
                plan.removed.insert(id);
                Step::Remove(id)
            }
            Some(
                EventType::AgentCreated
                | EventType::AgentUpdated
                | EventType::AgentTokenRotated
                | EventType::ProvisionRetrying,
            ) => Step::Reread(id),
            Some(EventType::AgentStatusChanged(to)) => Step::Transition {
                agent: id,
                event: event.id,
                to,
                at: event.created_at,
                reason: event
                    .data
                    .as_ref()
                    .and_then(|d| d.get("reason"))
                    .and_then(|r| r.as_str())
                    .map(str::to_owned),
            },
            // Jobs queued or run elsewhere show here too; their outcome (placement,
            // `last_provision_error`, the check-in wait) is read from the agent's row,
            // which the same transaction (or, for the wait, an earlier one) wrote.
            Some(EventType::ProvisionQueued) => match event.provision_job() {
                Some((job, kind)) => Step::JobQueued(id, job, kind),
                None => continue,
            },
            Some(EventType::ProvisionDone | EventType::ProvisionFailed) => {
                match event.provision_job() {
                    Some((job, _)) => Step::JobFinished(id, job),
                    None => continue,
                }
            }
            _ => continue,
        };
        plan.steps.push(step);
    }
    plan
}

/// Applies the steps in order with the rows read for them. An agent deleted anywhere in
/// the batch takes no row: a row read before its deletion committed must not bring it
/// back.
fn apply(registry: &Registry, plan: Plan, mut rows: HashMap<AgentId, StoredAgent>) {
    let Plan { steps, removed } = plan;
    rows.retain(|id, _| !removed.contains(id));
    for step in steps {
        match step {
            Step::Remove(id) => registry.remove(id),
            Step::Reread(id) => {
                if let Some(row) = rows.get(&id) {
                    registry.upsert(row.clone());
                }
            }
            Step::JobFinished(id, job) => {
                if let Some(row) = rows.get(&id) {
                    registry.follow_job_finished(row.clone(), job);
                }
            }
            Step::JobQueued(id, job, kind) => registry.follow_job_queued(id, job, kind),
            Step::Transition {
                agent,
                event,
                to,
                at,
                reason,
            } => {
                registry.follow_transition(agent, event, (to, at), Timestamp::now());
                if let Some(reason) = reason {
                    registry.follow_provision_error(agent, &reason);
                }
            }
        }
    }
}

/// Runs `read` until it succeeds, pausing between attempts; `None` when the follower is
/// told to stop meanwhile. A failing stretch is logged once.
async fn retrying<T, F, Fut>(
    stopped: &mut watch::Receiver<bool>,
    what: &'static str,
    mut read: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut failed = false;
    loop {
        match read().await {
            Ok(value) => {
                if failed {
                    tracing::info!(read = what, "feed: the database answers again");
                }
                return Some(value);
            }
            Err(error) => {
                if !failed {
                    tracing::warn!(read = what, %error, "feed: a read failed; retrying");
                    failed = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            _ = stopped.changed() => return None,
        }
        if *stopped.borrow() {
            return None;
        }
    }
}

/// The feed's follower: applies other replicas' events to the registry, in id order.
pub(super) struct Follower {
    engine: Arc<Engine>,
    feed: Receiver<ActivityEvent>,
    stopped: watch::Receiver<bool>,
    /// The newest event applied (or found to need nothing); `None` until known.
    last_id: Option<i64>,
    /// The largest gap caught up from the log (see [`CATCH_UP_LIMIT`]).
    catch_up_limit: u64,
}

impl Follower {
    /// A follower reading `feed` (subscribed before the start point was read, so that
    /// nothing falls between the two).
    pub(super) fn new(
        engine: Arc<Engine>,
        feed: Receiver<ActivityEvent>,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        let start = engine.follower.start_after.load(Ordering::Relaxed);
        Self {
            engine,
            feed,
            stopped,
            last_id: (start >= 0).then_some(start),
            catch_up_limit: CATCH_UP_LIMIT,
        }
    }

    /// Follows until the engine stops or the feed closes.
    pub(super) async fn run(mut self) {
        if self.last_id.is_some() && self.catch_up(0).await.is_none() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = self.feed.recv() => received,
                _ = self.stopped.changed() => return,
            };
            if self.step(received).await.is_none() {
                return;
            }
        }
    }

    /// Handles one receipt from the feed and every event already waiting behind it (up
    /// to [`FOLLOW_BATCH`]); `None` when the follower is done.
    async fn step(&mut self, received: Result<ActivityEvent, RecvError>) -> Option<()> {
        let mut batch = Vec::new();
        let mut missed = None;
        match received {
            Ok(event) => batch.push(event),
            Err(RecvError::Lagged(count)) => missed = Some(count),
            Err(RecvError::Closed) => return None,
        }
        while missed.is_none() && batch.len() < FOLLOW_BATCH {
            match self.feed.try_recv() {
                Ok(event) => batch.push(event),
                Err(TryRecvError::Lagged(count)) => missed = Some(count),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        // The events taken precede the gap: applied first, the log picks up after them.
        self.apply_batch(&batch).await?;
        if let Some(count) = missed {
            let behind = count + self.feed.len() as u64;
            tracing::info!(missed = count, behind, "feed: fell behind; reading the log");
            self.catch_up(behind).await?;
        }
        Some(())
    }

    /// Applies events newer than the last one applied (others came through the log
    /// already, or are in a reload) as one batch.
    async fn apply_batch(&mut self, events: &[ActivityEvent]) -> Option<()> {
        let store = Arc::clone(&self.engine.store);
        let last = self.last_id;
        let fresh: Vec<ActivityEvent> = events
            .iter()
            .filter(|event| {
                let old = last.is_some_and(|last| event.id <= last);
                if old {
                    // Forgotten, so the store's note of an own event does not linger.
                    store.recorded_here(event.id);
                }
                !old
            })
            .cloned()
            .collect();
        let Some(newest) = fresh.last().map(|event| event.id) else {
            return Some(());
        };
        let plan = plan(&fresh, |id| store.recorded_here(id));
        let ids = plan.reads();
        let rows = if ids.is_empty() {
            Vec::new()
        } else {
            let shared = &self.engine.follower;
            retrying(&mut self.stopped, "changed agents", || {
                shared.agent_reads.fetch_add(1, Ordering::Relaxed);
                store.stored_agents(&ids)
            })
            .await?
        };
        let rows = rows.into_iter().map(|row| (row.agent.id, row)).collect();
        apply(&self.engine.registry, plan, rows);
        self.last_id = Some(newest);
        Some(())
    }

    /// Catches up after falling `behind` events back: reads the events after the last one
    /// applied from the log, page by page, until it has them all; a gap too large (or
    /// whose start is unknown) reloads every agent instead.
    async fn catch_up(&mut self, behind: u64) -> Option<()> {
        let Some(mut after) = self.last_id else {
            return self.reload("the feed's start point is unknown").await;
        };
        if behind > self.catch_up_limit {
            return self.reload("too far behind to read the log").await;
        }
        let store = Arc::clone(&self.engine.store);
        let mut read = 0u64;
        loop {
            let shared = &self.engine.follower;
            let page = retrying(&mut self.stopped, "missed events", || {
                shared.log_reads.fetch_add(1, Ordering::Relaxed);
                store.activity_since(after, ActivityFilter::default(), LOG_PAGE)
            })
            .await?;
            let complete = page.len() < LOG_PAGE as usize;
            read += page.len() as u64;
            self.apply_batch(&page).await?;
            if complete {
                return Some(());
            }
            if read > self.catch_up_limit {
                return self.reload("the log grows faster than it is read").await;
            }
            after = page.last().map_or(after, |event| event.id);
        }
    }

    /// Reads every agent and every unfinished job again, forgets agents no longer stored,
    /// and goes on from the newest event committed before the read.
    async fn reload(&mut self, why: &'static str) -> Option<()> {
        tracing::warn!(reason = why, "feed: reloading every agent");
        let engine = Arc::clone(&self.engine);
        engine.follower.reloads.fetch_add(1, Ordering::Relaxed);
        let store = &engine.store;
        let registry = &engine.registry;
        // Known before the read: an agent among them that the read misses was deleted
        // (one this replica adds meanwhile was committed after the read, and is kept).
        let known: Vec<AgentId> = registry
            .agents_where(|_| true)
            .iter()
            .map(|a| a.id)
            .collect();
        let head = retrying(&mut self.stopped, "newest event id", || {
            store.latest_activity_id()
        })
        .await?;
        let stored = retrying(&mut self.stopped, "every agent", || store.all_agents()).await?;
        let jobs = retrying(&mut self.stopped, "unfinished jobs", || {
            store.unfinished_provision_jobs()
        })
        .await?;
        registry.refresh(&stored);
        let present: HashSet<AgentId> = stored.iter().map(|row| row.agent.id).collect();
        for row in stored {
            registry.upsert(row);
        }
        for id in known {
            if !present.contains(&id) {
                registry.remove(id);
            }
        }
        let jobs: Vec<_> = jobs
            .iter()
            .map(|job| (job.agent_id, job.id, job.action.kind()))
            .collect();
        registry.sync_jobs(&jobs);
        self.last_id = Some(head);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::future::join_all;
    use mc_domain::activity::NewActivity;
    use mc_domain::agent::{Agent, AgentName, ReportedHealth};
    use mc_domain::board::{Board, BoardRules, Slug};
    use mc_domain::gateway::{Gateway, GatewayUrl};
    use mc_domain::ids::{BoardId, GatewayId};
    use mc_domain::token::{Secret, TokenDigest};
    use mc_store::{LivenessEvent, LivenessWrite, Store, Transition};
    use mc_testpg::TestPostgres;

    /// More events than the store's feed holds for a subscriber (4,096): one that reads
    /// none of them meanwhile falls behind.
    const MORE_THAN_THE_FEED_HOLDS: usize = 4_300;

    fn agent_named(gateway: GatewayId, board: BoardId, name: &str) -> Agent {
        Agent::new(
            Some(board),
            gateway,
            AgentName::parse(name, "name").unwrap(),
            Timestamp::now(),
        )
    }

    fn event(id: i64, event_type: EventType, agent: AgentId) -> ActivityEvent {
        ActivityEvent {
            id,
            event_type: event_type.as_str().to_owned(),
            message: String::new(),
            agent_id: Some(agent),
            board_id: None,
            data: None,
            created_at: Timestamp::now(),
        }
    }

    fn activity(event_type: EventType, agent: &Agent) -> NewActivity {
        NewActivity {
            event_type,
            message: format!("{} changed elsewhere.", agent.name),
            agent_id: Some(agent.id),
            board_id: agent.board_id,
            data: None,
            created_at: Timestamp::now(),
        }
    }

    fn stored(agent: Agent, token: &str) -> StoredAgent {
        StoredAgent {
            agent,
            token_digest: Some(TokenDigest::of(token)),
            checkin: None,
        }
    }

    #[test]
    fn a_deletion_in_a_batch_wins_over_every_reread_of_the_agent() {
        let registry = Registry::default();
        let (gateway, board) = (GatewayId::new(), BoardId::new());
        let known = agent_named(gateway, board, "known");
        registry.insert(known.clone(), Some(TokenDigest::of("known")));
        let brief = agent_named(gateway, board, "brief");
        let kept = agent_named(gateway, board, "kept");
        // Deleted with its board: its delete job's events name it after it is gone.
        let removed = agent_named(gateway, board, "removed");
        registry.insert(removed.clone(), Some(TokenDigest::of("removed")));
        let job = Some(serde_json::json!({"job": 9, "action": "delete"}));
        let events = [
            event(10, EventType::AgentUpdated, known.id),
            event(11, EventType::AgentDeleted, known.id),
            event(12, EventType::AgentCreated, brief.id),
            event(13, EventType::AgentTokenRotated, brief.id),
            event(14, EventType::AgentDeleted, brief.id),
            event(15, EventType::AgentCreated, kept.id),
            event(16, EventType::AgentDeleted, removed.id),
            ActivityEvent {
                data: job.clone(),
                ..event(17, EventType::ProvisionRetrying, removed.id)
            },
            ActivityEvent {
                data: job,
                ..event(18, EventType::ProvisionFailed, removed.id)
            },
        ];
        let plan = plan(&events, |_| false);
        assert_eq!(plan.reads(), [kept.id], "deleted agents are not read");
        // Rows as a read that raced with the deletions could return them.
        let rows = [
            stored(known.clone(), "known"),
            stored(brief.clone(), "brief"),
            stored(kept.clone(), "kept"),
            stored(removed.clone(), "removed"),
        ]
        .into_iter()
        .map(|row| (row.agent.id, row))
        .collect();
        apply(&registry, plan, rows);
        assert!(registry.get(known.id).is_none());
        assert!(registry.get(brief.id).is_none());
        assert!(registry.get(removed.id).is_none());
        for token in ["known", "brief", "removed"] {
            assert!(
                registry.by_token(&TokenDigest::of(token)).is_none(),
                "{token}"
            );
        }
        assert_eq!(registry.get(kept.id).map(|a| a.id()), Some(kept.id));
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn own_events_transitions_and_queued_jobs_need_no_read() {
        let registry = Registry::default();
        let a = agent_named(GatewayId::new(), BoardId::new(), "a");
        registry.insert(a.clone(), None);
        let mut queued = event(21, EventType::ProvisionQueued, a.id);
        queued.data = Some(serde_json::json!({"job": 7, "action": "update"}));
        let events = [
            event(20, EventType::AgentUpdated, a.id),
            queued,
            event(
                22,
                EventType::AgentStatusChanged(AgentStatus::Healthy),
                a.id,
            ),
        ];
        let plan = plan(&events, |id| id == 20);
        assert!(plan.reads().is_empty(), "{plan:?}");
        apply(&registry, plan, HashMap::new());
        let live = registry.get(a.id).unwrap();
        assert_eq!(live.job_in_progress(), Some(JobInProgress::Update));
        assert_eq!(live.view(Timestamp::now()).status, AgentStatus::Updating);
    }

    /// The database two replicas share, with a gateway and a board: `(other replica's
    /// store, this replica's store, gateway, board)`.
    async fn two_replicas() -> (Arc<dyn Store>, Arc<dyn Store>, GatewayId, BoardId) {
        let url = TestPostgres::shared().fresh_schema_url().await;
        let other = mc_store::open(&url, false).await.unwrap();
        let here = mc_store::open(&url, false).await.unwrap();
        let now = Timestamp::now();
        let org = other.ensure_default_organization(now).await.unwrap();
        let gateway = Gateway {
            id: GatewayId::new(),
            organization_id: org,
            name: "gw".into(),
            url: GatewayUrl::parse("").unwrap(),
            token: Some(Secret::new("gateway-secret")),
            workspace_root: String::new(),
            allow_insecure_tls: false,
            disable_device_pairing: false,
            created_at: now,
            updated_at: now,
        };
        other.insert_gateway(&gateway).await.unwrap();
        let board = Board {
            id: BoardId::new(),
            organization_id: org,
            name: "Ops".into(),
            slug: Slug::parse("ops").unwrap(),
            description: String::new(),
            gateway_id: gateway.id,
            rules: BoardRules::default(),
            created_at: now,
            updated_at: now,
        };
        other.insert_board(&board).await.unwrap();
        assert!(here.is_shared());
        (other, here, gateway.id, board.id)
    }

    /// Creates agents `prefix-0`, `prefix-1`, ... through `store`, each with its own
    /// token (the agent's name), several at a time; returns them in order.
    async fn create(
        store: &Arc<dyn Store>,
        gateway: GatewayId,
        board: BoardId,
        prefix: &str,
        count: usize,
    ) -> Vec<Agent> {
        let agents: Vec<Agent> = (0..count)
            .map(|i| agent_named(gateway, board, &format!("{prefix}-{i}")))
            .collect();
        for chunk in agents.chunks(32) {
            join_all(chunk.iter().map(|a| {
                let digest = TokenDigest::of(a.name.as_str());
                let event = activity(EventType::AgentCreated, a);
                async move { store.insert_agent(a, Some(digest), None, &event).await }
            }))
            .await
            .into_iter()
            .collect::<StoreResult<Vec<()>>>()
            .unwrap();
        }
        agents
    }

    /// A follower on `store`'s feed over an empty registry (`start_after`: the newest
    /// event the registry reflects, when known); the sender stops it.
    fn follower(
        store: &Arc<dyn Store>,
        registry: Registry,
        start_after: Option<i64>,
    ) -> (Follower, watch::Sender<bool>) {
        let engine = Engine::new(Arc::new(registry), Arc::clone(store));
        if let Some(id) = start_after {
            engine.follow_after(id);
        }
        let (stop, stopped) = watch::channel(false);
        let feed = store.subscribe_activity();
        (Follower::new(engine, feed, stopped), stop)
    }

    /// Waits until `count` events were published on the follower's feed since it last
    /// read it (those it can no longer receive included).
    async fn wait_for_feed(follower: &Follower, count: usize) {
        let waiting = async {
            while follower.feed.len() < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the feed delivers the events");
    }

    /// Lets the follower take what its feed delivers until it has applied event `head`.
    async fn follow_until(follower: &mut Follower, head: i64) {
        let following = async {
            while follower.last_id.is_none_or(|last| last < head) {
                let received = follower.feed.recv().await;
                follower.step(received).await.expect("the follower goes on");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), following)
            .await
            .expect("the follower reaches the newest event");
    }

    /// Whether `registry` holds exactly the agents `store` holds: the same ids, names and
    /// tokens (each stored token resolves to its agent, and no other agent is held).
    async fn holds_exactly(registry: &Registry, store: &Arc<dyn Store>) {
        let stored = store.all_agents().await.unwrap();
        for row in &stored {
            let live = registry
                .get(row.agent.id)
                .unwrap_or_else(|| panic!("{} is missing", row.agent.name));
            assert_eq!(live.profile().name, row.agent.name);
            let digest = row.token_digest.expect("every agent has a token");
            assert_eq!(
                registry.by_token(&digest).map(|a| a.id()),
                Some(row.agent.id),
                "{}'s token",
                row.agent.name
            );
        }
        assert_eq!(registry.len(), stored.len());
    }

    #[tokio::test]
    async fn a_burst_of_creates_is_read_with_one_query_per_batch() {
        let (other, here, gateway, board) = two_replicas().await;
        let (mut follower, _stop) = follower(&here, Registry::default(), None);
        let count = FOLLOW_BATCH + 200;
        create(&other, gateway, board, "burst", count).await;
        wait_for_feed(&follower, count).await;
        follow_until(&mut follower, other.latest_activity_id().await.unwrap()).await;
        assert_eq!(
            follower.engine.feed_reads(),
            FeedReads {
                agent_reads: 2,
                log_reads: 0,
                reloads: 0
            },
            "{count} creates waiting: two batches, one read each"
        );
        holds_exactly(&follower.engine.registry, &other).await;
    }

    #[tokio::test]
    async fn a_follower_that_fell_behind_reads_the_log_and_ends_with_the_other_replicas_agents() {
        let (other, here, gateway, board) = two_replicas().await;
        let (mut from_log, _stop) = follower(&here, Registry::default(), None);
        let (mut reloading, _stop_too) = follower(&here, Registry::default(), None);
        reloading.catch_up_limit = 100;
        let first = create(&other, gateway, board, "first", 4).await;
        let head = other.latest_activity_id().await.unwrap();
        follow_until(&mut from_log, head).await;
        follow_until(&mut reloading, head).await;

        // While neither follower reads: a rename, a new token, a deletion, a transition
        // and more creates than the feed holds.
        let mut renamed = first[0].clone();
        renamed.name = AgentName::parse("renamed", "name").unwrap();
        other
            .update_agent(&renamed, &activity(EventType::AgentUpdated, &renamed))
            .await
            .unwrap();
        let rotated = &first[1];
        other
            .set_agent_token(
                rotated.id,
                TokenDigest::of("rotated"),
                &activity(EventType::AgentTokenRotated, rotated),
            )
            .await
            .unwrap();
        other
            .delete_agent(first[2].id, &activity(EventType::AgentDeleted, &first[2]))
            .await
            .unwrap();
        let seen = &first[3];
        let now = Timestamp::now();
        let heard = LivenessWrite {
            agent_id: seen.id,
            last_seen_at: Some(now),
            reported_health: Some(ReportedHealth::Healthy),
            own_token_used: true,
            updated_at: now,
            checkin: None,
        };
        let healthy = LivenessEvent {
            activity: activity(EventType::AgentStatusChanged(AgentStatus::Healthy), seen),
            transition: Some(Transition {
                agent_id: seen.id,
                from: AgentStatus::Provisioning,
                to: AgentStatus::Healthy,
            }),
        };
        let outcome = other
            .apply_liveness(&[heard], &[], &[healthy])
            .await
            .unwrap();
        assert_eq!(outcome.recorded.len(), 1);
        let burst = create(&other, gateway, board, "burst", MORE_THAN_THE_FEED_HOLDS).await;
        other
            .delete_agent(burst[0].id, &activity(EventType::AgentDeleted, &burst[0]))
            .await
            .unwrap();
        let head = other.latest_activity_id().await.unwrap();
        // One event each: rename, token, deletion, transition, creates, deletion.
        let published = 4 + MORE_THAN_THE_FEED_HOLDS + 1;
        wait_for_feed(&from_log, published).await;
        wait_for_feed(&reloading, published).await;

        follow_until(&mut from_log, head).await;
        let reads = from_log.engine.feed_reads();
        assert_eq!(reads.reloads, 0, "{reads:?}");
        assert!(reads.log_reads >= 1, "{reads:?}");
        holds_exactly(&from_log.engine.registry, &other).await;
        let registry = &from_log.engine.registry;
        assert!(registry.by_token(&TokenDigest::of("first-1")).is_none());
        let transitioned = registry.get(seen.id).unwrap().view(Timestamp::now());
        assert_eq!(transitioned.status, AgentStatus::Healthy);

        // Past its limit, the other follower reads every agent instead, and forgets the
        // deleted one it knew.
        follow_until(&mut reloading, head).await;
        let reads = reloading.engine.feed_reads();
        assert_eq!((reads.reloads, reads.log_reads), (1, 0), "{reads:?}");
        holds_exactly(&reloading.engine.registry, &other).await;
    }

    #[tokio::test]
    async fn a_follower_started_after_a_load_reads_what_was_committed_since_from_the_log() {
        let (other, here, gateway, board) = two_replicas().await;
        let before = create(&other, gateway, board, "before", 3).await;
        let loaded_after = here.latest_activity_id().await.unwrap();
        let registry = Registry::load(
            here.all_agents().await.unwrap(),
            Vec::new(),
            Timestamp::now(),
        );
        // Committed after the load, before the follower subscribed to the feed.
        create(&other, gateway, board, "after", 5).await;
        other
            .delete_agent(before[0].id, &activity(EventType::AgentDeleted, &before[0]))
            .await
            .unwrap();
        let (mut follower, _stop) = follower(&here, registry, Some(loaded_after));
        follower.catch_up(0).await.expect("the follower goes on");
        assert_eq!(
            follower.engine.feed_reads(),
            FeedReads {
                agent_reads: 1,
                log_reads: 1,
                reloads: 0
            }
        );
        holds_exactly(&follower.engine.registry, &other).await;
    }
}
