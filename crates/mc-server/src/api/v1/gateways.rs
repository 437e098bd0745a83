//! `/api/v1/gateways`: where agents run. The gateway token is write-only.

use axum::Json;
use axum::extract::{Path, State};
use mc_domain::gateway::Gateway;
use mc_domain::ids::GatewayId;
use mc_domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{OkResponse, PageOf, present};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, QueryParams, path_id};
use crate::provision::sync::{self as templates_sync, AgentSyncResult};
use crate::services::gateways::{self as service, GatewayFields};
use crate::state::SharedState;
use mc_gateway::GatewayPool;

/// A gateway as read (never its token).
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayRead {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    /// Empty for an unmanaged gateway.
    url: String,
    workspace_root: String,
    allow_insecure_tls: bool,
    disable_device_pairing: bool,
    /// Whether a token is stored (the token itself is never returned).
    has_token: bool,
    /// The connection as Mission Control sees it now.
    status: GatewayStatusRead,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

/// A gateway connection's state, in words an operator can act on.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayStatusRead {
    /// False for an unmanaged gateway (no url): Mission Control never connects to it.
    pub managed: bool,
    /// Whether the connection is open and the handshake succeeded.
    pub connected: bool,
    /// The protocol negotiated at the last successful handshake (3 or 4).
    pub protocol: Option<u32>,
    /// The gateway's OpenClaw version, from the last successful handshake.
    pub version: Option<String>,
    /// Whether the gateway has accepted this server's device.
    pub paired: bool,
    /// The last connection problem and what to do about it; null while connected.
    pub last_error: Option<String>,
    /// When the gateway was last heard from.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_contact_at: Option<Timestamp>,
}

/// The unmanaged gateway's status wording.
pub const UNMANAGED_STATUS: &str = "unmanaged gateway (no url): Mission Control does not connect to it; its agents only send heartbeats";

impl GatewayStatusRead {
    /// The status of `gateway` in `pool`.
    pub fn of(pool: &GatewayPool, gateway: &Gateway) -> Self {
        if !gateway.url.is_managed() {
            return Self {
                managed: false,
                connected: false,
                protocol: None,
                version: None,
                paired: false,
                last_error: Some(UNMANAGED_STATUS.to_owned()),
                last_contact_at: None,
            };
        }
        match pool.status(gateway.id) {
            Some(s) => Self {
                managed: true,
                connected: s.connected,
                protocol: s.protocol,
                version: s.version,
                paired: s.paired,
                last_error: s.last_error,
                last_contact_at: s.last_contact_at,
            },
            None => Self {
                managed: true,
                connected: false,
                protocol: None,
                version: None,
                paired: false,
                last_error: Some("not connected yet".to_owned()),
                last_contact_at: None,
            },
        }
    }
}

impl GatewayRead {
    /// The gateway as read, with its connection status from `pool`.
    fn new(g: Gateway, pool: &GatewayPool) -> Self {
        let status = GatewayStatusRead::of(pool, &g);
        Self {
            id: g.id.as_uuid(),
            organization_id: g.organization_id.as_uuid(),
            name: g.name,
            url: g.url.stored().to_owned(),
            workspace_root: g.workspace_root,
            allow_insecure_tls: g.allow_insecure_tls,
            disable_device_pairing: g.disable_device_pairing,
            has_token: g.token.is_some(),
            status,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

/// A gateway to register.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GatewayCreate {
    name: String,
    /// `ws://` or `wss://` URL; empty for an unmanaged gateway.
    #[serde(default)]
    url: String,
    /// The gateway's auth token (write-only).
    token: Option<String>,
    /// Required for managed gateways.
    #[serde(default)]
    workspace_root: String,
    #[serde(default)]
    allow_insecure_tls: bool,
    #[serde(default)]
    disable_device_pairing: bool,
}

/// Changes to a gateway; absent fields stay, `token: null` removes the token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GatewayUpdate {
    name: Option<String>,
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    token: Option<Option<String>>,
    workspace_root: Option<String>,
    allow_insecure_tls: Option<bool>,
    disable_device_pairing: Option<bool>,
}

/// Loads a gateway or answers 404.
pub async fn load_gateway(state: &SharedState, id: GatewayId) -> ApiResult<Gateway> {
    state
        .store
        .gateway(id)
        .await?
        .filter(|g| g.organization_id == state.organization_id)
        .ok_or(ApiError::NotFound("Gateway not found"))
}

/// Registers a gateway.
#[utoipa::path(post, path = "/api/v1/gateways", tag = "gateways", request_body = GatewayCreate,
    responses((status = 200, body = GatewayRead), (status = 422, description = "Invalid field")))]
pub async fn create_gateway(
    _: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<GatewayCreate>,
) -> ApiResult<Json<GatewayRead>> {
    let fields = GatewayFields {
        name: Some(body.name),
        url: Some(body.url),
        token: Some(body.token),
        workspace_root: Some(body.workspace_root),
        allow_insecure_tls: Some(body.allow_insecure_tls),
        disable_device_pairing: Some(body.disable_device_pairing),
    };
    let gateway = service::create_gateway(&state, fields).await?;
    Ok(Json(GatewayRead::new(gateway, &state.gateways)))
}

