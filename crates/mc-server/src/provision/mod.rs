//! Provisioning: putting agents onto their OpenClaw gateways as durable jobs.
//!
//! - [`request`] queues a create, update or delete job for an agent on a managed gateway
//!   (unmanaged gateways are never contacted) and wakes the runner.
//! - [`runner`] claims due jobs under a lease, runs them and records the outcome:
//!   transient gateway errors are retried with capped exponential backoff and jitter,
//!   permanent ones are recorded at once in the agent's `last_provision_error`.
//! - [`plan`] is what a job does on the gateway, per gateway generation.
//! - [`slots`] limits the jobs talking to one gateway at once, retries first.
//! - [`templates`] renders the workspace files.
//! - [`sync`] rewrites every agent's files on one gateway (a template sync).
//! - [`token`] decides which token a workspace is written with (jobs and template sync).
//! - [`checkin`] bounds the wait after a wake: an agent that does not heartbeat within
//!   the check-in timeout is woken again, up to [`MAX_WAKES`] wakes in all, then it is
//!   offline with `last_provision_error` saying why.
//!
//! Every lifecycle state is bounded. A job shows as `provisioning` (a never-seen agent),
//! `updating` or `deleting` while it is queued or running (a queued job has the runner
//! behind it), and a job gives up once its bound ([`LifecycleBounds::job_timeout`]) has
//! passed since its first attempt (waiting in the queue behind other jobs costs none of
//! it); a create or update that woke the agent is followed by the check-in deadline. A delete that gives up
//! still removes the agent from Mission Control, recording in the `agent.deleted` event
//! (and the job) that the gateway may still have it.
//!
//! The agent token: provisioning writes the plaintext token into the workspace, and only
//! its digest is stored. A token minted when the agent is created, or rotated at an
//! operator's request, is handed to the runner in memory ([`Provisioner::hand_token`]). A
//! job that finds none (an update, or any job after a restart) reads the agent's
//! credentials file back from the gateway first and keeps the token there while it is the
//! agent's current one ([`token::keep_or_mint`]); only a file without it mints a fresh one
//! through the rotate path, which records `agent.token_rotated`. A gateway failing the job
//! therefore never takes away the agent's working token. Plaintext tokens never reach the
//! database.

pub mod checkin;
pub mod plan;
pub mod runner;
pub mod slots;
pub mod sync;
pub mod templates;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mc_domain::agent::Agent;
use mc_domain::gateway::Gateway;
use mc_domain::ids::{AgentId, GatewayId};
pub use mc_domain::liveness::MAX_WAKES;
use mc_domain::liveness::{DEFAULT_CHECKIN_TIMEOUT_SECONDS, JobInProgress};
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_gateway::{GatewayConfig, GatewayGeneration, GatewayPool};
use mc_store::{NewProvisionJob, ProvisionAction, ProvisionJob};
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::slots::{GatewaySlots, SlotPermit, Turn};
use self::templates::Templates;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// How long each lifecycle state may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleBounds {
    /// How long an agent has after each wake to check in (heartbeat).
    pub checkin_timeout: Duration,
    /// How long a provisioning job may keep retrying, from its first attempt.
    pub job_timeout: Duration,
}

impl Default for LifecycleBounds {
    fn default() -> Self {
        Self {
            checkin_timeout: Duration::from_secs(u64::from(DEFAULT_CHECKIN_TIMEOUT_SECONDS)),
            job_timeout: Duration::from_secs(300),
        }
    }
}

/// In-memory parts of provisioning: tokens waiting for their job, the runner's wake-up,
/// the workspace templates in effect and the lifecycle bounds.
#[derive(Debug, Default)]
pub struct Provisioner {
    tokens: Mutex<HashMap<AgentId, Secret>>,
    queued: Notify,
    /// The workspace templates (compiled in, perhaps overridden from a directory).
    pub templates: Templates,
    /// Held while checking for and creating a gateway's main agent.
    pub main_agent_lock: tokio::sync::Mutex<()>,
    /// Gateways with a template sync running.
    syncing: Mutex<HashSet<GatewayId>>,
    /// How long each lifecycle state may last.
    pub bounds: LifecycleBounds,
    /// Per gateway, the slots its running jobs hold.
    gateway_slots: Mutex<HashMap<GatewayId, Arc<GatewaySlots>>>,
}

impl Provisioner {
    /// A provisioner rendering workspace files with `templates`, within `bounds`.
    pub fn new(templates: Templates, bounds: LifecycleBounds) -> Self {
        Self {
            templates,
            bounds,
            ..Self::default()
        }
    }

