//! The in-memory agent index and the per-agent live state behind the hot path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use mc_domain::activity::{EventType, NewActivity, status_transition};
use mc_domain::agent::{Agent, AgentStatus, ReportedHealth};
use mc_domain::ids::AgentId;
use mc_domain::liveness::{Checkin, JobInProgress, LivenessFacts};
use mc_domain::time::Timestamp;
use mc_domain::token::TokenDigest;
use mc_store::{AgentFilter, LivenessEvent, LivenessWrite, SeenWrite, StoredAgent, Transition};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::sync::Notify;

use super::counts::{AgentCounts, Placement};

/// One agent in memory: its settings (swapped whole on update) and its live state.
#[derive(Debug)]
pub struct LiveAgent {
    id: AgentId,
    /// Taken before `live` where both are held.
    profile: RwLock<Arc<Agent>>,
    live: Mutex<LiveState>,
}

#[derive(Debug)]
struct LiveState {
    last_seen_at: Option<Timestamp>,
    reported: Option<ReportedHealth>,
    updated_at: Timestamp,
    published: AgentStatus,
    grace_until: Option<Timestamp>,
    own_token_used: bool,
    token_digest: Option<TokenDigest>,
    /// Queued for the next write-behind batch.
    dirty: bool,
    /// The row fields as last written: a batch that finds them unchanged writes only the
    /// heartbeat's times, to the liveness log.
    written: RowFields,
    /// The deadline under which the agent sits in the deadline index.
    scheduled: Option<Timestamp>,
    removed: bool,
    /// Provisioning jobs queued or running, by queue id.
    jobs: Vec<(i64, JobInProgress)>,
    /// The last few jobs known to have ended: news that one of them was queued comes late
    /// (a runner claimed and finished it before the note of its queueing arrived) and
    /// changes nothing.
    finished_jobs: Vec<i64>,
    /// The check-in awaited after a wake (in the check-in index under its deadline), or
    /// given up on.
    checkin: Option<Checkin>,
    /// The newest transition event of this agent known to be recorded (by any replica):
    /// an older one arriving on the feed changes nothing.
    newest_transition: i64,
}

/// The liveness fields other than the heartbeat's times, which a heartbeat rarely
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowFields {
    reported: Option<ReportedHealth>,
    published: AgentStatus,
    own_token_used: bool,
    checkin: Option<Checkin>,
}

impl LiveState {
    fn row_fields(&self) -> RowFields {
        RowFields {
            reported: self.reported,
            published: self.published,
            own_token_used: self.own_token_used,
            checkin: self.checkin,
        }
    }

    fn facts(&self, tolerance_seconds: u32) -> LivenessFacts {
        LivenessFacts {
            last_seen_at: self.last_seen_at,
            reported: self.reported,
            missing_tolerance_seconds: tolerance_seconds,
            grace_until: self.grace_until,
            job: self.jobs.iter().map(|(_, kind)| *kind).max(),
            checkin: self.checkin,
        }
    }
}

impl LiveAgent {
    /// The agent's id.
    pub fn id(&self) -> AgentId {
        self.id
    }

    /// The agent's settings (without live fields).
    pub fn profile(&self) -> Arc<Agent> {
        Arc::clone(&self.profile.read())
    }

    /// Whether the agent has authenticated with its current token yet.
    pub fn own_token_used(&self) -> bool {
        self.live.lock().own_token_used
    }

    /// Whether Mission Control waits for the agent's check-in after a wake.
    pub fn awaits_checkin(&self) -> bool {
        matches!(self.live.lock().checkin, Some(Checkin::Awaiting { .. }))
    }

    /// The provisioning job queued or running that shows in its status, if any.
    pub fn job_in_progress(&self) -> Option<JobInProgress> {
        self.live.lock().jobs.iter().map(|(_, kind)| *kind).max()
    }

    /// The agent as a reader sees it at `now`.
    pub fn view(&self, now: Timestamp) -> AgentView {
        let profile = self.profile();
        let live = self.live.lock();
        let status = live
            .facts(profile.heartbeat_config.missing_tolerance)
            .status(now);
        let (last_seen_at, updated_at) = (live.last_seen_at, live.updated_at);
        drop(live);
        AgentView {
            profile,
            last_seen_at,
            updated_at,
            status,
        }
    }
}

/// An agent as a reader sees it: its shared settings, its live fields and its computed
/// status. Cheap to make: the settings are shared, not copied.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The stored settings (their liveness fields may be stale; use the fields below).
    pub profile: Arc<Agent>,
    /// The last heartbeat.
    pub last_seen_at: Option<Timestamp>,
    /// The last change, heartbeats included.
    pub updated_at: Timestamp,
    /// The computed status.
    pub status: AgentStatus,
}

/// A batch for the write-behind flusher.
#[derive(Debug, Default)]
pub struct PendingBatch {
    /// Liveness fields to write to the agents' rows (more than the heartbeat's times
    /// changed).
    pub writes: Vec<LivenessWrite>,
    /// Heartbeats that changed only the times: the liveness log's records on SQLite, the
    /// cheap row writes on PostgreSQL.
    pub seen: Vec<SeenWrite>,
    /// Events to record, in order (transitions carry their change).
    pub events: Vec<LivenessEvent>,
    /// The agents of `writes`, in the same order.
    written: Vec<Arc<LiveAgent>>,
    /// The row fields of `writes` (published status included), in the same order.
    written_fields: Vec<RowFields>,
    /// The agents of `seen`, in the same order.
    seen_agents: Vec<Arc<LiveAgent>>,
}

impl PendingBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.seen.is_empty() && self.events.is_empty()
    }
}

/// Every agent, indexed by id and by token digest, plus the write-behind queue and the
/// deadline index.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: DashMap<AgentId, Arc<LiveAgent>>,
    by_token: DashMap<TokenDigest, Arc<LiveAgent>>,
    dirty: Mutex<Vec<Arc<LiveAgent>>>,
    events: Mutex<Vec<LivenessEvent>>,
    /// Wakes the flusher before its next tick: events wait, or a heartbeat that is
    /// urgent to write (see [`URGENT_WRITE_MS`]).
    flush_now: Notify,
    deadlines: Mutex<BTreeMap<(Timestamp, AgentId), Arc<LiveAgent>>>,
    /// Check-in deadlines after a wake, in due order (entries whose agent checked in since
    /// are dropped when they come due).
    checkins: Mutex<BTreeMap<(Timestamp, AgentId), Arc<LiveAgent>>>,
    heartbeats: AtomicU64,
    transitions: [AtomicU64; STATUS_COUNT],
    /// The agents of `by_id` by placement, each counted where its current settings place
    /// it (see [`Registry::agent_count`]).
    counts: Mutex<AgentCounts>,
}

/// Most events one write-behind batch records: a burst (a fleet back after an outage
/// makes one transition per agent) is written in batches of this size, back to back, so
/// what a batch copies on its way to the database stays small.
const MAX_BATCH_EVENTS: usize = 4_096;

/// A heartbeat that arrives this close to its agent's silence deadline (as this process
/// knows it), or after it, is written at once rather than at the next write-behind tick:
/// where replicas share the database, the leader decides on the deadline from the stored
/// row, which must hold the heartbeat by then.
const URGENT_WRITE_MS: i64 = 1_000;

/// How long a replica that does not lead waits before it looks again at an agent whose
/// deadline passed (the leader records its transition meanwhile).
const FOLLOWER_RECHECK_MS: i64 = 1_000;

/// How many statuses there are (the length of per-status arrays).
pub const STATUS_COUNT: usize = AgentStatus::ALL.len();

/// The index of `status` in per-status arrays.
pub const fn status_index(status: AgentStatus) -> usize {
    match status {
        AgentStatus::Provisioning => 0,
        AgentStatus::Healthy => 1,
        AgentStatus::Degraded => 2,
        AgentStatus::Offline => 3,
        AgentStatus::Updating => 4,
        AgentStatus::Deleting => 5,
    }
}

/// A check-in deadline that passed without a heartbeat.
#[derive(Debug, Clone)]
pub struct DueCheckin {
    /// The agent.
    pub agent: Arc<LiveAgent>,
    /// Wakes sent so far.
    pub wakes: u32,
}

