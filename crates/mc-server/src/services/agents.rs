//! Creating, changing, deleting agents and rotating their tokens.

use std::sync::Arc;

use mc_domain::activity::{EventType, NewActivity};
use mc_domain::agent::{Agent, AgentName, HeartbeatConfig, IdentityProfile};
use mc_domain::board::Board;
use mc_domain::ids::EnrollmentTokenId;
use mc_domain::liveness::JobInProgress;
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, generate_agent_token};
use mc_store::{EnrollmentSpend, NewProvisionJob, ProvisionAction};

use crate::error::{ApiError, ApiResult};
use crate::liveness::LiveAgent;
use crate::state::{AppState, SharedState};

/// The settings of an agent to create.
#[derive(Debug, Clone)]
pub struct NewAgent {
    /// Its name.
    pub name: AgentName,
    /// Heartbeat settings.
    pub heartbeat_config: HeartbeatConfig,
    /// Identity attributes.
    pub identity_profile: Option<IdentityProfile>,
    /// IDENTITY.md override.
    pub identity_template: Option<String>,
    /// SOUL.md override.
    pub soul_template: Option<String>,
    /// Leads its board.
    pub is_board_lead: bool,
}

impl NewAgent {
    /// An agent with default settings (heartbeat bootstrap).
    pub fn named(name: AgentName) -> Self {
        Self {
            name,
            heartbeat_config: HeartbeatConfig::default(),
            identity_profile: None,
            identity_template: None,
            soul_template: None,
            is_board_lead: false,
        }
    }
}

/// How an agent came to be: who asked, and (for enrollment) which token to spend.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// Created by the admin.
    Admin,
    /// Created by an enrollment token on its first heartbeat.
    Enrollment(EnrollmentTokenId),
}

/// An event about `agent`, now.
pub fn agent_event(agent: &Agent, event_type: EventType, message: String) -> NewActivity {
    NewActivity {
        event_type,
        message,
        agent_id: Some(agent.id),
        board_id: agent.board_id,
        data: None,
        created_at: Timestamp::now(),
    }
}

/// Creates an agent on `board` with a fresh token; durable before it returns.
///
/// From the moment the store is asked, the create runs as a task of its own: a client
/// that goes away drops its request's future, and that must not cut the create between
/// the commit and the registry (the agent would be stored but unknown to this replica:
/// its token refused, its job never handed over). The caller waits for the task.
pub async fn create_agent(
    state: &SharedState,
    board: &Board,
    new: NewAgent,
    origin: Origin,
) -> ApiResult<(Arc<LiveAgent>, Secret)> {
    let now = Timestamp::now();
    let agent = Agent {
        is_board_lead: new.is_board_lead,
        heartbeat_config: new.heartbeat_config,
        identity_profile: new.identity_profile,
        identity_template: new.identity_template,
        soul_template: new.soul_template,
        enrolled_via: match origin {
            Origin::Enrollment(id) => Some(id),
            Origin::Admin => None,
        },
        ..Agent::new(Some(board.id), board.gateway_id, new.name, now)
    };
    let token = generate_agent_token();
    let spend = match origin {
        Origin::Enrollment(token_id) => Some(EnrollmentSpend { token_id, now }),
        Origin::Admin => None,
    };
    let how = match origin {
        Origin::Admin => "by the admin",
        Origin::Enrollment(_) => "by enrollment",
    };
    let event = agent_event(
        &agent,
        EventType::AgentCreated,
        format!("Agent {} was created {how}.", agent.name),
    );
    let live = store_created(state, agent, token.clone(), spend, event).await?;
    Ok((live, token))
}

/// Stores a new agent holding `token`, with its first provisioning job when its gateway
/// is managed (one transaction), then adds it to the registry and hands it to
/// provisioning. Runs in a task of its own: once the store has it, the rest happens
/// even if the caller goes away.
pub(crate) async fn store_created(
    state: &SharedState,
    agent: Agent,
    token: Secret,
    spend: Option<EnrollmentSpend>,
    event: NewActivity,
) -> ApiResult<Arc<LiveAgent>> {
    let job = crate::provision::job_for(state, &agent, ProvisionAction::Create).await?;
    let created = NewlyCreated {
        agent,
        token,
        spend,
        event,
        job,
    };
    tokio::spawn(store_new_agent(Arc::clone(state), created))
        .await
        .map_err(|error| ApiError::Internal(format!("the create task failed: {error}")))?
}

/// Everything a create stores and hands on.
struct NewlyCreated {
    agent: Agent,
    token: Secret,
    spend: Option<EnrollmentSpend>,
    event: NewActivity,
    job: Option<NewProvisionJob>,
}