    /// Keeps `token` (just minted for `agent`) for the agent's next job; returns the token
    /// it replaces, if any.
    pub fn hand_token(&self, agent: AgentId, token: Secret) -> Option<Secret> {
        self.tokens.lock().insert(agent, token)
    }

    /// Puts back `previous` (what [`Provisioner::hand_token`] returned) when the token
    /// handed over it was never stored.
    pub fn restore_token(&self, agent: AgentId, previous: Option<Secret>) {
        let mut tokens = self.tokens.lock();
        match previous {
            Some(token) => tokens.insert(agent, token),
            None => tokens.remove(&agent),
        };
    }

    /// Forgets the token kept for `agent` when it is one of `spent` (the tokens a job that
    /// ended started with or wrote); a token handed meanwhile, for a later job, stays.
    pub fn forget_spent_token(&self, agent: AgentId, spent: &[Option<&Secret>]) {
        let mut tokens = self.tokens.lock();
        if tokens
            .get(&agent)
            .is_some_and(|held| spent.contains(&Some(held)))
        {
            tokens.remove(&agent);
        }
    }

    /// The token kept for `agent`, if any.
    fn token_of(&self, agent: AgentId) -> Option<Secret> {
        self.tokens.lock().get(&agent).cloned()
    }

    /// Forgets the token kept for `agent`.
    pub fn forget_token(&self, agent: AgentId) {
        self.tokens.lock().remove(&agent);
    }

    /// Marks a template sync of `gateway` as running until the guard drops; `None` when
    /// one already runs.
    pub fn begin_sync(self: &Arc<Self>, gateway: GatewayId) -> Option<SyncGuard> {
        self.syncing.lock().insert(gateway).then(|| SyncGuard {
            provisioner: Arc::clone(self),
            gateway,
        })
    }

    /// Waits for a free job slot on `gateway`: at most as many jobs as its generation
    /// allows run on one gateway at once (the default generation's limit until the first
    /// handshake tells which one it is); retries go before first attempts ([`slots`]).
    pub async fn gateway_slot(
        &self,
        gateway: GatewayId,
        generation: Option<GatewayGeneration>,
        turn: Turn,
    ) -> SlotPermit {
        let slots = self
            .gateway_slots
            .lock()
            .entry(gateway)
            .or_insert_with(|| {
                GatewaySlots::new(
                    generation
                        .unwrap_or(GatewayGeneration::V4)
                        .provisioning_concurrency(),
                )
            })
            .clone();
        slots.acquire(turn).await
    }

    /// Wakes the runner to look at the queue.
    pub fn notify(&self) {
        self.queued.notify_one();
    }
}

/// A running template sync of one gateway; dropping it ends the sync.
#[derive(Debug)]
pub struct SyncGuard {
    provisioner: Arc<Provisioner>,
    gateway: GatewayId,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        self.provisioner.syncing.lock().remove(&self.gateway);
    }
}

/// Starts, restarts or stops the connection to `gateway` to match its settings: managed
/// gateways (with a URL) are connected, unmanaged ones never are.
pub fn connect_gateway(pool: &GatewayPool, gateway: &Gateway) {
    match gateway.url.as_deref() {
        Some(url) => {
            pool.ensure(
                gateway.id,
                url,
                gateway.token.clone(),
                gateway.allow_insecure_tls,
            );
        }
        None => pool.remove(gateway.id),
    }
}

/// The connection defaults the server uses (URL and token are per gateway).
pub fn default_gateway_connection() -> GatewayConfig {
    GatewayConfig::new("", None)
}

/// How a job of `action` shows in the agent's status.
pub const fn job_kind(action: ProvisionAction) -> JobInProgress {
    match action {
        ProvisionAction::Create => JobInProgress::Create,
        ProvisionAction::Update => JobInProgress::Update,
        ProvisionAction::Delete => JobInProgress::Delete,
    }
}

