//! `/api/v1/agents`: the agent directory (admin).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use mc_domain::agent::{
    Agent, AgentName, AgentStatus, HeartbeatConfig, normalize_identity_profile, normalize_template,
};
use mc_domain::ids::{AgentId, BoardId, GatewayId};
use mc_domain::time::Timestamp;
use mc_domain::{FieldError, ValidationErrors};
use mc_store::AgentFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::boards::load_board;
use super::{OkResponse, PageOf, present};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, QueryParams, path_id};
use crate::liveness::{AgentView, LiveAgent};
use crate::services::agents::{self as service, NewAgent, Origin};
use crate::state::SharedState;

/// Heartbeat settings as read.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct HeartbeatConfigRead {
    /// Seconds between heartbeats.
    pub interval_seconds: u32,
    /// Seconds of silence after which the agent is offline.
    pub missing_tolerance: u32,
}

/// An agent as every endpoint returns it; `status` is computed at read time.
// It borrows from the agent it describes: the heartbeat hot path serialises it without
// copying the agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentRead<'a> {
    /// Identity.
    pub id: Uuid,
    /// The gateway it runs on.
    pub gateway_id: Uuid,
    /// Its board; null for a gateway's main agent.
    pub board_id: Option<Uuid>,
    /// Display name.
    pub name: &'a str,
    /// `provisioning`, `healthy`, `degraded` or `offline`.
    #[schema(value_type = String, example = "healthy")]
    pub status: AgentStatus,
    /// Its id on the gateway.
    pub gateway_agent_id: Option<&'a str>,
    /// Its workspace on the gateway host.
    pub workspace_path: Option<&'a str>,
    /// Created by Mission Control.
    pub is_mc_agent: bool,
    /// Leads its board.
    pub is_board_lead: bool,
    /// A gateway's main agent (no board).
    pub is_gateway_main: bool,
    /// Its main session key.
    pub openclaw_session_id: Option<&'a str>,
    /// The last heartbeat.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<Timestamp>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Interval and tolerance.
    pub heartbeat_config: HeartbeatConfigRead,
    /// Identity attributes.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub identity_profile: Option<&'a BTreeMap<String, String>>,
    /// IDENTITY.md override.
    pub identity_template: Option<&'a str>,
    /// SOUL.md override.
    pub soul_template: Option<&'a str>,
    /// Why provisioning last failed.
    pub last_provision_error: Option<&'a str>,
}

impl<'a> AgentRead<'a> {
    /// The read model of a stored agent with computed `status`.
    pub fn new(agent: &'a Agent, status: AgentStatus) -> Self {
        Self {
            id: agent.id.as_uuid(),
            gateway_id: agent.gateway_id.as_uuid(),
            board_id: agent.board_id.map(|b| b.as_uuid()),
            is_gateway_main: agent.is_gateway_main(),
            name: agent.name.as_str(),
            status,
            gateway_agent_id: agent.gateway_agent_id.as_deref(),
            workspace_path: agent.workspace_path.as_deref(),
            is_mc_agent: agent.is_mc_agent,
            is_board_lead: agent.is_board_lead,
            openclaw_session_id: agent.openclaw_session_id.as_deref(),
            last_seen_at: agent.last_seen_at,
            created_at: agent.created_at,
            updated_at: agent.updated_at,
            heartbeat_config: HeartbeatConfigRead {
                interval_seconds: agent.heartbeat_config.interval_seconds,
                missing_tolerance: agent.heartbeat_config.missing_tolerance,
            },
            identity_profile: agent.identity_profile.as_ref(),
            identity_template: agent.identity_template.as_deref(),
            soul_template: agent.soul_template.as_deref(),
            last_provision_error: agent.last_provision_error.as_deref(),
        }
    }

    /// The read model of a live agent's view.
    pub fn from_view(view: &'a AgentView) -> Self {
        Self {
            last_seen_at: view.last_seen_at,
            updated_at: view.updated_at,
            ..Self::new(&view.profile, view.status)
        }
    }
}

/// The response for a live agent as seen now.
pub fn agent_response(agent: &LiveAgent) -> Response {
    Json(AgentRead::from_view(&agent.view(Timestamp::now()))).into_response()
}

