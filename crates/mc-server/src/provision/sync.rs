//! Template sync: re-render every agent's workspace files on one gateway and write them
//! again, answering with one result per agent.
//!
//! It runs inside the request, not through the job queue, because its answer is the
//! per-agent outcome; it is bounded instead: the gateway must answer `health` first,
//! within [`HEALTH_LIMIT`] (else 502 and nothing changes), at most [`CONCURRENCY`] agents are synced at once,
//! each within [`AGENT_LIMIT`], and the whole sync within [`SYNC_LIMIT`] (agents not
//! reached by then are reported as failed). Every gateway call has its own request
//! timeout on top; a step failing transiently (a protocol 3 gateway restarts for a few
//! seconds after each config change) is retried a few times within the agent's limit.
//!
//! The token: without `rotate_tokens` the sync keeps the token in the agent's credentials
//! file while it is the agent's current one, and mints a new one only when the file holds
//! none or another ([`super::token`], shared with the provisioning jobs); the result says
//! which. If writing fails after a rotation, the new token is handed to an update job,
//! which keeps retrying until the agent has it.
//!
//! What the sync leaves to the job runner: agents with a provisioning job pending are
//! skipped (that job writes their files), and an agent missing on the gateway is put back
//! by an update job. A managed gateway without its main agent gets one (created and
//! queued for provisioning).

use std::time::Duration;

use futures::StreamExt as _;
use mc_domain::agent::Agent;
use mc_domain::gateway::Gateway;
use mc_domain::token::Secret;
use mc_gateway::{GatewayError, GatewayGeneration, GatewayHandle};
use mc_store::{AgentPlacement, ProvisionAction, ProvisionJobState};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use super::plan::{self, files_to_write};
use super::templates::FileContext;
use super::token::{self, TokenChoice, TokenError};
use crate::error::{ApiError, ApiResult};
use crate::services::gateways::ensure_main_agent;
use crate::state::SharedState;

/// Agents synced at the same time.
pub const CONCURRENCY: usize = 4;

/// The longest one agent's sync may take.
pub const AGENT_LIMIT: Duration = Duration::from_secs(60);

/// The longest a whole sync may take.
pub const SYNC_LIMIT: Duration = Duration::from_secs(120);

/// What the sync did with one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Its files were rendered and written.
    Synced,
    /// The gateway's main agent was missing: it was created and queued for provisioning.
    Created,
    /// An update job was queued to put the agent back on the gateway.
    Queued,
    /// Left alone; `note` says why (e.g. a provisioning job is pending).
    Skipped,
    /// The sync failed for this agent; `error` says why.
    Failed,
}

/// One agent's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentSyncResult {
    /// The agent.
    pub agent_id: Uuid,
    /// Its name.
    pub name: String,
    /// What happened.
    pub outcome: SyncOutcome,
    /// Whether the sync minted a new token (the previous one no longer works).
    pub token_rotated: bool,
    /// Why the token was rotated, the agent skipped or a job queued.
    pub note: Option<String>,
    /// Why the sync failed for this agent.
    pub error: Option<String>,
}

impl AgentSyncResult {
    fn new(agent: &Agent, outcome: SyncOutcome) -> Self {
        Self {
            agent_id: agent.id.as_uuid(),
            name: agent.name.to_string(),
            outcome,
            token_rotated: false,
            note: None,
            error: None,
        }
    }

    fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn with_note_skipped(self, note: &str) -> Self {
        Self {
            outcome: SyncOutcome::Skipped,
            ..self
        }
        .with_note(note)
    }

    fn failed(mut self, error: impl Into<String>) -> Self {
        self.outcome = SyncOutcome::Failed;
        self.error = Some(error.into());
        self
    }
}

/// The wording for an unmanaged gateway (409).
pub const UNMANAGED: &str = "the gateway is unmanaged (no url): Mission Control never contacts it, so it has no workspace files to sync";

