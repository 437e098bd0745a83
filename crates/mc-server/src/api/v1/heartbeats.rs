//! The three heartbeat endpoints of the seed contract.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use mc_domain::agent::{AgentName, ReportedHealth};
use mc_domain::ids::{AgentId, BoardId};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::agents::{AgentRead, load_agent};
use crate::auth::{AGENT_TOKEN_HEADER, AgentCaller, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, path_id};
use crate::services::heartbeats::{self as service, HeartbeatOutcome};
use crate::state::SharedState;

/// Body of `POST /agents/heartbeat`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct HeartbeatByName {
    /// The agent's name (creates the agent when unknown and the caller may).
    name: String,
    /// Board context for bootstrap.
    board_id: Option<Uuid>,
    /// `healthy`, `degraded` or `offline` (`online` = `healthy`).
    status: Option<String>,
}

/// Body of the other heartbeat endpoints: an optional reported status.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct HeartbeatBody {
    /// `healthy`, `degraded` or `offline` (`online` = `healthy`).
    status: Option<String>,
}

fn respond(outcome: HeartbeatOutcome) -> Response {
    let mut response = Json(AgentRead::from_view(&outcome.agent)).into_response();
    if let Some(token) = outcome.new_token
        && let Ok(value) = HeaderValue::from_str(token.expose())
    {
        response
            .headers_mut()
            .insert(HeaderName::from_static(AGENT_TOKEN_HEADER), value);
    }
    response
}

/// Heartbeat by name; creates and provisions an unknown agent (enrollment token or admin).
#[utoipa::path(post, path = "/api/v1/agents/heartbeat", tags = ["agents", "agent-main", "agent-lead", "agent-worker"],
    request_body = HeartbeatByName,
    responses((status = 200, body = AgentRead, description = "The agent; `X-Agent-Token` carries a new agent's own token, once"),
        (status = 401), (status = 403), (status = 422)))]
pub async fn heartbeat_by_name(
    caller: Caller,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<HeartbeatByName>,
) -> ApiResult<Response> {
    let name = AgentName::parse(&body.name, "name");
    let reported = ReportedHealth::parse(body.status.as_deref());
    let mut errors = mc_domain::ValidationErrors::default();
    let name = errors.collect(name);
    let reported = errors.collect(reported);
    errors.into_result()?;
    let (Some(name), Some(reported)) = (name, reported) else {
        return Err(ApiError::Internal("validation inconsistency".into()));
    };
    let board_id = body.board_id.map(BoardId::from_uuid);
    let outcome = service::heartbeat_by_name(&state, caller, name, board_id, reported).await?;
    Ok(respond(outcome))
}

/// Heartbeat of an existing agent by id (the agent itself, or the admin).
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/heartbeat", tags = ["agents", "agent-main", "agent-lead", "agent-worker"],
    params(("agent_id" = Uuid, Path)), request_body = HeartbeatBody,
    responses((status = 200, body = AgentRead), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn heartbeat_agent(
    caller: Caller,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> ApiResult<Response> {
    let id: AgentId = path_id(&agent_id, "agent_id")?;
    let reported = ReportedHealth::parse(body.status.as_deref())?;
    let agent = load_agent(&state, id)?;
    match caller {
        Caller::Admin => {}
        Caller::Agent(own) if own.id() == id => {}
        Caller::Agent(_) => {
            return Err(ApiError::Forbidden(
                "an agent token may heartbeat only its own agent".into(),
            ));
        }
        Caller::Enrollment(_) => {
            return Err(ApiError::Unauthorized(
                "enrollment tokens are accepted only by POST /api/v1/agents/heartbeat",
            ));
        }
    }
    Ok(respond(service::beat(&state, &agent, reported)))
}

/// Agent-scoped heartbeat: the token names the agent. Body: none, `{}` or `{"status": ...}`.
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tags = ["agent-main", "agent-lead", "agent-worker"],
    request_body(content = Option<HeartbeatBody>, description = "Empty, `{}`, or an optional status"),
    responses((status = 200, body = AgentRead), (status = 401), (status = 422)),
    security(("agent_token" = [])))]
pub async fn heartbeat_own(
    AgentCaller(agent): AgentCaller,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> ApiResult<Response> {
    let reported = ReportedHealth::parse(body.status.as_deref())?;
    Ok(respond(service::beat(&state, &agent, reported)))
}