/// The view of an agent read from the store, not held in memory (created on another
/// replica a moment ago).
fn stored_view(agent: Agent, now: Timestamp) -> AgentView {
    let status = mc_domain::liveness::LivenessFacts {
        last_seen_at: agent.last_seen_at,
        reported: agent.reported_health,
        missing_tolerance_seconds: agent.heartbeat_config.missing_tolerance,
        grace_until: None,
        job: None,
        checkin: None,
    }
    .status(now);
    AgentView {
        last_seen_at: agent.last_seen_at,
        updated_at: agent.updated_at,
        status,
        profile: Arc::new(agent),
    }
}

/// Heartbeat settings as written; omitted parts take defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub struct HeartbeatConfigWrite {
    interval_seconds: Option<i64>,
    missing_tolerance: Option<i64>,
}

impl HeartbeatConfigWrite {
    fn parse(self) -> Result<HeartbeatConfig, ValidationErrors> {
        HeartbeatConfig::parse(self.interval_seconds, self.missing_tolerance)
    }
}

/// An agent to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentCreate {
    name: String,
    board_id: Option<Uuid>,
    heartbeat_config: Option<HeartbeatConfigWrite>,
    identity_profile: Option<Value>,
    identity_template: Option<String>,
    soul_template: Option<String>,
    #[serde(default)]
    is_board_lead: bool,
}

/// Changes to an agent; `status` is refused (heartbeats own it).
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentUpdate {
    name: Option<String>,
    board_id: Option<Uuid>,
    heartbeat_config: Option<HeartbeatConfigWrite>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    identity_profile: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    identity_template: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    soul_template: Option<Option<String>>,
    is_board_lead: Option<bool>,
    /// Not writable: present → 403.
    #[schema(value_type = Option<String>)]
    status: Option<Value>,
}

/// The live agent with this id, or 404.
pub fn load_agent(state: &SharedState, id: AgentId) -> ApiResult<Arc<LiveAgent>> {
    state
        .registry
        .get(id)
        .ok_or(ApiError::NotFound("Agent not found"))
}

fn required_board(board_id: Option<Uuid>) -> ApiResult<BoardId> {
    board_id.map(BoardId::from_uuid).ok_or_else(|| {
        ApiError::field(FieldError::new(
            ["body", "board_id"],
            "board_id is required",
            "missing",
        ))
    })
}

/// Creates an agent on a board.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", request_body = AgentCreate,
    responses((status = 200, body = AgentRead), (status = 404), (status = 409), (status = 422)))]
pub async fn create_agent(
    _: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<AgentCreate>,
) -> ApiResult<Response> {
    let mut errors = ValidationErrors::default();
    let name = errors.collect(AgentName::parse(&body.name, "name"));
    let config = errors.collect(body.heartbeat_config.unwrap_or_default().parse());
    let profile = match &body.identity_profile {
        Some(value) => errors.collect(normalize_identity_profile(value)).flatten(),
        None => None,
    };
    let board_id = required_board(body.board_id);
    errors.into_result()?;
    let board = load_board(&state, board_id?).await?;
    let (Some(name), Some(heartbeat_config)) = (name, config) else {
        return Err(ApiError::Internal("validation inconsistency".into()));
    };
    let new = NewAgent {
        name,
        heartbeat_config,
        identity_profile: profile,
        identity_template: normalize_template(body.identity_template),
        soul_template: normalize_template(body.soul_template),
        is_board_lead: body.is_board_lead,
    };
    let (agent, _token) = service::create_agent(&state, &board, new, Origin::Admin).await?;
    Ok(agent_response(&agent))
}

/// Lists agents, newest first.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    params(("board_id" = Option<Uuid>, Query), ("gateway_id" = Option<Uuid>, Query),
        ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<AgentRead>), (status = 422)))]
pub async fn list_agents(
    _: Admin,
    State(state): State<SharedState>,
    query: QueryParams,
) -> ApiResult<Response> {
    let request = query.page()?;
    let filter = AgentFilter {
        board_id: query.id::<BoardId>("board_id")?,
        gateway_id: query.id::<GatewayId>("gateway_id")?,
    };
    // The page's ids from the database (its order and membership as committed), each
    // agent from memory; one read by id for those this replica does not hold (created
    // on another replica a moment ago, or deleted meanwhile: those are left out).
    let ids = state.store.list_agent_ids(filter, request).await?;
    // Counted in memory: counting the stored rows was most of the listing's time.
    let total = state.registry.agent_count(filter);
    let now = Timestamp::now();
    let held: Vec<Option<Arc<LiveAgent>>> = ids.iter().map(|id| state.registry.get(*id)).collect();
    let missing: Vec<AgentId> = ids
        .iter()
        .zip(&held)
        .filter(|(_, live)| live.is_none())
        .map(|(id, _)| *id)
        .collect();
    let mut stored: HashMap<AgentId, Agent> = if missing.is_empty() {
        HashMap::new()
    } else {
        state
            .store
            .stored_agents(&missing)
            .await?
            .into_iter()
            .map(|stored| (stored.agent.id, stored.agent))
            .collect()
    };
    let views: Vec<AgentView> = ids
        .iter()
        .zip(held)
        .filter_map(|(id, live)| match live {
            Some(live) => Some(live.view(now)),
            None => stored.remove(id).map(|agent| stored_view(agent, now)),
        })
        .collect();
    let body = PageOf {
        items: views.iter().map(AgentRead::from_view).collect(),
        total,
        limit: request.limit,
        offset: request.offset,
    };
    Ok(Json(body).into_response())
}