/// Syncs every agent's workspace files on `gateway` (see the module documentation).
pub async fn sync_gateway(
    state: &SharedState,
    gateway: &Gateway,
    rotate_tokens: bool,
) -> ApiResult<Vec<AgentSyncResult>> {
    if !gateway.url.is_managed() {
        return Err(ApiError::Conflict(UNMANAGED.to_owned()));
    }
    let _running = state.provisioner.begin_sync(gateway.id).ok_or_else(|| {
        ApiError::Conflict("a template sync of this gateway is already running".to_owned())
    })?;
    super::connect_gateway(&state.gateways, gateway);
    let handle = state.gateways.get(gateway.id).ok_or_else(|| {
        ApiError::BadGateway("the gateway has no connection; nothing was changed".to_owned())
    })?;
    if let Err(error) = answers_health(&handle).await {
        return Err(ApiError::BadGateway(format!(
            "the gateway did not answer, so nothing was changed: {error}"
        )));
    }
    let generation = handle.generation().ok_or_else(|| {
        ApiError::BadGateway("no handshake with the gateway completed; nothing was changed".into())
    })?;
    let deadline = Instant::now() + SYNC_LIMIT;

    let mut results = Vec::new();
    let created = ensure_main_agent(state, gateway).await?;
    if let Some(main) = &created {
        results.push(
            AgentSyncResult::new(&main.profile(), SyncOutcome::Created).with_note(
                "the gateway had no main agent; it was created and queued for provisioning",
            ),
        );
    }
    let mut agents = state.registry.agents_where(|a| {
        a.gateway_id == gateway.id && created.as_ref().is_none_or(|c| c.id() != a.id)
    });
    agents.sort_by_key(|a| (a.created_at, a.id));
    let context = SyncContext {
        state,
        handle: &handle,
        generation,
        gateway,
        rotate_tokens,
        deadline,
    };
    let synced: Vec<AgentSyncResult> = futures::stream::iter(agents)
        .map(|agent| context.sync_agent(agent))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.extend(synced);
    Ok(results)
}

/// How long the sync waits for the gateway to answer `health` before giving up (a
/// protocol 3 gateway is down for a few seconds after each config change).
pub const HEALTH_LIMIT: Duration = Duration::from_secs(8);

/// Asks `health` until it answers, fails for good, or [`HEALTH_LIMIT`] passes.
async fn answers_health(handle: &GatewayHandle) -> Result<(), GatewayError> {
    let limit = Instant::now() + HEALTH_LIMIT;
    loop {
        let error = match tokio::time::timeout_at(limit, handle.health()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => GatewayError::Transient {
                message: format!(
                    "health: no answer within {} s from {}",
                    HEALTH_LIMIT.as_secs(),
                    handle.url()
                ),
            },
        };
        let pause = Instant::now() + Duration::from_millis(500);
        if error.is_permanent() || pause >= limit {
            return Err(error);
        }
        tokio::time::sleep_until(pause).await;
    }
}

/// What every agent's sync shares.
struct SyncContext<'a> {
    state: &'a SharedState,
    handle: &'a GatewayHandle,
    generation: GatewayGeneration,
    gateway: &'a Gateway,
    rotate_tokens: bool,
    deadline: Instant,
}

/// Why an agent could not be synced directly.
enum Blocked {
    /// The agent is not on the gateway.
    MissingOnGateway,
    /// A failure worth another try (the gateway restarting, a timeout), in words.
    Transient(String),
    /// Anything else, in words.
    Failed(String),
}

impl From<GatewayError> for Blocked {
    fn from(error: GatewayError) -> Self {
        if error.is_missing_agent() {
            Self::MissingOnGateway
        } else if error.is_permanent() {
            Self::Failed(error.to_string())
        } else {
            Self::Transient(error.to_string())
        }
    }
}

/// Further tries of a step that failed transiently (a protocol 3 gateway restarts about
/// two seconds after each config change, for a few seconds).
const RETRIES: u32 = 3;

/// The pause before the n-th retry is n times this.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs `step` until it succeeds, fails for good, has been retried [`RETRIES`] times, or
/// `limit` passes (then the error says what timed out: `what`).
async fn with_retries<T, F, Fut>(limit: Instant, what: &str, mut step: F) -> Result<T, Blocked>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Blocked>>,
{
    let mut retries = 0;
    loop {
        match tokio::time::timeout_at(limit, step()).await {
            Ok(Err(Blocked::Transient(error))) if retries < RETRIES => {
                retries += 1;
                tracing::debug!(%error, retries, "template sync: retrying {what}");
                let pause = Instant::now() + RETRY_PAUSE * retries;
                if pause >= limit {
                    return Err(Blocked::Failed(error));
                }
                tokio::time::sleep_until(pause).await;
            }
            Ok(Err(Blocked::Transient(error))) => return Err(Blocked::Failed(error)),
            Ok(outcome) => return outcome,
            Err(_) => {
                return Err(Blocked::Failed(format!(
                    "timed out {what} (limit {} s)",
                    AGENT_LIMIT.as_secs()
                )));
            }
        }
    }
}