/// How many ended jobs an agent remembers (see `LiveState::finished_jobs`).
const FINISHED_JOBS_KEPT: usize = 8;

/// Notes job `job` of kind `kind` as queued, unless it is noted already or has ended;
/// false when nothing changed.
fn note_job(live: &mut LiveState, job: i64, kind: JobInProgress) -> bool {
    let known = live.jobs.iter().any(|(id, _)| *id == job);
    if live.removed || known || live.finished_jobs.contains(&job) {
        return false;
    }
    live.jobs.push((job, kind));
    true
}

/// Notes that job `job` ended: it no longer shows in the status.
fn end_job(live: &mut LiveState, job: i64) {
    live.jobs.retain(|(id, _)| *id != job);
    if !live.finished_jobs.contains(&job) {
        if live.finished_jobs.len() == FINISHED_JOBS_KEPT {
            live.finished_jobs.remove(0);
        }
        live.finished_jobs.push(job);
    }
}

impl Registry {
    /// Builds the index from stored agents and the provisioning jobs in progress
    /// (`(agent, job id, kind)`). Restart grace: an agent that was not offline when the
    /// server stopped gets a full tolerance from `started_at` before it can go offline by
    /// silence. Stored check-in deadlines are kept as they are: one that passed while the
    /// server was down comes due at once.
    pub fn load(
        stored: Vec<StoredAgent>,
        jobs: Vec<(AgentId, i64, JobInProgress)>,
        started_at: Timestamp,
    ) -> Self {
        let registry = Self::default();
        for StoredAgent {
            agent,
            token_digest,
            checkin,
        } in stored
        {
            let grace = (agent.published_status != AgentStatus::Offline
                && agent.last_seen_at.is_some())
            .then(|| started_at.plus_seconds(i64::from(agent.heartbeat_config.missing_tolerance)));
            let (live, _) = registry.add(agent, token_digest, grace);
            {
                let mut state = live.live.lock();
                state.checkin = checkin;
                state.written.checkin = checkin;
            }
            registry.index_checkin(&live, checkin);
            registry.schedule(&live);
        }
        for (agent, job, kind) in jobs {
            if let Some(live) = registry.get(agent) {
                live.live.lock().jobs.push((job, kind));
            }
        }
        registry
    }

    /// Adds an agent unless one with its id is there already (a replica may learn of an
    /// agent from the feed and from its own request at once: the first one in wins).
    /// Returns the agent in the index and whether it is the one just made.
    fn add(
        &self,
        agent: Agent,
        token_digest: Option<TokenDigest>,
        grace_until: Option<Timestamp>,
    ) -> (Arc<LiveAgent>, bool) {
        let id = agent.id;
        let placement = Placement::of(&agent);
        let candidate = Arc::new(LiveAgent {
            id,
            live: Mutex::new(LiveState {
                written: RowFields {
                    reported: agent.reported_health,
                    published: agent.published_status,
                    own_token_used: agent.own_token_used,
                    checkin: None,
                },
                last_seen_at: agent.last_seen_at,
                reported: agent.reported_health,
                updated_at: agent.updated_at,
                published: agent.published_status,
                grace_until,
                own_token_used: agent.own_token_used,
                token_digest,
                dirty: false,
                scheduled: None,
                removed: false,
                jobs: Vec::new(),
                finished_jobs: Vec::new(),
                checkin: None,
                newest_transition: 0,
            }),
            profile: RwLock::new(Arc::new(agent)),
        });
        // Counted while the entry is locked: a removal of the agent, which can only find
        // it once the entry is released, never comes before its count.
        let live = Arc::clone(
            self.by_id
                .entry(id)
                .or_insert_with(|| {
                    self.counts.lock().add(placement);
                    Arc::clone(&candidate)
                })
                .value(),
        );
        let added = Arc::ptr_eq(&live, &candidate);
        if added && let Some(digest) = token_digest {
            self.by_token.insert(digest, Arc::clone(&live));
        }
        (live, added)
    }

    /// Adds a newly created (already stored) agent.
    pub fn insert(&self, agent: Agent, token_digest: Option<TokenDigest>) -> Arc<LiveAgent> {
        let (live, _) = self.add(agent, token_digest, None);
        self.schedule(&live);
        live
    }