/// Reads an agent.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = AgentRead), (status = 404)))]
pub async fn get_agent(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> ApiResult<Response> {
    let agent = load_agent(&state, path_id(&agent_id, "agent_id")?)?;
    Ok(agent_response(&agent))
}

/// Changes an agent's settings.
#[utoipa::path(patch, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = Uuid, Path)), request_body = AgentUpdate,
    responses((status = 200, body = AgentRead), (status = 403), (status = 404), (status = 409), (status = 422)))]
pub async fn update_agent(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<AgentUpdate>,
) -> ApiResult<Response> {
    let live = load_agent(&state, path_id(&agent_id, "agent_id")?)?;
    if body.status.is_some() {
        return Err(ApiError::Forbidden(
            "status is controlled by agent heartbeats".into(),
        ));
    }
    let mut agent = (*live.profile()).clone();
    let mut changed = Vec::new();
    let mut errors = ValidationErrors::default();
    if let Some(name) = body
        .name
        .as_deref()
        .and_then(|n| errors.collect(AgentName::parse(n, "name")))
    {
        agent.name = name;
        changed.push("name");
    }
    if let Some(config) = body
        .heartbeat_config
        .and_then(|c| errors.collect(c.parse()))
    {
        agent.heartbeat_config = config;
        changed.push("heartbeat_config");
    }
    if let Some(profile) = body.identity_profile {
        let value = profile.unwrap_or(Value::Null);
        if let Some(profile) = errors.collect(normalize_identity_profile(&value)) {
            agent.identity_profile = profile;
            changed.push("identity_profile");
        }
    }
    errors.into_result()?;
    if let Some(template) = body.identity_template {
        agent.identity_template = normalize_template(template);
        changed.push("identity_template");
    }
    if let Some(template) = body.soul_template {
        agent.soul_template = normalize_template(template);
        changed.push("soul_template");
    }
    if let Some(lead) = body.is_board_lead {
        agent.is_board_lead = lead;
        changed.push("is_board_lead");
    }
    if let Some(board_id) = body.board_id {
        let board = state
            .store
            .board(BoardId::from_uuid(board_id))
            .await?
            .filter(|b| b.organization_id == state.organization_id)
            .ok_or_else(|| {
                ApiError::body_field("board_id", "board_id does not name an existing board")
            })?;
        agent.board_id = Some(board.id);
        agent.gateway_id = board.gateway_id;
        changed.push("board_id");
    }
    if changed.is_empty() {
        return Ok(agent_response(&live));
    }
    agent.updated_at = Timestamp::now();
    service::update_agent(&state, &live, agent, &changed).await?;
    Ok(agent_response(&live))
}

/// Deletes an agent; its token stops working at once.
#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = OkResponse), (status = 404)))]
pub async fn delete_agent(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<OkResponse>> {
    let agent = load_agent(&state, path_id(&agent_id, "agent_id")?)?;
    if !service::delete_agent(&state, &agent).await? {
        return Err(ApiError::NotFound("Agent not found"));
    }
    Ok(Json(OkResponse::ok()))
}

/// A freshly minted agent token, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRead {
    /// The new token; the previous one no longer works.
    pub token: String,
}

/// Mints a new token for an agent (for agents of unmanaged gateways, or after a leak); on
/// a managed gateway an update job writes it into the agent's workspace.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/token", tag = "agents",
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = TokenRead), (status = 404)))]
pub async fn rotate_agent_token(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<TokenRead>> {
    let agent = load_agent(&state, path_id(&agent_id, "agent_id")?)?;
    let token = service::rotate_and_deliver_token(&state, &agent).await?;
    Ok(Json(TokenRead {
        token: token.expose().to_owned(),
    }))
}