impl SyncContext<'_> {
    async fn sync_agent(&self, agent: std::sync::Arc<Agent>) -> AgentSyncResult {
        let result = AgentSyncResult::new(&agent, SyncOutcome::Synced);
        if !agent.is_mc_agent {
            return result.with_note_skipped(
                "not created by Mission Control; its files are not Mission Control's to write",
            );
        }
        match self.state.store.provision_jobs(agent.id).await {
            Ok(jobs) if jobs.iter().any(|j| j.state == ProvisionJobState::Pending) => {
                return result.with_note_skipped(
                    "a provisioning job is pending for this agent; that job writes its files",
                );
            }
            Ok(_) => {}
            Err(error) => return result.failed(format!("reading its jobs failed: {error}")),
        }
        let now = Instant::now();
        if now >= self.deadline {
            return result.failed(format!(
                "not reached: the sync's limit of {} s ran out",
                SYNC_LIMIT.as_secs()
            ));
        }
        let limit = (now + AGENT_LIMIT).min(self.deadline);
        let placement = plan::placement_of(&agent, self.gateway);
        let choice = match with_retries(limit, "reading the agent's credentials", || {
            self.choose_token(&agent, &placement)
        })
        .await
        {
            Ok(choice) => choice,
            Err(Blocked::MissingOnGateway) => return self.queue_repair(&agent, result).await,
            Err(Blocked::Failed(error) | Blocked::Transient(error)) => return result.failed(error),
        };
        let mut result = AgentSyncResult {
            token_rotated: choice.rotated,
            note: choice.note.clone(),
            ..result
        };
        let written = with_retries(limit, "writing the files", || {
            self.write_files(&agent, &placement, &choice.token)
        })
        .await;
        let error = match written {
            Ok(()) if token::is_current(self.state, agent.id, &choice.token) => return result,
            // A job rotated the token while the sync wrote the old one: let a job fix it.
            Ok(()) => "the agent's token changed while its files were written".to_owned(),
            Err(Blocked::MissingOnGateway) => "the agent vanished from the gateway".to_owned(),
            Err(Blocked::Failed(error) | Blocked::Transient(error)) => error,
        };
        if choice.rotated {
            // The new token is the only valid one: it must reach the workspace.
            self.state
                .provisioner
                .hand_token(agent.id, choice.token.clone());
        }
        let queued = super::request(self.state, &agent, ProvisionAction::Update, None).await;
        result = result.failed(error);
        if queued.is_ok() {
            let note = result
                .note
                .take()
                .map(|n| format!("{n}; "))
                .unwrap_or_default();
            result.note = Some(format!(
                "{note}an update job was queued to write the files again"
            ));
        }
        result
    }

    /// The token to write: a new one when asked, else the one in the workspace when it is
    /// still the agent's, else a new one ([`token::keep_or_mint`]).
    async fn choose_token(
        &self,
        agent: &Agent,
        placement: &AgentPlacement,
    ) -> Result<TokenChoice, Blocked> {
        let live = self
            .state
            .registry
            .get(agent.id)
            .ok_or_else(|| Blocked::Failed("the agent was deleted meanwhile".to_owned()))?;
        let chosen = if self.rotate_tokens {
            token::mint(self.state, &live, "rotated as requested".to_owned()).await
        } else {
            token::keep_or_mint(
                self.state,
                self.handle,
                self.generation,
                &live,
                &placement.gateway_agent_id,
            )
            .await
        };
        chosen.map_err(|error| match error {
            TokenError::Read(error) => Blocked::from(error),
            error @ TokenError::Mint(_) => Blocked::Failed(error.to_string()),
        })
    }

    /// Renders the agent's files with `token` and writes those the gateway accepts; the
    /// agent's own USER.md and MEMORY.md are kept, a deleted BOOTSTRAP.md stays deleted.
    async fn write_files(
        &self,
        agent: &Agent,
        placement: &AgentPlacement,
        token: &Secret,
    ) -> Result<(), Blocked> {
        let board_name = match agent.board_id {
            Some(board) => self
                .state
                .store
                .board(board)
                .await
                .map_err(|e| Blocked::Failed(format!("reading its board failed: {e}")))?
                .map(|b| b.name)
                .unwrap_or_default(),
            None => String::new(),
        };
        let context = FileContext::new(
            agent,
            placement,
            board_name,
            &self.state.base_url,
            token.expose(),
            &self.gateway.workspace_root,
        );
        let rendered = self
            .state
            .provisioner
            .templates
            .render_files(agent, self.generation, &context)
            .map_err(|e| Blocked::Failed(e.to_string()))?;
        let id = &placement.gateway_agent_id;
        let existing = self.handle.agents_files_list(id).await?.files;
        for file in files_to_write(self.generation, rendered, &existing, true) {
            self.handle
                .agents_files_set(id, file.name, &file.content)
                .await?;
        }
        Ok(())
    }

    /// Queues an update job to put an agent that is missing on the gateway back.
    async fn queue_repair(&self, agent: &Agent, result: AgentSyncResult) -> AgentSyncResult {
        match super::request(self.state, agent, ProvisionAction::Update, None).await {
            Ok(true) => AgentSyncResult {
                outcome: SyncOutcome::Queued,
                ..result
            }
            .with_note(
                "the agent is not on the gateway; an update job was queued to put it back (with a new token)",
            ),
            Ok(false) => AgentSyncResult {
                outcome: SyncOutcome::Skipped,
                ..result
            }
            .with_note("the agent is not on the gateway; a job already queued will put it back"),
            Err(error) => result.failed(format!(
                "the agent is not on the gateway, and queuing its update failed: {error}"
            )),
        }
    }
}
