//! Provisioning: putting agents onto their OpenClaw gateways as durable jobs.
//!
//! - [`request`] queues a create, update or delete job for an agent on a managed gateway
//!   (unmanaged gateways are never contacted) and wakes the runner.
//! - [`runner`] claims due jobs under a lease, runs them and records the outcome:
//!   transient gateway errors are retried with capped exponential backoff and jitter,
//!   permanent ones are recorded at once in the agent's `last_provision_error`.
//! - [`plan`] is what a job does on the gateway, per gateway generation.
//! - [`templates`] renders the workspace files.
//! - [`sync`] rewrites every agent's files on one gateway (a template sync).
//!
//! The agent token: provisioning writes the plaintext token into the workspace, and only
//! its digest is stored. A token minted when the agent is created is handed to the runner
//! in memory ([`Provisioner::hand_token`]); a job that finds none (an update, or any job
//! after a restart) mints a fresh one through the rotate path, which records
//! `agent.token_rotated`. Plaintext tokens never reach the database.

pub mod plan;
pub mod runner;
pub mod sync;
pub mod templates;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mc_domain::agent::Agent;
use mc_domain::gateway::Gateway;
use mc_domain::ids::{AgentId, GatewayId};
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_gateway::{GatewayConfig, GatewayPool};
use mc_store::{NewProvisionJob, ProvisionAction, ProvisionJob};
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::templates::Templates;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// In-memory parts of provisioning: tokens waiting for their job, the runner's wake-up
/// and the workspace templates in effect.
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
}

impl Provisioner {
    /// A provisioner rendering workspace files with `templates`.
    pub fn new(templates: Templates) -> Self {
        Self {
            templates,
            ..Self::default()
        }
    }

    /// Keeps `token` (just minted for `agent`) for the agent's next job.
    pub fn hand_token(&self, agent: AgentId, token: Secret) {
        self.tokens.lock().insert(agent, token);
    }

    /// The token kept for `agent`, if any.
    fn token_of(&self, agent: AgentId) -> Option<Secret> {
        self.tokens.lock().get(&agent).cloned()
    }

    /// Forgets the token kept for `agent`.
    fn forget_token(&self, agent: AgentId) {
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

/// Queues `action` for `agent` when its gateway is managed and Mission Control created
/// the agent; `token` is the plaintext token just minted for it, if any.
pub async fn request(
    state: &AppState,
    agent: &Agent,
    action: ProvisionAction,
    token: Option<&Secret>,
) -> ApiResult<()> {
    if !agent.is_mc_agent {
        return Ok(());
    }
    let Some(gateway) = state.store.gateway(agent.gateway_id).await? else {
        return Ok(());
    };
    if !gateway.url.is_managed() {
        return Ok(());
    }
    let placement = plan::placement_of(agent, &gateway);
    let delete = action == ProvisionAction::Delete;
    state
        .store
        .enqueue_provision_job(&NewProvisionJob {
            agent_id: agent.id,
            gateway_id: gateway.id,
            action,
            gateway_agent_id: delete.then(|| placement.gateway_agent_id.clone()),
            session_key: delete.then(|| placement.session_key.clone()),
            requested_at: Timestamp::now(),
        })
        .await?;
    match token {
        Some(token) if !delete => state.provisioner.hand_token(agent.id, token.clone()),
        _ if delete => state.provisioner.forget_token(agent.id),
        _ => {}
    }
    state.provisioner.notify();
    Ok(())
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
