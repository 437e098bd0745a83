//! Registering and changing gateways: the validation rules shared by the REST API and the
//! dashboard. The gateway token is write-only everywhere.

use mc_domain::board::required_text;
use mc_domain::gateway::{Gateway, GatewayUrl};
use mc_domain::ids::GatewayId;
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_domain::{FieldError, ValidationErrors};

use crate::error::{ApiError, ApiResult};
use crate::services::agents::deleted_event;
use crate::state::AppState;

/// Fields of a gateway to create or change; `None` leaves a field as it is (on create:
/// empty/false). `token: Some(None)` removes the stored token.
#[derive(Debug, Default)]
pub struct GatewayFields {
    /// Display name.
    pub name: Option<String>,
    /// `ws://` or `wss://` URL; empty for an unmanaged gateway.
    pub url: Option<String>,
    /// The gateway's auth token.
    pub token: Option<Option<String>>,
    /// Workspace root on the gateway host (required for managed gateways).
    pub workspace_root: Option<String>,
    /// Accept self-signed TLS certificates.
    pub allow_insecure_tls: Option<bool>,
    /// Skip device pairing.
    pub disable_device_pairing: Option<bool>,
}

fn token_of(raw: Option<String>) -> Option<Secret> {
    raw.map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(Secret::new)
}

fn check_workspace_root(url: &GatewayUrl, root: &str) -> Result<(), ValidationErrors> {
    if url.is_managed() && root.trim().is_empty() {
        return Err(ValidationErrors::one(FieldError::body(
            "workspace_root",
            "workspace_root is required for a managed gateway (one with a url)",
        )));
    }
    Ok(())
}

/// Applies `fields` to `gateway`, all or nothing: on any invalid field nothing changes.
fn apply(gateway: &mut Gateway, fields: GatewayFields) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let name = fields
        .name
        .as_deref()
        .and_then(|n| errors.collect(required_text(n, "name", 200)));
    let url = fields
        .url
        .as_deref()
        .and_then(|u| errors.collect(GatewayUrl::parse(u)));
    let root = fields
        .workspace_root
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|| gateway.workspace_root.clone());
    if let Some(url) = url
        .as_ref()
        .or((fields.url.is_none()).then_some(&gateway.url))
    {
        errors.collect(check_workspace_root(url, &root));
    }
    errors.into_result()?;
    if let Some(name) = name {
        gateway.name = name;
    }
    if let Some(url) = url {
        gateway.url = url;
    }
    gateway.workspace_root = root;
    if let Some(token) = fields.token {
        gateway.token = token_of(token);
    }
    if let Some(flag) = fields.allow_insecure_tls {
        gateway.allow_insecure_tls = flag;
    }
    if let Some(flag) = fields.disable_device_pairing {
        gateway.disable_device_pairing = flag;
    }
    Ok(())
}

/// Registers a gateway; the name is required, an empty url makes it unmanaged.
pub async fn create_gateway(state: &AppState, mut fields: GatewayFields) -> ApiResult<Gateway> {
    let now = Timestamp::now();
    fields.name.get_or_insert_default();
    fields.url.get_or_insert_default();
    let mut gateway = Gateway {
        id: GatewayId::new(),
        organization_id: state.organization_id,
        name: String::new(),
        url: GatewayUrl::from_stored(String::new()),
        token: None,
        workspace_root: String::new(),
        allow_insecure_tls: false,
        disable_device_pairing: false,
        created_at: now,
        updated_at: now,
    };
    apply(&mut gateway, fields)?;
    state.store.insert_gateway(&gateway).await?;
    crate::provision::connect_gateway(&state.gateways, &gateway);
    Ok(gateway)
}

/// Changes a gateway's fields and stores it.
pub async fn update_gateway(
    state: &AppState,
    mut gateway: Gateway,
    fields: GatewayFields,
) -> ApiResult<Gateway> {
    apply(&mut gateway, fields)?;
    gateway.updated_at = Timestamp::now();
    state.store.update_gateway(&gateway).await?;
    crate::provision::connect_gateway(&state.gateways, &gateway);
    Ok(gateway)
}

/// Deletes a gateway with its main agents; 409 while boards use it, 404 when it is gone.
pub async fn delete_gateway(state: &AppState, id: GatewayId) -> ApiResult<()> {
    let events: Vec<_> = state
        .registry
        .agents_where(|agent| agent.gateway_id == id && agent.is_gateway_main())
        .iter()
        .map(|agent| deleted_event(agent, " with its gateway"))
        .collect();
    let deleted = state
        .store
        .delete_gateway(id, &events)
        .await?
        .ok_or(ApiError::NotFound("Gateway not found"))?;
    for agent in deleted {
        state.registry.remove(agent);
    }
    state.gateways.remove(id);
    Ok(())
}