/// Lists gateways, newest first.
#[utoipa::path(get, path = "/api/v1/gateways", tag = "gateways",
    params(("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<GatewayRead>)))]
pub async fn list_gateways(
    _: Admin,
    State(state): State<SharedState>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<GatewayRead>>> {
    let request = query.page()?;
    let page = state
        .store
        .list_gateways(state.organization_id, request)
        .await?;
    Ok(Json(PageOf::from_page(page, request, |g| {
        GatewayRead::new(g, &state.gateways)
    })))
}

/// Reads a gateway.
#[utoipa::path(get, path = "/api/v1/gateways/{gateway_id}", tag = "gateways",
    params(("gateway_id" = Uuid, Path)), responses((status = 200, body = GatewayRead), (status = 404)))]
pub async fn get_gateway(
    _: Admin,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
) -> ApiResult<Json<GatewayRead>> {
    let id = path_id(&gateway_id, "gateway_id")?;
    Ok(Json(GatewayRead::new(
        load_gateway(&state, id).await?,
        &state.gateways,
    )))
}

/// A gateway's connection status.
#[utoipa::path(get, path = "/api/v1/gateways/{gateway_id}/status", tag = "gateways",
    params(("gateway_id" = Uuid, Path)), responses((status = 200, body = GatewayStatusRead), (status = 404)))]
pub async fn gateway_status(
    _: Admin,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
) -> ApiResult<Json<GatewayStatusRead>> {
    let id = path_id(&gateway_id, "gateway_id")?;
    let gateway = load_gateway(&state, id).await?;
    Ok(Json(GatewayStatusRead::of(&state.gateways, &gateway)))
}

/// Changes a gateway.
#[utoipa::path(patch, path = "/api/v1/gateways/{gateway_id}", tag = "gateways",
    params(("gateway_id" = Uuid, Path)), request_body = GatewayUpdate,
    responses((status = 200, body = GatewayRead), (status = 404), (status = 422)))]
pub async fn update_gateway(
    _: Admin,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
    ApiJson(body): ApiJson<GatewayUpdate>,
) -> ApiResult<Json<GatewayRead>> {
    let id = path_id(&gateway_id, "gateway_id")?;
    let gateway = load_gateway(&state, id).await?;
    let fields = GatewayFields {
        name: body.name,
        url: body.url,
        token: body.token,
        workspace_root: body.workspace_root,
        allow_insecure_tls: body.allow_insecure_tls,
        disable_device_pairing: body.disable_device_pairing,
    };
    let gateway = service::update_gateway(&state, gateway, fields).await?;
    Ok(Json(GatewayRead::new(gateway, &state.gateways)))
}

/// Deletes a gateway (409 while boards use it) with its main agent. On a managed gateway
/// the main agent, and any agent of a deleted board that its delete job has not removed
/// yet, are removed from the gateway first; when that fails (the gateway is unreachable)
/// the answer is 409 and nothing is deleted: retry later, or clear the gateway's url to
/// delete it without contacting it.
#[utoipa::path(delete, path = "/api/v1/gateways/{gateway_id}", tag = "gateways",
    params(("gateway_id" = Uuid, Path)), responses((status = 200, body = OkResponse), (status = 404),
        (status = 409, description = "Boards still use the gateway, or an agent could not be removed from it")))]
pub async fn delete_gateway(
    _: Admin,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
) -> ApiResult<Json<OkResponse>> {
    let id = path_id(&gateway_id, "gateway_id")?;
    load_gateway(&state, id).await?;
    service::delete_gateway(&state, id).await?;
    Ok(Json(OkResponse::ok()))
}

/// Body of a template sync; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct TemplateSyncRequest {
    /// Mint a new token for every agent instead of reusing the one in its workspace.
    rotate_tokens: Option<bool>,
}

/// What a template sync did, per agent (the main agent first when it had to be created).
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSyncRead {
    /// The gateway synced.
    gateway_id: Uuid,
    /// Whether every token was rotated on request.
    rotate_tokens: bool,
    /// One result per agent on the gateway.
    agents: Vec<AgentSyncResult>,
}

/// Re-renders every agent's workspace files on a managed gateway and writes them again,
/// reusing each agent's current token unless `rotate_tokens` (or unless its workspace no
/// longer holds it); gives the gateway its main agent when missing. Bounded in time.
#[utoipa::path(post, path = "/api/v1/gateways/{gateway_id}/templates/sync", tag = "gateways",
    params(("gateway_id" = Uuid, Path)), request_body(content = Option<TemplateSyncRequest>,
        description = "Empty, `{}`, or `{\"rotate_tokens\": true}`"),
    responses((status = 200, body = TemplateSyncRead), (status = 404),
        (status = 409, description = "Unmanaged gateway, or a sync of it is already running"),
        (status = 422), (status = 502, description = "The gateway did not answer; nothing changed")))]
pub async fn sync_gateway_templates(
    _: Admin,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
    ApiJson(body): ApiJson<TemplateSyncRequest>,
) -> ApiResult<Json<TemplateSyncRead>> {
    let id = path_id(&gateway_id, "gateway_id")?;
    let gateway = load_gateway(&state, id).await?;
    let rotate_tokens = body.rotate_tokens.unwrap_or(false);
    let agents = templates_sync::sync_gateway(&state, &gateway, rotate_tokens).await?;
    Ok(Json(TemplateSyncRead {
        gateway_id: gateway.id.as_uuid(),
        rotate_tokens,
        agents,
    }))
}
