//! Creating, changing and deleting boards: the validation rules shared by the REST API
//! and the dashboard, and what deleting a board does to its agents.

use std::collections::{HashMap, HashSet};

use mc_domain::board::{Board, BoardRules, Slug, required_text};
use mc_domain::ids::{BoardId, GatewayId};
use mc_domain::liveness::JobInProgress;
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_domain::{FieldError, ValidationErrors};
use mc_store::{AgentFilter, ProvisionAction};

use crate::error::{ApiError, ApiResult};
use crate::services::agents::deleted_event;
use crate::state::AppState;

/// Fields of a board to create or change; `None` leaves a field as it is. On create,
/// name, slug, description and gateway are required.
#[derive(Debug, Default)]
pub struct BoardFields {
    /// Display name.
    pub name: Option<String>,
    /// URL-safe unique key.
    pub slug: Option<String>,
    /// What the board is for.
    pub description: Option<String>,
    /// The gateway its agents run on.
    pub gateway_id: Option<GatewayId>,
    /// Rule flag.
    pub require_approval_for_done: Option<bool>,
    /// Rule flag.
    pub require_review_before_done: Option<bool>,
    /// Rule flag.
    pub comment_required_for_review: Option<bool>,
    /// Rule flag.
    pub block_status_changes_with_pending_approval: Option<bool>,
    /// Rule flag.
    pub only_lead_can_change_status: Option<bool>,
    /// Agent limit (0 = unlimited).
    pub max_agents: Option<i64>,
}

/// Applies `fields` to `board`, all or nothing; `creating` makes name, slug,
/// description and gateway_id required.
async fn apply(
    state: &AppState,
    board: &mut Board,
    fields: BoardFields,
    creating: bool,
) -> ApiResult<()> {
    let mut errors = ValidationErrors::default();
    let require = |field: &str, value: &Option<String>, errors: &mut ValidationErrors| {
        if creating && value.is_none() {
            errors.0.push(FieldError::new(
                ["body", field],
                format!("{field} is required"),
                "missing",
            ));
        }
    };
    require("name", &fields.name, &mut errors);
    require("slug", &fields.slug, &mut errors);
    require("description", &fields.description, &mut errors);
    let name = fields
        .name
        .as_deref()
        .and_then(|v| errors.collect(required_text(v, "name", 200)));
    let slug = fields
        .slug
        .as_deref()
        .and_then(|v| errors.collect(Slug::parse(v)));
    let description = fields
        .description
        .as_deref()
        .and_then(|v| errors.collect(required_text(v, "description", 10_000)));
    let max_agents = match fields.max_agents {
        Some(n) if !(0..=i64::from(u32::MAX)).contains(&n) => {
            errors.0.push(FieldError::body(
                "max_agents",
                "max_agents must be 0 or more",
            ));
            None
        }
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        None => None,
    };
    match fields.gateway_id {
        Some(id) => {
            let exists = state
                .store
                .gateway(id)
                .await?
                .is_some_and(|g| g.organization_id == state.organization_id);
            if !exists {
                errors.0.push(FieldError::body(
                    "gateway_id",
                    "gateway_id does not name an existing gateway",
                ));
            }
        }
        None if creating => errors.0.push(FieldError::new(
            ["body", "gateway_id"],
            "gateway_id is required",
            "missing",
        )),
        None => {}
    }
    errors.into_result()?;
    if let Some(name) = name {
        board.name = name;
    }
    if let Some(slug) = slug {
        board.slug = slug;
    }
    if let Some(text) = description {
        board.description = text;
    }
    if let Some(id) = fields.gateway_id {
        board.gateway_id = id;
    }
    let rules = &mut board.rules;
    if let Some(n) = max_agents {
        rules.max_agents = n;
    }
    for (value, flag) in [
        (
            fields.require_approval_for_done,
            &mut rules.require_approval_for_done,
        ),
        (
            fields.require_review_before_done,
            &mut rules.require_review_before_done,
        ),
        (
            fields.comment_required_for_review,
            &mut rules.comment_required_for_review,
        ),
        (
            fields.block_status_changes_with_pending_approval,
            &mut rules.block_status_changes_with_pending_approval,
        ),
        (
            fields.only_lead_can_change_status,
            &mut rules.only_lead_can_change_status,
        ),
    ] {
        if let Some(value) = value {
            *flag = value;
        }
    }
    Ok(())
}