    /// How many agents `filter` admits (by board, gateway, both or neither), in O(1): the
    /// agent listing's `total`. The count covers the agents this registry holds, which on
    /// a database of its own are exactly the stored ones. With several replicas on one
    /// PostgreSQL database, agents that another replica created, moved or deleted are
    /// followed through the event feed, so the count is at most a feed delay (the time
    /// until this replica has read the event) behind the database.
    pub fn agent_count(&self, filter: AgentFilter) -> u64 {
        self.counts.lock().count(filter)
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no agents.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The agent holding a token.
    pub fn by_token(&self, digest: &TokenDigest) -> Option<Arc<LiveAgent>> {
        self.by_token
            .get(digest)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// An agent by id.
    pub fn get(&self, id: AgentId) -> Option<Arc<LiveAgent>> {
        self.by_id.get(&id).map(|entry| Arc::clone(entry.value()))
    }

    fn mark_dirty(&self, agent: &Arc<LiveAgent>, live: &mut LiveState) {
        if !live.dirty {
            live.dirty = true;
            self.dirty.lock().push(Arc::clone(agent));
        }
    }

    /// Queues the event of a transition of `agent_id` from `from`.
    fn push_event(&self, agent_id: AgentId, from: AgentStatus, activity: NewActivity) {
        let transition = match activity.event_type {
            EventType::AgentStatusChanged(to) => {
                self.transitions[status_index(to)].fetch_add(1, Ordering::Relaxed);
                Some(Transition { agent_id, from, to })
            }
            _ => None,
        };
        self.events.lock().push(LivenessEvent {
            activity,
            transition,
        });
        self.flush_now.notify_one();
    }

    /// Moves the agent's published status to `to` and queues the one event of that
    /// transition (`event_type` and `message` as `status_transition` worded them). A
    /// `reason` (the agent's new `last_provision_error`) goes into the event's data, so
    /// that replicas following the feed show it too.
    fn push_transition(
        &self,
        profile: &Agent,
        live: &mut LiveState,
        to: AgentStatus,
        (event_type, message): (EventType, String),
        reason: Option<&str>,
        now: Timestamp,
    ) {
        let (agent_id, from) = (profile.id, live.published);
        let mut data = json!({"from": from.as_str(), "to": to.as_str()});
        if let Some(reason) = reason {
            data["reason"] = json!(reason);
        }
        self.push_event(
            agent_id,
            from,
            NewActivity {
                event_type,
                message,
                agent_id: Some(agent_id),
                board_id: profile.board_id,
                data: Some(data),
                created_at: now,
            },
        );
        live.published = to;
    }

    /// Resolves when something should be written before the next write-behind tick:
    /// events, or a heartbeat close to its agent's deadline.
    pub async fn flush_wanted(&self) {
        self.flush_now.notified().await;
    }

    /// Records that the agent authenticated with its own token.
    pub fn note_own_token_use(&self, agent: &Arc<LiveAgent>) {
        let mut live = agent.live.lock();
        if !live.own_token_used {
            live.own_token_used = true;
            self.mark_dirty(agent, &mut live);
        }
    }

    /// The hot path: records a heartbeat at `now`, emits a transition event when the
    /// computed status changes, and returns the agent as seen right after.
    pub fn heartbeat(
        &self,
        agent: &Arc<LiveAgent>,
        reported: Option<ReportedHealth>,
        now: Timestamp,
    ) -> AgentView {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        let profile = agent.profile();
        let tolerance = profile.heartbeat_config.missing_tolerance;
        let mut live = agent.live.lock();
        let urgent = live
            .facts(tolerance)
            .silence_deadline()
            .is_some_and(|deadline| deadline <= now.plus_millis(URGENT_WRITE_MS));
        live.last_seen_at = Some(now);
        live.reported = reported.or(live.reported).or(Some(ReportedHealth::Healthy));
        live.updated_at = now;
        live.grace_until = None;
        // Checked in: the wait after a wake (or the verdict that it never came) ends. Its
        // entry in the check-in index is dropped when it comes due.
        live.checkin = None;
        self.publish_change(agent, &profile, &mut live, now, None);
        let to_schedule = match (live.scheduled, live.facts(tolerance).silence_deadline()) {
            (None, Some(deadline)) => {
                live.scheduled = Some(deadline);
                Some(deadline)
            }
            _ => None,
        };
        let (last_seen_at, updated_at) = (live.last_seen_at, live.updated_at);
        let shown = live.facts(tolerance).status(now);
        drop(live);
        if urgent {
            self.flush_now.notify_one();
        }
        if let Some(deadline) = to_schedule {
            self.deadlines
                .lock()
                .insert((deadline, agent.id), Arc::clone(agent));
        }
        AgentView {
            profile,
            last_seen_at,
            updated_at,
            status: shown,
        }
    }

    /// Publishes a change of the agent's liveness status (one event, `reason` in its
    /// sentence) and queues its fields for the next write-behind batch.
    fn publish_change(
        &self,
        agent: &Arc<LiveAgent>,
        profile: &Agent,
        live: &mut LiveState,
        now: Timestamp,
        reason: Option<&str>,
    ) {
        let status = live
            .facts(profile.heartbeat_config.missing_tolerance)
            .liveness_status(now);
        if status != live.published {
            let (event_type, default_message) =
                status_transition(profile.name.as_str(), live.published, status, None);
            let message = match reason {
                Some(reason) => format!("{} is {}: {reason}.", profile.name, status.as_str()),
                None => default_message,
            };
            let worded = (event_type, message);
            self.push_transition(profile, live, status, worded, reason, now);
        }
        self.mark_dirty(agent, live);
    }

    /// Records that provisioning job `job` of kind `kind` was queued for the agent (unless
    /// it has ended already: a runner may claim a job the moment it is stored).
    pub fn job_queued(&self, agent: &Arc<LiveAgent>, job: i64, kind: JobInProgress) {
        let profile = agent.profile();
        let mut live = agent.live.lock();
        if !note_job(&mut live, job, kind) {
            return;
        }
        self.publish_change(agent, &profile, &mut live, Timestamp::now(), None);
    }

    /// Follows a job that another replica queued (from the feed): it shows in the agent's
    /// status here too. Publishes nothing and writes nothing: the replica that queued the
    /// job recorded what changed.
    pub fn follow_job_queued(&self, id: AgentId, job: i64, kind: JobInProgress) {
        if let Some(agent) = self.get(id) {
            note_job(&mut agent.live.lock(), job, kind);
        }
    }

    /// Follows the end of job `job`, which another replica ran (from the feed), with the
    /// agent as stored when the end was recorded: its settings (placement,
    /// `last_provision_error`) and the check-in wait the job started, which the runner
    /// made durable first. The wait only shows in the status: it is not put in this
    /// replica's check-in index, as the leading replica reads waits from the database and
    /// acts on them once. This replica's own newer heartbeat wins over the stored wait.
    /// Publishes nothing and writes nothing.
    pub fn follow_job_finished(&self, stored: StoredAgent, job: i64) {
        let stored_seen = stored.agent.last_seen_at;
        let checkin = stored.checkin;
        let agent = self.upsert(stored);
        let mut live = agent.live.lock();
        if live.removed {
            return;
        }
        end_job(&mut live, job);
        if live.last_seen_at <= stored_seen {
            live.checkin = checkin;
            live.written.checkin = checkin;
        } else if matches!(live.checkin, Some(Checkin::Awaiting { .. })) {
            live.checkin = None;
        }
    }

    /// Follows a transition whose event gives a reason (another replica gave up on the
    /// agent's check-in, or its job): the reason is the agent's `last_provision_error`.
    pub fn follow_provision_error(&self, id: AgentId, reason: &str) {
        let Some(agent) = self.get(id) else {
            return;
        };
        // Read and replaced under one lock: a placement change swapped in meanwhile (and
        // counted) is kept.
        let mut profile = agent.profile.write();
        if profile.last_provision_error.as_deref() == Some(reason) {
            return;
        }
        let mut updated = (**profile).clone();
        updated.last_provision_error = Some(reason.to_owned());
        *profile = Arc::new(updated);
    }

    /// Makes every agent's jobs in progress those of `unfinished` (`(agent, job, kind)`, as
    /// the database lists them): after this replica fell behind the feed and may have
    /// missed jobs queued or ended elsewhere. A scan of every agent, for that rare case.
    pub fn sync_jobs(&self, unfinished: &[(AgentId, i64, JobInProgress)]) {
        let mut by_agent: std::collections::HashMap<AgentId, Vec<(i64, JobInProgress)>> =
            std::collections::HashMap::new();
        for (agent, job, kind) in unfinished {
            by_agent.entry(*agent).or_default().push((*job, *kind));
        }
        for entry in &self.by_id {
            let mut live = entry.value().live.lock();
            live.jobs = by_agent.remove(entry.key()).unwrap_or_default();
        }
    }

    /// Records that job `job` ended. With `woken` (the job woke the agent at `woken_at`),
    /// the agent has until `deadline` to check in, unless it heartbeated since the wake;
    /// without, `reason` says why the job ended without one (shown when that makes the
    /// agent offline).
    pub fn job_finished(
        &self,
        agent: &Arc<LiveAgent>,
        job: i64,
        woken: Option<(Timestamp, Timestamp)>,
        reason: Option<&str>,
        now: Timestamp,
    ) {
        let profile = agent.profile();
        let mut live = agent.live.lock();
        if live.removed {
            return;
        }
        end_job(&mut live, job);
        if let Some((woken_at, deadline)) = woken {
            let checked_in = live.last_seen_at.is_some_and(|seen| seen >= woken_at);
            live.checkin = (!checked_in).then_some(Checkin::Awaiting { deadline, wakes: 1 });
        }
        let checkin = live.checkin;
        self.publish_change(agent, &profile, &mut live, now, reason);
        drop(live);
        self.index_checkin(agent, checkin);
    }

    /// Starts waiting for the first heartbeat of an agent that no job wakes (its gateway is
    /// unmanaged): it has until `deadline`, and no wake counted.
    pub fn await_first_checkin(&self, agent: &Arc<LiveAgent>, deadline: Timestamp) {
        let profile = agent.profile();
        let mut live = agent.live.lock();
        if live.removed || live.last_seen_at.is_some() {
            return;
        }
        let checkin = Checkin::Awaiting { deadline, wakes: 0 };
        live.checkin = Some(checkin);
        self.publish_change(agent, &profile, &mut live, Timestamp::now(), None);
        drop(live);
        self.index_checkin(agent, Some(checkin));
    }

    fn index_checkin(&self, agent: &Arc<LiveAgent>, checkin: Option<Checkin>) {
        if let Some(Checkin::Awaiting { deadline, .. }) = checkin {
            self.checkins
                .lock()
                .insert((deadline, agent.id), Arc::clone(agent));
        }
    }

    /// Pops every check-in deadline passed at `now` whose agent is still awaited (no
    /// heartbeat since, no newer wait). A scan of the due entries only.
    pub fn due_checkins(&self, now: Timestamp) -> Vec<DueCheckin> {
        let due: Vec<((Timestamp, AgentId), Arc<LiveAgent>)> = {
            let mut checkins = self.checkins.lock();
            let mut due = Vec::new();
            while let Some(entry) = checkins.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove_entry());
            }
            due
        };
        due.into_iter()
            .filter_map(|((key, _), agent)| {
                let live = agent.live.lock();
                match live.checkin {
                    Some(Checkin::Awaiting { deadline, wakes })
                        if deadline == key && !live.removed =>
                    {
                        drop(live);
                        Some(DueCheckin { agent, wakes })
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Takes over check-in waits that the database says came due (`stored`, read with
    /// their agents), for a replica that leads: waits another replica started, or that
    /// this one knew but left to the leader. Skips agents in `taken` (this pass has them
    /// from the in-memory index already) and waits this replica knows to be over or newer:
    /// given up, woken again since, or ended by a heartbeat the database does not have yet.
    pub fn adopt_due_checkins(
        &self,
        stored: Vec<StoredAgent>,
        taken: &[DueCheckin],
    ) -> Vec<DueCheckin> {
        let mut adopted = Vec::new();
        for stored in stored {
            let Some(Checkin::Awaiting { deadline, wakes }) = stored.checkin else {
                continue;
            };
            let id = stored.agent.id;
            if taken.iter().any(|due| due.agent.id() == id) {
                continue;
            }
            let stored_seen = stored.agent.last_seen_at;
            let agent = self.get(id).unwrap_or_else(|| self.upsert(stored));
            let mut live = agent.live.lock();
            let adopt = !live.removed
                && match live.checkin {
                    Some(Checkin::GaveUp) => false,
                    Some(Checkin::Awaiting {
                        deadline: ours,
                        wakes: our_wakes,
                    }) => (our_wakes, ours) <= (wakes, deadline),
                    None => live.last_seen_at <= stored_seen,
                };
            if adopt {
                live.checkin = Some(Checkin::Awaiting { deadline, wakes });
                drop(live);
                adopted.push(DueCheckin { agent, wakes });
            }
        }
        adopted
    }

    /// Records another wake: the agent has until `deadline` to check in. `sent`, the
    /// event saying the wake went out, is written with the next batch, the one that stores
    /// the new wait. False (and nothing recorded) when the agent checked in (or was
    /// removed) meanwhile.
    pub fn rewoken(
        &self,
        agent: &Arc<LiveAgent>,
        wakes: u32,
        deadline: Timestamp,
        sent: Option<NewActivity>,
    ) -> bool {
        let mut live = agent.live.lock();
        if live.removed || !matches!(live.checkin, Some(Checkin::Awaiting { .. })) {
            return false;
        }
        let checkin = Checkin::Awaiting { deadline, wakes };
        live.checkin = Some(checkin);
        self.mark_dirty(agent, &mut live);
        if let Some(sent) = sent {
            let from = live.published;
            self.push_event(agent.id, from, sent);
        }
        drop(live);
        self.index_checkin(agent, Some(checkin));
        true
    }

    /// Gives up waiting for the agent's check-in: it is offline (one transition event
    /// saying `reason`) until it heartbeats. False when it checked in meanwhile.
    pub fn give_up_checkin(&self, agent: &Arc<LiveAgent>, reason: &str, now: Timestamp) -> bool {
        let profile = agent.profile();
        let mut live = agent.live.lock();
        if live.removed || !matches!(live.checkin, Some(Checkin::Awaiting { .. })) {
            return false;
        }
        live.checkin = Some(Checkin::GaveUp);
        self.publish_change(agent, &profile, &mut live, now, Some(reason));
        true
    }

    /// Puts the agent in the deadline index at its current deadline (if it has one and is
    /// not already there at that deadline).
    fn schedule(&self, agent: &Arc<LiveAgent>) {
        let tolerance = agent.profile().heartbeat_config.missing_tolerance;
        let mut live = agent.live.lock();
        let deadline = live.facts(tolerance).silence_deadline();
        if live.scheduled == deadline || live.removed {
            return;
        }
        live.scheduled = deadline;
        drop(live);
        if let Some(deadline) = deadline {
            self.deadlines
                .lock()
                .insert((deadline, agent.id), Arc::clone(agent));
        }
    }

    /// Pops every passed deadline: reschedules agents that heartbeated since, and marks
    /// the rest offline (one event each). Returns how many went offline. The whole
    /// deadline pass of a process that leads alone (see [`Registry::take_due`]).
    pub fn expire_deadlines(&self, now: Timestamp) -> usize {
        let due = self.take_due(now);
        self.expire(due, now, true)
    }

    /// Takes the agents whose deadline passed before `now` out of the deadline index (the
    /// first half of a deadline pass; [`Registry::expire`] is the second). Between the
    /// two, the caller may bring them up to date from the database
    /// ([`Registry::refresh`]): another replica may have received their heartbeats.
    pub fn take_due(&self, now: Timestamp) -> Vec<Arc<LiveAgent>> {
        let popped: Vec<((Timestamp, AgentId), Arc<LiveAgent>)> = {
            let mut deadlines = self.deadlines.lock();
            let mut due = Vec::new();
            while let Some(entry) = deadlines.first_entry() {
                if entry.key().0 >= now {
                    break;
                }
                due.push(entry.remove_entry());
            }
            due
        };
        popped
            .into_iter()
            .filter_map(|((key, _), agent)| {
                let mut live = agent.live.lock();
                if live.removed || live.scheduled != Some(key) {
                    return None;
                }
                live.scheduled = None;
                drop(live);
                Some(agent)
            })
            .collect()
    }

    /// Ends a deadline pass over agents [taken](Registry::take_due) at `now`: reschedules
    /// those with a later deadline, and marks the others offline (one event each) when
    /// `leading`. A replica that does not lead keeps them under watch instead, to be
    /// checked again shortly: the leader records the transition, or this replica does once
    /// it leads. Returns how many went offline.
    pub fn expire(&self, due: Vec<Arc<LiveAgent>>, now: Timestamp, leading: bool) -> usize {
        let mut went_offline = 0;
        let mut reschedule = Vec::new();
        for agent in due {
            let profile = agent.profile();
            let tolerance = profile.heartbeat_config.missing_tolerance;
            let mut live = agent.live.lock();
            // Removed, or scheduled again by a heartbeat since it was taken.
            if live.removed || live.scheduled.is_some() {
                continue;
            }
            match live.facts(tolerance).silence_deadline() {
                None => {}
                Some(deadline) if deadline >= now => {
                    live.scheduled = Some(deadline);
                    reschedule.push(((deadline, agent.id), Arc::clone(&agent)));
                }
                Some(_) if live.published == AgentStatus::Offline => {}
                Some(_) if !leading => {
                    let again = now.plus_millis(FOLLOWER_RECHECK_MS);
                    live.scheduled = Some(again);
                    reschedule.push(((again, agent.id), Arc::clone(&agent)));
                }
                Some(_) => {
                    let worded = status_transition(
                        profile.name.as_str(),
                        live.published,
                        AgentStatus::Offline,
                        Some(tolerance),
                    );
                    self.push_transition(
                        &profile,
                        &mut live,
                        AgentStatus::Offline,
                        worded,
                        None,
                        now,
                    );
                    self.mark_dirty(&agent, &mut live);
                    went_offline += 1;
                }
            }
        }
        if !reschedule.is_empty() {
            self.deadlines.lock().extend(reschedule);
        }
        went_offline
    }

    /// Brings agents up to date with their stored liveness fields where the database knows
    /// a newer heartbeat (one another replica received): its time and health, and the end
    /// of any check-in wait. Does not touch the deadline index.
    pub fn refresh(&self, stored: &[StoredAgent]) {
        for stored in stored {
            let Some(agent) = self.get(stored.agent.id) else {
                continue;
            };
            let mut live = agent.live.lock();
            let newer = match (stored.agent.last_seen_at, live.last_seen_at) {
                (Some(theirs), Some(ours)) => theirs > ours,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if newer {
                live.last_seen_at = stored.agent.last_seen_at;
                live.reported = stored.agent.reported_health;
                live.grace_until = None;
                live.updated_at = live.updated_at.max(stored.agent.updated_at);
                if matches!(live.checkin, Some(Checkin::Awaiting { .. })) {
                    live.checkin = None;
                }
            }
        }
    }

    /// Follows a transition that the feed says was recorded (by this replica or another):
    /// the agent's published status is `to`, and a heartbeat-driven one (healthy,
    /// degraded) tells when the agent was last seen. Older events than the newest one
    /// followed change nothing.
    ///
    /// An `offline` that a heartbeat received here contradicts (the leader read the
    /// agent's row before this replica's write of it committed) is corrected at once: the
    /// agent's status at `now` as this replica knows it is published back.
    pub fn follow_transition(
        &self,
        id: AgentId,
        event_id: i64,
        (to, at): (AgentStatus, Timestamp),
        now: Timestamp,
    ) {
        let Some(agent) = self.get(id) else {
            return;
        };
        {
            let profile = agent.profile();
            let mut live = agent.live.lock();
            if live.removed || event_id <= live.newest_transition {
                return;
            }
            live.newest_transition = event_id;
            live.published = to;
            // Only the leader acts on check-in deadlines: offline while a wait is on
            // means it gave the wait up.
            if to == AgentStatus::Offline && matches!(live.checkin, Some(Checkin::Awaiting { .. }))
            {
                live.checkin = Some(Checkin::GaveUp);
            }
            let heard = match to {
                AgentStatus::Healthy => Some(ReportedHealth::Healthy),
                AgentStatus::Degraded => Some(ReportedHealth::Degraded),
                _ => None,
            };
            if let Some(health) = heard
                && live.last_seen_at.is_none_or(|seen| seen < at)
            {
                live.last_seen_at = Some(at);
                live.reported = Some(health);
                live.grace_until = None;
                if matches!(live.checkin, Some(Checkin::Awaiting { .. })) {
                    live.checkin = None;
                }
            }
            if to == AgentStatus::Offline {
                self.publish_back_if_contradicted(&agent, &profile, &mut live, now);
            }
        }
        self.schedule(&agent);
    }

    /// Notes transition events this replica recorded (their ids), so that the feed's copy
    /// of an earlier one does not move the published status back.
    pub fn recorded_transitions(&self, recorded: &[mc_domain::activity::ActivityEvent]) {
        for event in recorded {
            if let Some(agent) = event.agent_id.and_then(|id| self.get(id)) {
                let mut live = agent.live.lock();
                live.newest_transition = live.newest_transition.max(event.id);
            }
        }
    }

    /// Takes the stored published status of an agent whose transitions were refused
    /// (another replica recorded a change first). When the agent's own status differs
    /// and is not offline by silence (the deadline pass decides that, after a re-read),
    /// a transition from the stored status is queued. `now` is the time of that status.
    pub fn adopt_published(&self, id: AgentId, stored: AgentStatus, now: Timestamp) {
        let Some(agent) = self.get(id) else {
            return;
        };
        let profile = agent.profile();
        {
            let mut live = agent.live.lock();
            if live.removed {
                return;
            }
            live.published = stored;
            self.publish_back_if_contradicted(&agent, &profile, &mut live, now);
        }
        self.schedule(&agent);
    }

    /// After taking a status another replica published: publishes the agent's status as
    /// this replica knows it (a newer heartbeat, a job under way) when that differs. Never
    /// `offline`: only the leader records that, from the database.
    fn publish_back_if_contradicted(
        &self,
        agent: &Arc<LiveAgent>,
        profile: &Agent,
        live: &mut LiveState,
        now: Timestamp,
    ) {
        let status = live
            .facts(profile.heartbeat_config.missing_tolerance)
            .liveness_status(now);
        if status != live.published && status != AgentStatus::Offline {
            self.publish_change(agent, profile, live, now, None);
        }
    }

    /// Adds an agent read from the database (created or changed by another replica, or
    /// found by its token), or brings the one in memory up to date with its settings and
    /// token. Live state in memory is kept.
    pub fn upsert(&self, stored: StoredAgent) -> Arc<LiveAgent> {
        let StoredAgent {
            agent,
            token_digest,
            checkin,
        } = stored;
        if let Some(existing) = self.get(agent.id) {
            let current = existing.live.lock().token_digest;
            if current != token_digest {
                match token_digest {
                    Some(digest) => self.replace_token(&existing, digest),
                    None => self.forget_token(&existing),
                }
            }
            self.update_profile(&existing, agent);
            return existing;
        }
        let (live, added) = self.add(agent, token_digest, None);
        if added {
            live.live.lock().checkin = checkin;
            self.index_checkin(&live, checkin);
            self.schedule(&live);
        }
        live
    }

    fn forget_token(&self, agent: &Arc<LiveAgent>) {
        if let Some(old) = agent.live.lock().token_digest.take() {
            self.by_token.remove(&old);
        }
    }

    /// Replaces the agent's token: the old one stops working at once.
    pub fn replace_token(&self, agent: &Arc<LiveAgent>, digest: TokenDigest) {
        let mut live = agent.live.lock();
        if let Some(old) = live.token_digest.replace(digest) {
            self.by_token.remove(&old);
        }
        live.own_token_used = false;
        // The store reset the stored flag with the new digest.
        live.written.own_token_used = false;
        drop(live);
        self.by_token.insert(digest, Arc::clone(agent));
    }

    /// Swaps in new settings (after they were stored), moves the agent's count if its
    /// board or gateway changed, and moves the deadline if the tolerance changed.
    pub fn update_profile(&self, agent: &Arc<LiveAgent>, updated: Agent) {
        {
            // The settings are swapped and the count moved under the settings' lock, so
            // that the count always follows the settings in place (a removal takes the
            // same lock).
            let mut profile = agent.profile.write();
            let mut live = agent.live.lock();
            live.updated_at = live.updated_at.max(updated.updated_at);
            if !live.removed {
                self.counts
                    .lock()
                    .moved(Placement::of(&profile), Placement::of(&updated));
            }
            drop(live);
            *profile = Arc::new(updated);
        }
        self.schedule(agent);
    }

    /// The agents whose settings match `predicate`. A scan of every agent: for rare admin
    /// operations (deleting a board or a gateway), never for heartbeats.
    pub fn agents_where(&self, predicate: impl Fn(&Agent) -> bool) -> Vec<Arc<Agent>> {
        self.by_id
            .iter()
            .map(|entry| entry.value().profile())
            .filter(|profile| predicate(profile))
            .collect()
    }

    /// Heartbeats accepted since start.
    pub fn heartbeats_accepted(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Liveness transitions recorded since start, by new status (see [`status_index`]).
    pub fn transitions(&self) -> [u64; STATUS_COUNT] {
        std::array::from_fn(|i| self.transitions[i].load(Ordering::Relaxed))
    }

    /// Agents by computed status at `now` (see [`status_index`]). Visits every agent: for
    /// scrapes and dashboards, never for the hot path.
    pub fn count_by_status(&self, now: Timestamp) -> [u64; STATUS_COUNT] {
        let mut counts = [0; STATUS_COUNT];
        for entry in &self.by_id {
            counts[status_index(entry.value().view(now).status)] += 1;
        }
        counts
    }

    /// Agents waiting for the next write-behind batch.
    pub fn pending_writes(&self) -> usize {
        self.dirty.lock().len()
    }

    /// Every agent whose settings match `predicate`, as seen at `now` (a scan: for the
    /// dashboard's fleet view, never for heartbeats).
    pub fn views_where(
        &self,
        now: Timestamp,
        predicate: impl Fn(&Agent) -> bool,
    ) -> Vec<AgentView> {
        self.by_id
            .iter()
            .filter(|entry| predicate(&entry.value().profile.read()))
            .map(|entry| entry.value().view(now))
            .collect()
    }

    /// Forgets a deleted agent; its token stops working at once.
    pub fn remove(&self, id: AgentId) {
        if let Some((_, agent)) = self.by_id.remove(&id) {
            // Under the settings' lock: uncounted where the settings in place put it.
            let profile = agent.profile.read();
            let mut live = agent.live.lock();
            live.removed = true;
            self.counts.lock().remove(Placement::of(&profile));
            if let Some(digest) = live.token_digest.take() {
                self.by_token.remove(&digest);
            }
        }
    }

    /// Takes what waits to be written (the events up to [`MAX_BATCH_EVENTS`], the oldest
    /// first): agents whose heartbeats changed only their times (their other row fields
    /// are the ones this process last wrote) go to `seen`, with the health they reported,
    /// the rest to `writes`. A row another replica wrote since is still right: a shared
    /// store applies a `seen` heartbeat as the newest one only when it is, with its health
    /// and the end of any check-in wait (see [`SeenWrite`]).
    pub fn take_pending(&self) -> PendingBatch {
        let agents = {
            let mut dirty = self.dirty.lock();
            // The next batch is likely as large as this one: no regrowing from empty.
            let capacity = dirty.len();
            std::mem::replace(&mut *dirty, Vec::with_capacity(capacity))
        };
        let events = {
            let mut queued = self.events.lock();
            if queued.len() > MAX_BATCH_EVENTS {
                // The rest go with the next batch, which the flusher starts at once.
                let rest = queued.split_off(MAX_BATCH_EVENTS);
                self.flush_now.notify_one();
                std::mem::replace(&mut *queued, rest)
            } else {
                std::mem::take(&mut *queued)
            }
        };
        let mut batch = PendingBatch {
            events,
            ..PendingBatch::default()
        };
        for agent in agents {
            let mut live = agent.live.lock();
            live.dirty = false;
            let fields = live.row_fields();
            match live.last_seen_at {
                Some(last_seen_at) if fields == live.written => {
                    batch.seen.push(SeenWrite {
                        agent_id: agent.id,
                        last_seen_at,
                        reported_health: fields.reported,
                        updated_at: live.updated_at,
                    });
                    drop(live);
                    batch.seen_agents.push(agent);
                }
                _ => {
                    batch.writes.push(LivenessWrite {
                        agent_id: agent.id,
                        last_seen_at: live.last_seen_at,
                        reported_health: fields.reported,
                        own_token_used: fields.own_token_used,
                        updated_at: live.updated_at,
                        checkin: fields.checkin,
                    });
                    drop(live);
                    batch.written.push(agent);
                    batch.written_fields.push(fields);
                }
            }
        }
        batch
    }

    /// Notes that a batch was written: the row fields it wrote are what the rows hold.
    pub fn confirm_written(&self, batch: &PendingBatch) {
        for (agent, fields) in batch.written.iter().zip(&batch.written_fields) {
            agent.live.lock().written = *fields;
        }
    }

    /// Puts a batch that could not be written back in front of the queue.
    pub fn restore_pending(&self, batch: PendingBatch) {
        for agent in batch.written.iter().chain(&batch.seen_agents) {
            let mut live = agent.live.lock();
            if !live.removed {
                self.mark_dirty(agent, &mut live);
            }
        }
        let mut events = self.events.lock();
        let newer = std::mem::replace(&mut *events, batch.events);
        events.extend(newer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_domain::agent::{AgentName, HeartbeatConfig};
    use mc_domain::ids::GatewayId;

    fn agent(tolerance: u32) -> Agent {
        Agent {
            id: AgentId::new(),
            board_id: None,
            gateway_id: GatewayId::new(),
            name: AgentName::parse("a", "name").unwrap(),
            is_board_lead: false,
            is_mc_agent: true,
            gateway_agent_id: None,
            workspace_path: None,
            openclaw_session_id: None,
            heartbeat_config: HeartbeatConfig {
                interval_seconds: 1,
                missing_tolerance: tolerance,
            },
            identity_profile: None,
            identity_template: None,
            soul_template: None,
            last_provision_error: None,
            last_seen_at: None,
            reported_health: None,
            published_status: AgentStatus::Provisioning,
            enrolled_via: None,
            own_token_used: false,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    fn event_types(batch: &PendingBatch) -> Vec<&'static str> {
        batch
            .events
            .iter()
            .map(|e| e.activity.event_type.as_str())
            .collect()
    }

    #[test]
    fn first_heartbeat_then_silence_then_return_make_three_events() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        let status = registry.heartbeat(&live, None, t0).status;
        assert_eq!(status, AgentStatus::Healthy);
        // Before the deadline nothing happens; after it, exactly one offline event.
        assert_eq!(registry.expire_deadlines(t0.plus_seconds(10)), 0);
        assert_eq!(registry.expire_deadlines(t0.plus_millis(10_001)), 1);
        assert_eq!(registry.expire_deadlines(t0.plus_seconds(60)), 0);
        let status = registry.heartbeat(&live, None, t0.plus_seconds(61)).status;
        assert_eq!(status, AgentStatus::Healthy);
        let batch = registry.take_pending();
        assert_eq!(
            event_types(&batch),
            ["agent.healthy", "agent.offline", "agent.healthy"]
        );
        assert_eq!(batch.writes.len(), 1);
    }

    #[test]
    fn heartbeats_push_the_deadline_without_touching_the_index() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.heartbeat(&live, None, t0.plus_seconds(8));
        assert_eq!(registry.deadlines.lock().len(), 1);
        assert_eq!(registry.expire_deadlines(t0.plus_seconds(11)), 0);
        assert_eq!(registry.expire_deadlines(t0.plus_millis(18_001)), 1);
    }

    #[test]
    fn restart_grace_keeps_a_silent_agent_alive_for_one_tolerance() {
        let mut stored = agent(10);
        stored.last_seen_at = Some(Timestamp::from_millis(0));
        stored.reported_health = Some(ReportedHealth::Healthy);
        stored.published_status = AgentStatus::Healthy;
        let start = Timestamp::from_millis(1_000_000);
        let registry = Registry::load(
            vec![StoredAgent {
                agent: stored,
                token_digest: None,
                checkin: None,
            }],
            Vec::new(),
            start,
        );
        assert_eq!(registry.expire_deadlines(start.plus_seconds(9)), 0);
        assert_eq!(registry.expire_deadlines(start.plus_millis(10_001)), 1);
    }

    #[test]
    fn a_heartbeat_after_the_wake_ends_the_wait_and_its_deadline_passes_quietly() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.job_queued(&live, 1, JobInProgress::Create);
        assert_eq!(live.view(t0).status, AgentStatus::Provisioning);
        registry.job_finished(&live, 1, Some((t0, t0.plus_seconds(1))), None, t0);
        assert_eq!(live.view(t0).status, AgentStatus::Provisioning);
        registry.heartbeat(&live, None, t0.plus_millis(500));
        assert!(registry.due_checkins(t0.plus_seconds(2)).is_empty());
        assert_eq!(live.view(t0.plus_seconds(2)).status, AgentStatus::Healthy);
    }

    #[test]
    fn an_agent_that_heartbeated_during_its_job_awaits_no_check_in() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.job_queued(&live, 1, JobInProgress::Update);
        registry.heartbeat(&live, None, t0.plus_millis(10));
        assert_eq!(live.view(t0).status, AgentStatus::Updating);
        registry.job_finished(&live, 1, Some((t0, t0.plus_seconds(1))), None, t0);
        assert_eq!(live.live.lock().checkin, None);
        assert!(registry.due_checkins(t0.plus_seconds(2)).is_empty());
    }

    #[test]
    fn an_unanswered_wait_comes_due_once_per_wake_and_giving_up_is_one_offline_event() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.job_queued(&live, 1, JobInProgress::Create);
        registry.job_finished(&live, 1, Some((t0, t0.plus_seconds(1))), None, t0);
        assert!(registry.due_checkins(t0.plus_millis(999)).is_empty());
        let due = registry.due_checkins(t0.plus_seconds(1));
        assert_eq!(due.iter().map(|d| d.wakes).collect::<Vec<_>>(), [1]);
        assert!(registry.rewoken(&live, 2, t0.plus_seconds(2), None));
        assert!(registry.due_checkins(t0.plus_millis(1500)).is_empty());
        assert_eq!(registry.due_checkins(t0.plus_seconds(2))[0].wakes, 2);
        assert!(registry.give_up_checkin(&live, "never checked in", t0.plus_seconds(2)));
        assert!(!registry.give_up_checkin(&live, "twice", t0.plus_seconds(2)));
        assert_eq!(live.view(t0.plus_seconds(2)).status, AgentStatus::Offline);
        let batch = registry.take_pending();
        assert_eq!(event_types(&batch), ["agent.offline"]);
        assert!(
            batch.events[0]
                .activity
                .message
                .contains("never checked in")
        );
        assert_eq!(batch.writes[0].checkin, Some(Checkin::GaveUp));
    }

    #[test]
    fn once_its_row_is_written_a_plain_heartbeat_goes_to_the_log_and_a_change_to_the_row() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        let first = registry.take_pending();
        assert_eq!((first.writes.len(), first.seen.len()), (1, 0));
        // Not written yet (the batch failed): the row fields are still owed.
        registry.restore_pending(first);
        registry.heartbeat(&live, None, t0.plus_seconds(1));
        let retried = registry.take_pending();
        assert_eq!((retried.writes.len(), retried.seen.len()), (1, 0));
        registry.confirm_written(&retried);

        registry.heartbeat(&live, None, t0.plus_seconds(2));
        let plain = registry.take_pending();
        assert!(plain.writes.is_empty());
        assert_eq!(
            plain.seen,
            [SeenWrite {
                agent_id: live.id(),
                last_seen_at: t0.plus_seconds(2),
                reported_health: Some(ReportedHealth::Healthy),
                updated_at: t0.plus_seconds(2),
            }]
        );
        registry.confirm_written(&plain);

        registry.heartbeat(&live, Some(ReportedHealth::Degraded), t0.plus_seconds(3));
        let changed = registry.take_pending();
        assert_eq!((changed.writes.len(), changed.seen.len()), (1, 0));
        assert_eq!(
            changed.writes[0].reported_health,
            Some(ReportedHealth::Degraded)
        );
    }

    #[test]
    fn a_replaced_token_stops_resolving() {
        let registry = Registry::default();
        let old = TokenDigest::of("old");
        let live = registry.insert(agent(10), Some(old));
        registry.replace_token(&live, TokenDigest::of("new"));
        assert!(registry.by_token(&old).is_none());
        assert!(registry.by_token(&TokenDigest::of("new")).is_some());
        registry.remove(live.id());
        assert!(registry.by_token(&TokenDigest::of("new")).is_none());
    }

    fn stored(agent: Agent, digest: Option<TokenDigest>) -> StoredAgent {
        StoredAgent {
            agent,
            token_digest: digest,
            checkin: None,
        }
    }

    #[tokio::test]
    async fn a_burst_of_transitions_is_written_in_bounded_batches_in_order() {
        let registry = Registry::default();
        let t0 = Timestamp::from_millis(1_000_000);
        let agents: Vec<_> = (0..MAX_BATCH_EVENTS + 10)
            .map(|_| registry.insert(agent(10), None))
            .collect();
        for live in &agents {
            registry.heartbeat(live, None, t0);
        }
        while !registry.take_pending().is_empty() {}
        let late = t0.plus_millis(10_001);
        let due = registry.take_due(late);
        assert_eq!(registry.expire(due, late, true), agents.len());
        let mut expected: Vec<AgentId> = Vec::new();
        for event in &registry.events.lock()[..] {
            expected.push(event.activity.agent_id.unwrap());
        }
        registry.flush_wanted().await;

        let first = registry.take_pending();
        assert_eq!(first.events.len(), MAX_BATCH_EVENTS);
        // The flusher is told at once that more wait.
        tokio::time::timeout(std::time::Duration::from_secs(1), registry.flush_wanted())
            .await
            .expect("the rest are announced");
        let second = registry.take_pending();
        assert_eq!(second.events.len(), 10);
        let written: Vec<AgentId> = first
            .events
            .iter()
            .chain(&second.events)
            .map(|e| e.activity.agent_id.unwrap())
            .collect();
        assert_eq!(written, expected);
        assert!(registry.take_pending().is_empty());
    }

    #[test]
    fn a_replica_that_does_not_lead_records_no_offline_and_keeps_watching() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.take_pending();
        let late = t0.plus_millis(10_001);
        let due = registry.take_due(late);
        assert_eq!(registry.expire(due, late, false), 0);
        assert!(registry.take_pending().events.is_empty());
        // Still watched: once it leads, the next pass records the transition.
        assert!(registry.take_due(late).is_empty(), "not before the recheck");
        let later = late.plus_millis(FOLLOWER_RECHECK_MS + 1);
        let due = registry.take_due(later);
        assert_eq!(registry.expire(due, later, true), 1);
        let batch = registry.take_pending();
        assert_eq!(event_types(&batch), ["agent.offline"]);
        let transition = batch.events[0].transition.unwrap();
        assert_eq!(
            (transition.from, transition.to),
            (AgentStatus::Healthy, AgentStatus::Offline)
        );
    }

    #[test]
    fn a_heartbeat_another_replica_received_reschedules_instead_of_offline() {
        let registry = Registry::default();
        let mut settings = agent(10);
        let live = registry.insert(settings.clone(), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.take_pending();
        let late = t0.plus_millis(10_001);
        let due = registry.take_due(late);
        settings.last_seen_at = Some(t0.plus_seconds(8));
        settings.reported_health = Some(ReportedHealth::Degraded);
        registry.refresh(&[stored(settings, None)]);
        assert_eq!(registry.expire(due, late, true), 0);
        assert_eq!(live.view(late).last_seen_at, Some(t0.plus_seconds(8)));
        assert_eq!(registry.expire_deadlines(t0.plus_millis(18_001)), 1);
    }

    #[test]
    fn followed_transitions_move_forward_only_and_tell_when_the_agent_was_seen() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.follow_transition(live.id(), 7, (AgentStatus::Healthy, t0), t0);
        assert_eq!(live.view(t0).status, AgentStatus::Healthy);
        assert_eq!(live.view(t0).last_seen_at, Some(t0));
        registry.follow_transition(live.id(), 5, (AgentStatus::Offline, t0), t0);
        assert_eq!(live.live.lock().published, AgentStatus::Healthy, "older");
        let t11 = t0.plus_seconds(11);
        registry.follow_transition(live.id(), 9, (AgentStatus::Offline, t11), t11);
        assert_eq!(live.live.lock().published, AgentStatus::Offline);
        // Already published offline: its deadline passes without another event.
        assert_eq!(registry.expire_deadlines(t0.plus_seconds(12)), 0);
        assert!(registry.take_pending().events.is_empty());
    }

    #[test]
    fn a_followed_offline_that_a_heartbeat_here_contradicts_is_published_back_at_once() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.take_pending();
        // This replica received a heartbeat just before the deadline; the leader read the
        // row before this replica wrote it, and recorded the agent offline.
        let t9 = t0.plus_seconds(9);
        registry.heartbeat(&live, None, t9);
        registry.take_pending();
        let t10 = t0.plus_millis(10_050);
        registry.follow_transition(live.id(), 7, (AgentStatus::Offline, t10), t10);
        let batch = registry.take_pending();
        assert_eq!(event_types(&batch), ["agent.healthy"]);
        assert_eq!(
            batch.events[0].transition.map(|t| (t.from, t.to)),
            Some((AgentStatus::Offline, AgentStatus::Healthy))
        );
        assert_eq!(live.view(t10).status, AgentStatus::Healthy);
        // An agent really silent since stays offline, with no event.
        let quiet = registry.insert(agent(10), None);
        registry.heartbeat(&quiet, None, t0);
        registry.take_pending();
        registry.follow_transition(quiet.id(), 8, (AgentStatus::Offline, t10), t10);
        assert!(registry.take_pending().events.is_empty());
        assert_eq!(quiet.view(t10).status, AgentStatus::Offline);
    }

    #[tokio::test]
    async fn a_heartbeat_close_to_its_deadline_asks_for_an_immediate_write() {
        let wanted = |registry: &Registry| {
            let registry = registry.flush_wanted();
            futures::FutureExt::now_or_never(registry).is_some()
        };
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        while !registry.take_pending().is_empty() {}
        let _ = wanted(&registry);
        // Far from its deadline (t0 + 10 s): written at the next tick.
        registry.heartbeat(&live, None, t0.plus_seconds(5));
        assert!(!wanted(&registry));
        // Within a second of it (t0 + 5 s + 10 s): written now.
        registry.heartbeat(&live, None, t0.plus_millis(14_200));
        assert!(wanted(&registry));
    }

    #[test]
    fn a_refused_transition_adopts_the_stored_status_and_moves_on_from_it() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.take_pending();
        // Another replica had recorded the agent offline: this one saw it heartbeat.
        registry.adopt_published(live.id(), AgentStatus::Offline, t0);
        let batch = registry.take_pending();
        assert_eq!(event_types(&batch), ["agent.healthy"]);
        assert_eq!(
            batch.events[0].transition.map(|t| t.from),
            Some(AgentStatus::Offline)
        );
    }

    #[test]
    fn an_agent_from_the_database_is_added_once_and_takes_its_new_token() {
        let registry = Registry::default();
        let settings = agent(10);
        let first = registry.upsert(stored(settings.clone(), Some(TokenDigest::of("a"))));
        let again = registry.insert(settings.clone(), Some(TokenDigest::of("a")));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(registry.len(), 1);
        registry.upsert(stored(settings, Some(TokenDigest::of("b"))));
        assert!(registry.by_token(&TokenDigest::of("a")).is_none());
        assert!(registry.by_token(&TokenDigest::of("b")).is_some());
    }

    #[test]
    fn the_leader_adopts_stored_waits_unless_it_knows_better() {
        let registry = Registry::default();
        let t0 = Timestamp::from_millis(1_000_000);
        let awaiting = |wakes| Checkin::Awaiting {
            deadline: t0,
            wakes,
        };
        let with_wait = |settings: &Agent, wakes| StoredAgent {
            agent: settings.clone(),
            token_digest: None,
            checkin: Some(awaiting(wakes)),
        };
        // Unknown here (started by another replica): adopted with its wakes.
        let elsewhere = agent(10);
        // Woken again here since: this replica's wait is newer.
        let rewoken = agent(10);
        let local = registry.insert(rewoken.clone(), None);
        local.live.lock().checkin = Some(Checkin::Awaiting {
            deadline: t0.plus_seconds(30),
            wakes: 2,
        });
        // Checked in here, not yet written behind.
        let checked_in = agent(10);
        let seen = registry.insert(checked_in.clone(), None);
        registry.heartbeat(&seen, None, t0);
        let adopted = registry.adopt_due_checkins(
            vec![
                with_wait(&elsewhere, 1),
                with_wait(&rewoken, 1),
                with_wait(&checked_in, 1),
            ],
            &[],
        );
        let ids: Vec<AgentId> = adopted.iter().map(|due| due.agent.id()).collect();
        assert_eq!(ids, [elsewhere.id]);
        assert!(adopted[0].agent.awaits_checkin());
        assert_eq!(adopted[0].wakes, 1);
        // Already taken from the in-memory index in this pass: not twice.
        let again = registry.adopt_due_checkins(vec![with_wait(&elsewhere, 1)], &adopted);
        assert!(again.is_empty());
    }

    #[test]
    fn a_job_noted_after_it_ended_changes_nothing() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        // The runner claimed and finished job 7 before its queueing was noted.
        registry.job_finished(&live, 7, None, None, t0);
        registry.job_queued(&live, 7, JobInProgress::Update);
        registry.follow_job_queued(live.id(), 7, JobInProgress::Update);
        assert_eq!(live.job_in_progress(), None);
        assert_eq!(live.view(t0).status, AgentStatus::Healthy);
        // Another job that ended does not hide one whose id is lower (committed later).
        registry.job_finished(&live, 9, None, None, t0);
        registry.follow_job_queued(live.id(), 8, JobInProgress::Update);
        registry.follow_job_queued(live.id(), 8, JobInProgress::Update);
        assert_eq!(live.live.lock().jobs, [(8, JobInProgress::Update)]);
        assert_eq!(live.view(t0).status, AgentStatus::Updating);
    }

    #[test]
    fn a_job_another_replica_queued_and_ran_shows_here_and_its_end_brings_the_stored_agent() {
        let registry = Registry::default();
        let settings = agent(10);
        let live = registry.insert(settings.clone(), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.take_pending();
        registry.follow_job_queued(live.id(), 3, JobInProgress::Create);
        assert_eq!(live.view(t0).status, AgentStatus::Provisioning);
        registry.follow_job_queued(live.id(), 4, JobInProgress::Update);
        assert_eq!(live.view(t0).status, AgentStatus::Updating);

        // Job 3 ended elsewhere: placed, woken, awaiting its check-in (stored first).
        let mut placed = settings;
        placed.gateway_agent_id = Some("mc-1".into());
        placed.last_provision_error = Some("the agent did not start".into());
        let wait = Checkin::Awaiting {
            deadline: t0.plus_seconds(30),
            wakes: 1,
        };
        registry.follow_job_finished(
            StoredAgent {
                agent: placed,
                token_digest: None,
                checkin: Some(wait),
            },
            3,
        );
        let profile = live.profile();
        assert_eq!(profile.gateway_agent_id.as_deref(), Some("mc-1"));
        assert_eq!(
            profile.last_provision_error.as_deref(),
            Some("the agent did not start")
        );
        assert_eq!(live.live.lock().checkin, Some(wait));
        assert_eq!(
            live.view(t0).status,
            AgentStatus::Updating,
            "job 4 still runs"
        );
        registry.follow_job_finished(stored(live.profile().as_ref().clone(), None), 4);
        assert_eq!(
            live.view(t0).status,
            AgentStatus::Offline,
            "the stored agent has no wait any more"
        );
        // A follower starts no wake cycle of its own and records nothing.
        assert!(registry.due_checkins(t0.plus_seconds(60)).is_empty());
        assert!(registry.take_pending().is_empty());
    }

    #[test]
    fn a_heartbeat_this_replica_saw_after_the_stored_one_wins_over_the_stored_wait() {
        let registry = Registry::default();
        let settings = agent(10);
        let live = registry.insert(settings.clone(), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.heartbeat(&live, None, t0);
        registry.follow_job_finished(
            StoredAgent {
                agent: settings,
                token_digest: None,
                checkin: Some(Checkin::Awaiting {
                    deadline: t0.plus_seconds(30),
                    wakes: 1,
                }),
            },
            1,
        );
        assert_eq!(live.live.lock().checkin, None);
        assert_eq!(live.view(t0).status, AgentStatus::Healthy);
    }

    #[test]
    fn a_transition_with_a_reason_carries_it_and_a_follower_shows_it_as_the_error() {
        let leader = Registry::default();
        let settings = agent(10);
        let live = leader.insert(settings.clone(), None);
        let t0 = Timestamp::from_millis(1_000_000);
        leader.job_queued(&live, 1, JobInProgress::Create);
        leader.job_finished(&live, 1, Some((t0, t0.plus_seconds(1))), None, t0);
        assert!(leader.give_up_checkin(&live, "never checked in", t0.plus_seconds(2)));
        let batch = leader.take_pending();
        let data = batch.events[0].activity.data.clone().unwrap();
        assert_eq!(
            data,
            json!({"from": "provisioning", "to": "offline", "reason": "never checked in"})
        );

        let follower = Registry::default();
        let there = follower.insert(settings, None);
        follower.follow_provision_error(there.id(), "never checked in");
        assert_eq!(
            there.profile().last_provision_error.as_deref(),
            Some("never checked in")
        );
        assert!(follower.take_pending().is_empty());
    }

    #[test]
    fn a_wake_sent_again_is_recorded_in_the_batch_that_stores_the_new_wait() {
        let registry = Registry::default();
        let live = registry.insert(agent(10), None);
        let t0 = Timestamp::from_millis(1_000_000);
        registry.job_queued(&live, 1, JobInProgress::Create);
        registry.job_finished(&live, 1, Some((t0, t0.plus_seconds(1))), None, t0);
        registry.take_pending();
        let sent = mc_domain::activity::wakeup_sent(
            live.id(),
            None,
            "a",
            2,
            t0.plus_seconds(2),
            t0.plus_seconds(1),
        );
        assert!(registry.rewoken(&live, 2, t0.plus_seconds(2), Some(sent)));
        let batch = registry.take_pending();
        assert_eq!(event_types(&batch), ["agent.wakeup.sent"]);
        assert_eq!(batch.events[0].transition, None, "not a transition");
        assert_eq!(
            batch.writes[0].checkin,
            Some(Checkin::Awaiting {
                deadline: t0.plus_seconds(2),
                wakes: 2
            })
        );
        assert_eq!(registry.transitions().iter().sum::<u64>(), 0);
    }

    #[test]
    fn resyncing_the_jobs_takes_the_stored_list_as_it_is() {
        let registry = Registry::default();
        let a = registry.insert(agent(10), None);
        let b = registry.insert(agent(10), None);
        registry.follow_job_queued(a.id(), 1, JobInProgress::Update);
        registry.sync_jobs(&[(b.id(), 2, JobInProgress::Delete)]);
        assert_eq!(a.job_in_progress(), None, "ended while this replica lagged");
        assert_eq!(b.job_in_progress(), Some(JobInProgress::Delete));
    }
}
