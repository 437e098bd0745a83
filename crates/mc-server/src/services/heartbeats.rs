//! Heartbeats: the hot path for agents with their own token, and the bootstrap paths
//! (enrollment token, admin) that create an agent on its first heartbeat.

use std::sync::Arc;

use mc_domain::agent::{Agent, AgentName, ReportedHealth};
use mc_domain::enrollment::EnrollmentToken;
use mc_domain::ids::BoardId;
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_domain::{FieldError, ValidationErrors};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::liveness::{AgentView, LiveAgent};
use crate::services::agents::{NewAgent, Origin, create_agent, rotate_token};
use crate::state::{AppState, SharedState};

/// The agent after a heartbeat, and its new token when the heartbeat minted one.
#[derive(Debug)]
pub struct HeartbeatOutcome {
    /// The agent as seen right after the heartbeat.
    pub agent: AgentView,
    /// A freshly minted token, to hand back once in `X-Agent-Token`.
    pub new_token: Option<Secret>,
}

/// Records a heartbeat of a known agent: memory only, no I/O.
pub fn beat(
    state: &AppState,
    agent: &Arc<LiveAgent>,
    reported: Option<ReportedHealth>,
) -> HeartbeatOutcome {
    HeartbeatOutcome {
        agent: state.registry.heartbeat(agent, reported, Timestamp::now()),
        new_token: None,
    }
}

/// `POST /agents/heartbeat`: heartbeat by name, creating the agent when the caller may.
pub async fn heartbeat_by_name(
    state: &SharedState,
    caller: Caller,
    name: AgentName,
    board_id: Option<BoardId>,
    reported: Option<ReportedHealth>,
) -> ApiResult<HeartbeatOutcome> {
    match caller {
        Caller::Agent(agent) => {
            if board_id.is_some() && board_id != agent.profile().board_id {
                return Err(ApiError::Forbidden(
                    "board_id does not match the agent's own board".into(),
                ));
            }
            Ok(beat(state, &agent, reported))
        }
        Caller::Enrollment(secret) => enroll(state, &secret, name, board_id, reported).await,
        Caller::Admin => admin_heartbeat(state, name, board_id, reported).await,
    }
}

async fn enroll(
    state: &SharedState,
    secret: &Secret,
    name: AgentName,
    board_id: Option<BoardId>,
    reported: Option<ReportedHealth>,
) -> ApiResult<HeartbeatOutcome> {
    let token = state
        .store
        .enrollment_token_by_digest(secret.digest())
        .await?
        .ok_or(ApiError::Unauthorized("Unauthorized"))?;
    token.check_alive(Timestamp::now())?;
    if board_id.is_some_and(|b| b != token.board_id) {
        return Err(ApiError::Forbidden(
            "board_id does not match the enrollment token's board".into(),
        ));
    }
    // A concurrent first heartbeat with the same name can win the insert; then this one
    // is a retry of it.
    for _ in 0..2 {
        let existing = state
            .store
            .agents_named(&name.key(), Some(token.board_id))
            .await?;
        let outcome = match existing.first() {
            None => create_by_enrollment(state, &token, &name, reported).await,
            Some(agent) => retry_enrollment(state, &token, agent, reported).await,
        };
        match outcome {
            Err(ApiError::Conflict(_)) => continue,
            other => return other,
        }
    }
    Err(ApiError::Conflict(
        "An agent with this name already exists on this board.".into(),
    ))
}

async fn create_by_enrollment(
    state: &SharedState,
    token: &EnrollmentToken,
    name: &AgentName,
    reported: Option<ReportedHealth>,
) -> ApiResult<HeartbeatOutcome> {
    token.check_usable(Timestamp::now())?;
    let board = state
        .store
        .board(token.board_id)
        .await?
        .ok_or(ApiError::Unauthorized("Unauthorized"))?;
    let (agent, new_token) = create_agent(
        state,
        &board,
        NewAgent::named(name.clone()),
        Origin::Enrollment(token.id),
    )
    .await?;
    let mut outcome = beat(state, &agent, reported);
    outcome.new_token = Some(new_token);
    Ok(outcome)
}

async fn retry_enrollment(
    state: &AppState,
    token: &EnrollmentToken,
    agent: &Agent,
    reported: Option<ReportedHealth>,
) -> ApiResult<HeartbeatOutcome> {
    // Found in the store, perhaps not yet in memory: created on another replica a
    // moment ago (the retry of a request that timed out there may come here).
    let live = state
        .engine
        .agent_by_id(agent.id)
        .await?
        .ok_or(ApiError::NotFound("Agent not found"))?;
    if agent.enrolled_via != Some(token.id) {
        return Err(ApiError::Forbidden(
            "an agent with this name already exists on the board and was not created by this enrollment token".into(),
        ));
    }
    if live.own_token_used() {
        return Err(ApiError::Forbidden(
            "this agent already uses its own token; send that token instead of the enrollment token".into(),
        ));
    }
    let new_token = rotate_token(state, &live).await?;
    let mut outcome = beat(state, &live, reported);
    outcome.new_token = Some(new_token);
    Ok(outcome)
}

async fn admin_heartbeat(
    state: &SharedState,
    name: AgentName,
    board_id: Option<BoardId>,
    reported: Option<ReportedHealth>,
) -> ApiResult<HeartbeatOutcome> {
    let board = match board_id {
        Some(id) => Some(
            state
                .store
                .board(id)
                .await?
                .ok_or(ApiError::NotFound("Board not found"))?,
        ),
        None => None,
    };
    let found = state.store.agents_named(&name.key(), board_id).await?;
    match (found.as_slice(), board) {
        ([agent], _) => {
            let live = state
                .engine
                .agent_by_id(agent.id)
                .await?
                .ok_or(ApiError::NotFound("Agent not found"))?;
            Ok(beat(state, &live, reported))
        }
        ([], Some(board)) => {
            let (agent, token) =
                create_agent(state, &board, NewAgent::named(name), Origin::Admin).await?;
            let mut outcome = beat(state, &agent, reported);
            outcome.new_token = Some(token);
            Ok(outcome)
        }
        ([], None) => Err(ApiError::body_field(
            "board_id",
            "board_id is required to create an agent that does not exist yet",
        )),
        (_, _) => Err(ApiError::Validation(ValidationErrors::one(
            FieldError::body(
                "board_id",
                format!("several agents are named {name:?}; give board_id to choose one"),
            ),
        ))),
    }
}
