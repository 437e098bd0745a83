//! Registering and changing gateways: the validation rules shared by the REST API and the
//! dashboard. The gateway token is write-only everywhere.

use std::sync::Arc;

use mc_domain::activity::EventType;
use mc_domain::agent::{Agent, AgentName, MAX_AGENT_NAME_CHARS};
use mc_domain::board::required_text;
use mc_domain::gateway::{Gateway, GatewayUrl};
use mc_domain::ids::GatewayId;
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, generate_agent_token};
use mc_domain::{FieldError, ValidationErrors};
use mc_store::ProvisionAction;

use crate::error::{ApiError, ApiResult};
use crate::liveness::LiveAgent;
use crate::provision::plan;
use crate::services::agents::{agent_event, deleted_event, store_created};
use crate::state::{AppState, SharedState};

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
pub async fn create_gateway(state: &SharedState, mut fields: GatewayFields) -> ApiResult<Gateway> {
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
    ensure_main_agent(state, &gateway).await?;
    Ok(gateway)
}

/// Changes a gateway's fields and stores it.
pub async fn update_gateway(
    state: &SharedState,
    mut gateway: Gateway,
    fields: GatewayFields,
) -> ApiResult<Gateway> {
    apply(&mut gateway, fields)?;
    gateway.updated_at = Timestamp::now();
    state.store.update_gateway(&gateway).await?;
    crate::provision::connect_gateway(&state.gateways, &gateway);
    ensure_main_agent(state, &gateway).await?;
    Ok(gateway)
}

/// How long deleting a managed gateway may spend removing one agent from it.
const AGENT_REMOVAL_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// An agent to remove from a gateway before the gateway is deleted.
struct Removal {
    /// How the refusal names it when its removal fails.
    who: String,
    gateway_agent_id: String,
    session_key: String,
}

/// Deletes a gateway with its main agents; 409 while boards use it, 404 when it is gone.
/// A managed gateway's main agents, and the agents of deleted boards whose delete jobs have
/// not removed them yet, are removed from the gateway first (once the gateway is gone,
/// those jobs have nothing left to contact); when that fails the answer is 409 and nothing
/// is deleted.
pub async fn delete_gateway(state: &AppState, id: GatewayId) -> ApiResult<()> {
    let gateway = state
        .store
        .gateway(id)
        .await?
        .filter(|g| g.organization_id == state.organization_id)
        .ok_or(ApiError::NotFound("Gateway not found"))?;
    let main_agents = state
        .registry
        .agents_where(|agent| agent.gateway_id == id && agent.is_gateway_main());
    if gateway.url.is_managed() {
        let removals = removals_before_deleting(state, &gateway, &main_agents).await?;
        if !removals.is_empty() {
            let boards = state
                .store
                .list_boards(
                    state.organization_id,
                    Some(id),
                    PageRequest {
                        limit: 1,
                        offset: 0,
                    },
                )
                .await?;
            if boards.total > 0 {
                return Err(
                    mc_store::StoreError::Conflict(mc_store::Constraint::GatewayHasBoards).into(),
                );
            }
            remove_agents(state, &gateway, &removals).await?;
        }
    }
    let events: Vec<_> = main_agents
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

/// What deleting the managed `gateway` removes from it first: its main agents, and the
/// agents that pending delete jobs still have to remove (e.g. those of a deleted board).
async fn removals_before_deleting(
    state: &AppState,
    gateway: &Gateway,
    main_agents: &[Arc<Agent>],
) -> ApiResult<Vec<Removal>> {
    let mut removals: Vec<Removal> = main_agents
        .iter()
        .map(|agent| {
            let placement = plan::placement_of(agent, gateway);
            Removal {
                who: "the gateway's main agent".to_owned(),
                gateway_agent_id: placement.gateway_agent_id,
                session_key: placement.session_key,
            }
        })
        .collect();
    let pending = state.store.unfinished_provision_jobs().await?;
    for job in pending {
        let (Some(gateway_agent_id), Some(session_key)) = (job.gateway_agent_id, job.session_key)
        else {
            continue;
        };
        let known = removals
            .iter()
            .any(|removal| removal.gateway_agent_id == gateway_agent_id);
        if job.gateway_id == gateway.id && job.action == ProvisionAction::Delete && !known {
            removals.push(Removal {
                who: format!("agent {} (delete job {})", job.agent_id, job.id),
                gateway_agent_id,
                session_key,
            });
        }
    }
    Ok(removals)
}

/// Removes `removals` from the managed `gateway`, each within [`AGENT_REMOVAL_LIMIT`].
async fn remove_agents(state: &AppState, gateway: &Gateway, removals: &[Removal]) -> ApiResult<()> {
    let refused = |who: &str, why: String| {
        ApiError::Conflict(format!(
            "{who} could not be removed from the gateway ({why}); nothing was deleted. Retry when the gateway is reachable, or clear the gateway's url to delete it without contacting it."
        ))
    };
    crate::provision::connect_gateway(&state.gateways, gateway);
    let handle = state.gateways.get(gateway.id).ok_or_else(|| {
        let who = removals.first().map_or("an agent", |removal| &removal.who);
        refused(who, "no connection".to_owned())
    })?;
    for removal in removals {
        let attempt = plan::remove(&handle, &removal.gateway_agent_id, &removal.session_key);
        match tokio::time::timeout(AGENT_REMOVAL_LIMIT, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(refused(&removal.who, error.to_string())),
            Err(_) => {
                return Err(refused(
                    &removal.who,
                    format!("no answer within {} s", AGENT_REMOVAL_LIMIT.as_secs()),
                ));
            }
        }
    }
    Ok(())
}

/// The main agent's name: the gateway's name and " main agent", within the name limit.
fn main_agent_name(gateway: &Gateway) -> AgentName {
    const SUFFIX: &str = " main agent";
    let room = MAX_AGENT_NAME_CHARS - SUFFIX.chars().count();
    let base: String = gateway.name.chars().take(room).collect();
    AgentName::parse(&format!("{}{SUFFIX}", base.trim()), "name")
        .unwrap_or_else(|_| AgentName::from_stored("Gateway main agent".to_owned()))
}

/// Gives a managed gateway its main agent (no board) when it has none: created with a
/// fresh token and stored with its provisioning job in one transaction, finished even if
/// the caller goes away. Returns the agent when one was created. Unmanaged gateways get none (nothing would provision it).
pub async fn ensure_main_agent(
    state: &SharedState,
    gateway: &Gateway,
) -> ApiResult<Option<Arc<LiveAgent>>> {
    if !gateway.url.is_managed() {
        return Ok(None);
    }
    // One check-then-create at a time, so a gateway never gets two main agents.
    let _creating = state.provisioner.main_agent_lock.lock().await;
    let has_main = !state
        .registry
        .agents_where(|a| a.gateway_id == gateway.id && a.is_gateway_main())
        .is_empty();
    if has_main {
        return Ok(None);
    }
    let agent = Agent::new(None, gateway.id, main_agent_name(gateway), Timestamp::now());
    let event = agent_event(
        &agent,
        EventType::AgentCreated,
        format!(
            "Agent {} was created as the main agent of gateway {}.",
            agent.name, gateway.name
        ),
    );
    match store_created(state, agent, generate_agent_token(), None, event).await {
        Ok(live) => Ok(Some(live)),
        // Another replica created it a moment ago (a main agent has no board, so its
        // name cannot collide: the only conflict is the one-main-agent rule).
        Err(ApiError::Conflict(_)) => Ok(None),
        Err(error) => Err(error),
    }
}