/// Stores a new agent (with its first provisioning job, in one transaction), adds it to
/// the registry and hands it to provisioning, or, when the store refuses it, leaves
/// nothing behind. Runs as a task of its own (see [`store_created`]).
async fn store_new_agent(state: SharedState, new: NewlyCreated) -> ApiResult<Arc<LiveAgent>> {
    let NewlyCreated {
        agent,
        token,
        spend,
        event,
        job,
    } = new;
    let job_id = match &job {
        Some(job) => {
            // The runner may claim the job the moment it is stored: its token is waiting.
            state.provisioner.hand_token(agent.id, token.clone());
            let stored = state
                .store
                .insert_agent_with_job(&agent, Some(token.digest()), spend, &event, job)
                .await;
            if stored.is_err() {
                state.provisioner.forget_token(agent.id);
            }
            Some(stored?)
        }
        None => {
            state
                .store
                .insert_agent(&agent, Some(token.digest()), spend, &event)
                .await?;
            None
        }
    };
    let live = state.registry.insert(agent.clone(), Some(token.digest()));
    match job_id {
        Some(id) => {
            crate::provision::queued(&state, &agent, id, ProvisionAction::Create, Some(&token));
        }
        None => crate::provision::await_first_checkin(&state, &agent),
    }
    Ok(live)
}

/// The event recording that `agent` got a new token.
fn token_rotated_event(agent: &Agent) -> NewActivity {
    agent_event(
        agent,
        EventType::AgentTokenRotated,
        format!(
            "Agent {} got a new token; the previous one no longer works.",
            agent.name
        ),
    )
}

/// Mints a new token for an agent; the old one stops working at once.
pub async fn rotate_token(state: &AppState, agent: &Arc<LiveAgent>) -> ApiResult<Secret> {
    let token = generate_agent_token();
    let event = token_rotated_event(&agent.profile());
    let stored = state
        .store
        .set_agent_token(agent.id(), token.digest(), &event)
        .await?;
    if !stored {
        // Deleted meanwhile (e.g. on another replica): memory must not keep it either.
        state.registry.remove(agent.id());
        return Err(ApiError::NotFound("Agent not found"));
    }
    state.registry.replace_token(agent, token.digest());
    Ok(token)
}

/// Stores new settings for an agent and swaps them into the registry.
pub async fn update_agent(
    state: &AppState,
    agent: &Arc<LiveAgent>,
    updated: Agent,
    changed: &[&str],
) -> ApiResult<()> {
    let event = agent_event(
        &updated,
        EventType::AgentUpdated,
        format!(
            "Agent {} was updated: {}.",
            updated.name,
            changed.join(", ")
        ),
    );
    // The new settings and the job that puts them on the gateway are stored in one
    // transaction.
    let job = crate::provision::job_for(state, &updated, ProvisionAction::Update).await?;
    let job_id = match &job {
        Some(job) => Some(
            state
                .store
                .update_agent_with_job(&updated, &event, job)
                .await?
                .ok_or(ApiError::NotFound("Agent not found"))?,
        ),
        None => {
            state.store.update_agent(&updated, &event).await?;
            None
        }
    };
    state.registry.update_profile(agent, updated.clone());
    if let Some(id) = job_id {
        crate::provision::queued(state, &updated, id, ProvisionAction::Update, None);
    }
    Ok(())
}

/// The event recording an agent's deletion, with the reason (e.g. "with its board").
pub fn deleted_event(agent: &Agent, reason: &str) -> NewActivity {
    agent_event(
        agent,
        EventType::AgentDeleted,
        format!("Agent {} was deleted{reason}.", agent.name),
    )
}

/// Deletes an agent; false when it did not exist. An agent on a managed gateway reads
/// `deleting` until its delete job has removed it from the gateway (or given up); then the
/// job removes it from Mission Control. Others go at once.
pub async fn delete_agent(state: &AppState, agent: &Arc<LiveAgent>) -> ApiResult<bool> {
    if agent.job_in_progress() == Some(JobInProgress::Delete) {
        return Ok(true);
    }
    let profile = agent.profile();
    if crate::provision::request(state, &profile, ProvisionAction::Delete, None).await? {
        return Ok(true);
    }
    let event = deleted_event(&profile, "");
    let deleted = state.store.delete_agent(agent.id(), &event).await?;
    state.registry.remove(agent.id());
    Ok(deleted)
}

/// Rotates an agent's token at an operator's request; on a managed gateway the update job
/// that writes the new token into the agent's workspace is stored in the same transaction
/// as the token, so there is never a new token without the job that delivers it.
pub async fn rotate_and_deliver_token(
    state: &AppState,
    agent: &Arc<LiveAgent>,
) -> ApiResult<Secret> {
    let profile = agent.profile();
    let Some(job) = crate::provision::job_for(state, &profile, ProvisionAction::Update).await?
    else {
        return rotate_token(state, agent).await;
    };
    let token = generate_agent_token();
    let event = token_rotated_event(&profile);
    // The runner may claim the job the moment it is stored: its token is waiting.
    let previous = state.provisioner.hand_token(agent.id(), token.clone());
    let stored = state
        .store
        .set_agent_token_with_job(agent.id(), token.digest(), &event, &job)
        .await;
    let job_id = match stored {
        Ok(Some(id)) => id,
        failed => {
            state.provisioner.restore_token(agent.id(), previous);
            return Err(match failed {
                Err(error) => error.into(),
                Ok(_) => ApiError::NotFound("Agent not found"),
            });
        }
    };
    state.registry.replace_token(agent, token.digest());
    crate::provision::queued(
        state,
        &profile,
        job_id,
        ProvisionAction::Update,
        Some(&token),
    );
    Ok(token)
}