fn blank_board(state: &AppState) -> Board {
    let now = Timestamp::now();
    Board {
        id: BoardId::new(),
        organization_id: state.organization_id,
        name: String::new(),
        slug: Slug::from_stored(String::new()),
        description: String::new(),
        gateway_id: GatewayId::from_uuid(uuid::Uuid::nil()),
        rules: BoardRules::default(),
        created_at: now,
        updated_at: now,
    }
}

/// Creates a board.
pub async fn create_board(state: &AppState, fields: BoardFields) -> ApiResult<Board> {
    let mut board = blank_board(state);
    apply(state, &mut board, fields, true).await?;
    state.store.insert_board(&board).await?;
    Ok(board)
}

/// Checks the fields of a board to create without creating it (to report every invalid
/// field at once when the caller already found some invalid).
pub async fn check_new_board(state: &AppState, fields: BoardFields) -> ApiResult<()> {
    apply(state, &mut blank_board(state), fields, true).await
}

/// Checks changes to a board without storing them (to report every invalid field at once
/// when the caller already found some invalid).
pub async fn check_board_update(
    state: &AppState,
    board: Board,
    fields: BoardFields,
) -> ApiResult<()> {
    apply(state, &mut board.clone(), fields, false).await
}

/// Changes a board and stores it.
pub async fn update_board(
    state: &AppState,
    mut board: Board,
    fields: BoardFields,
) -> ApiResult<Board> {
    apply(state, &mut board, fields, false).await?;
    board.updated_at = Timestamp::now();
    state.store.update_board(&board).await?;
    Ok(board)
}

/// The board with this id in the default organisation, or 404.
pub async fn load_board(state: &AppState, id: BoardId) -> ApiResult<Board> {
    state
        .store
        .board(id)
        .await?
        .filter(|b| b.organization_id == state.organization_id)
        .ok_or(ApiError::NotFound("Board not found"))
}

/// Deletes a board with its agents and enrollment tokens; 404 when it does not exist.
///
/// The agents leave Mission Control at once (their tokens stop working; one
/// `agent.deleted` event each). Those Mission Control created on a managed gateway get a
/// delete job that removes them from the gateway afterwards, stored in the transaction that
/// deletes the board, so that no crash can delete the board and lose the clean-up. An
/// agent whose own delete job is queued already is left to that job.
pub async fn delete_board(state: &AppState, id: BoardId) -> ApiResult<()> {
    load_board(state, id).await?;
    // As stored rather than as this replica has followed them: an agent another replica
    // created a moment ago is deleted too, so it needs its event and its clean-up.
    let agents = state
        .store
        .list_agents(
            AgentFilter {
                board_id: Some(id),
                gateway_id: None,
            },
            PageRequest {
                limit: u32::MAX,
                offset: 0,
            },
        )
        .await?;
    let mut gateways = HashMap::new();
    for agent in &agents {
        if agent.is_mc_agent && !gateways.contains_key(&agent.gateway_id) {
            let gateway = state.store.gateway(agent.gateway_id).await?;
            gateways.insert(agent.gateway_id, gateway);
        }
    }
    let mut events = Vec::with_capacity(agents.len());
    let mut cleanup = Vec::new();
    for agent in &agents {
        let removing = state
            .registry
            .get(agent.id)
            .is_some_and(|live| live.job_in_progress() == Some(JobInProgress::Delete));
        let job = gateways
            .get(&agent.gateway_id)
            .and_then(Option::as_ref)
            .filter(|_| !removing)
            .and_then(|gateway| crate::provision::job_on(agent, gateway, ProvisionAction::Delete));
        let reason = match (&job, removing) {
            (Some(_), _) => " with its board; a delete job removes it from its gateway",
            (None, true) => " with its board; its delete job removes it from its gateway",
            (None, false) => " with its board",
        };
        events.push(deleted_event(agent, reason));
        cleanup.extend(job);
    }
    let deleted = state
        .store
        .delete_board(id, &events, &cleanup)
        .await?
        .ok_or(ApiError::NotFound("Board not found"))?;
    let known: HashSet<_> = agents.iter().map(|agent| agent.id).collect();
    for agent in deleted {
        if !known.contains(&agent) {
            // Created in the moment between the read above and the deletion.
            tracing::warn!(agent.id = %agent, board.id = %id, "an agent created while its board was deleted went with it; no job removes it from its gateway");
        }
        state.provisioner.forget_token(agent);
        state.registry.remove(agent);
    }
    if !cleanup.is_empty() {
        state.provisioner.notify();
    }
    Ok(())
}