/// `now` plus `duration`.
pub fn after(now: Timestamp, duration: Duration) -> Timestamp {
    now.plus_millis(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// The job that `action` needs for `agent`: one when its gateway is managed and Mission
/// Control created the agent, none otherwise (unmanaged gateways are never contacted).
pub async fn job_for(
    state: &AppState,
    agent: &Agent,
    action: ProvisionAction,
) -> ApiResult<Option<NewProvisionJob>> {
    let gateway = match agent.is_mc_agent {
        true => state.store.gateway(agent.gateway_id).await?,
        false => None,
    };
    Ok(gateway.and_then(|gateway| job_on(agent, &gateway, action)))
}

/// Like [`job_for`], with the agent's gateway already read (`gateway` is the one
/// `agent.gateway_id` names).
pub fn job_on(
    agent: &Agent,
    gateway: &Gateway,
    action: ProvisionAction,
) -> Option<NewProvisionJob> {
    if !agent.is_mc_agent || !gateway.url.is_managed() {
        return None;
    }
    let placement = plan::placement_of(agent, gateway);
    let delete = action == ProvisionAction::Delete;
    Some(NewProvisionJob {
        agent_id: agent.id,
        gateway_id: gateway.id,
        action,
        gateway_agent_id: delete.then(|| placement.gateway_agent_id.clone()),
        session_key: delete.then(|| placement.session_key.clone()),
        requested_at: Timestamp::now(),
    })
}

/// Records that job `job` (of `action`) was stored for `agent`: keeps `token` (the
/// plaintext token just minted for it, if any) for the job, shows the job in the agent's
/// status and wakes the runner.
pub fn queued(
    state: &AppState,
    agent: &Agent,
    job: i64,
    action: ProvisionAction,
    token: Option<&Secret>,
) {
    match token {
        Some(token) if action != ProvisionAction::Delete => {
            state.provisioner.hand_token(agent.id, token.clone());
        }
        _ if action == ProvisionAction::Delete => state.provisioner.forget_token(agent.id),
        _ => {}
    }
    if let Some(live) = state.registry.get(agent.id) {
        state.registry.job_queued(&live, job, job_kind(action));
    }
    state.provisioner.notify();
}

/// Gives a new agent that no job provisions (its gateway is unmanaged) the check-in
/// timeout for its first heartbeat, so that it never reads `provisioning` without a bound.
pub fn await_first_checkin(state: &AppState, agent: &Agent) {
    if let Some(live) = state.registry.get(agent.id) {
        let deadline = after(Timestamp::now(), state.provisioner.bounds.checkin_timeout);
        state.registry.await_first_checkin(&live, deadline);
    }
}

/// Queues `action` for `agent` when [`job_for`] says it needs a job; `token` is the
/// plaintext token just minted for it, if any. Returns whether a job was queued (a delete
/// is not when the agent no longer exists). A new
/// agent that gets no job [awaits its first check-in](await_first_checkin).
pub async fn request(
    state: &AppState,
    agent: &Agent,
    action: ProvisionAction,
    token: Option<&Secret>,
) -> ApiResult<bool> {
    let Some(job) = job_for(state, agent, action).await? else {
        if action == ProvisionAction::Create {
            await_first_checkin(state, agent);
        }
        return Ok(false);
    };
    let id = match action {
        // Queued only while the agent exists, in one transaction with that check.
        ProvisionAction::Delete => match state.store.queue_agent_delete(&job).await? {
            Some(id) => id,
            None => return Ok(false),
        },
        ProvisionAction::Create | ProvisionAction::Update => {
            state.store.enqueue_provision_job(&job).await?
        }
    };
    queued(state, agent, id, action, token);
    Ok(true)
}

/// Queues a fresh provisioning job for `agent` at an operator's request: a create when it
/// was never placed on its gateway (or its create failed), else an update that rewrites
/// its settings and workspace files. Returns the queued job.
///
/// Refused with 409 for an agent Mission Control did not create (found on a gateway:
/// shown, never adopted) and for an agent on an unmanaged gateway (never contacted).
pub async fn reprovision(state: &AppState, agent: &Agent) -> ApiResult<ProvisionJob> {
    if !agent.is_mc_agent {
        return Err(ApiError::Conflict(format!(
            "agent {} was found on its gateway, not created by Mission Control; \
             Mission Control does not provision agents it did not create",
            agent.name
        )));
    }
    let gateway = state
        .store
        .gateway(agent.gateway_id)
        .await?
        .ok_or(ApiError::NotFound("Gateway not found"))?;
    if !gateway.url.is_managed() {
        return Err(ApiError::Conflict(format!(
            "agent {} is on the unmanaged gateway {} (it has no url): Mission Control never \
             contacts it, so it cannot provision its agents; give the agent its token by hand, \
             or set the gateway's url to manage it",
            agent.name, gateway.name
        )));
    }
    let action = if agent.gateway_agent_id.is_some() {
        ProvisionAction::Update
    } else {
        ProvisionAction::Create
    };
    request(state, agent, action, None).await?;
    state
        .store
        .provision_jobs(agent.id)
        .await?
        .into_iter()
        .filter(|job| job.action == action)
        .max_by_key(|job| job.id)
        .ok_or_else(|| ApiError::Internal("a queued provisioning job is not listed".into()))
}
