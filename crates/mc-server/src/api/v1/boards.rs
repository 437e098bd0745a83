//! `/api/v1/boards`: boards and their rule flags.

use axum::Json;
use axum::extract::{Path, State};
use mc_domain::board::Board;
use mc_domain::ids::{BoardId, GatewayId};
use mc_domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{OkResponse, PageOf};
use crate::auth::Admin;
use crate::error::ApiResult;
use crate::extract::{ApiJson, QueryParams, path_id};
use crate::services::boards::{self as service, BoardFields};
use crate::state::SharedState;

/// A board as read.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardRead {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    slug: String,
    description: String,
    gateway_id: Uuid,
    require_approval_for_done: bool,
    require_review_before_done: bool,
    comment_required_for_review: bool,
    block_status_changes_with_pending_approval: bool,
    only_lead_can_change_status: bool,
    max_agents: u32,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

impl From<Board> for BoardRead {
    fn from(b: Board) -> Self {
        Self {
            id: b.id.as_uuid(),
            organization_id: b.organization_id.as_uuid(),
            name: b.name,
            slug: b.slug.as_str().to_owned(),
            description: b.description,
            gateway_id: b.gateway_id.as_uuid(),
            require_approval_for_done: b.rules.require_approval_for_done,
            require_review_before_done: b.rules.require_review_before_done,
            comment_required_for_review: b.rules.comment_required_for_review,
            block_status_changes_with_pending_approval: b
                .rules
                .block_status_changes_with_pending_approval,
            only_lead_can_change_status: b.rules.only_lead_can_change_status,
            max_agents: b.rules.max_agents,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

/// A board to create, or changes to one (every field optional on PATCH).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct BoardWrite {
    name: Option<String>,
    slug: Option<String>,
    description: Option<String>,
    gateway_id: Option<Uuid>,
    require_approval_for_done: Option<bool>,
    require_review_before_done: Option<bool>,
    comment_required_for_review: Option<bool>,
    block_status_changes_with_pending_approval: Option<bool>,
    only_lead_can_change_status: Option<bool>,
    max_agents: Option<i64>,
}

impl From<BoardWrite> for BoardFields {
    fn from(body: BoardWrite) -> Self {
        Self {
            name: body.name,
            slug: body.slug,
            description: body.description,
            gateway_id: body.gateway_id.map(GatewayId::from_uuid),
            require_approval_for_done: body.require_approval_for_done,
            require_review_before_done: body.require_review_before_done,
            comment_required_for_review: body.comment_required_for_review,
            block_status_changes_with_pending_approval: body
                .block_status_changes_with_pending_approval,
            only_lead_can_change_status: body.only_lead_can_change_status,
            max_agents: body.max_agents,
        }
    }
}

/// Loads a board or answers 404.
pub async fn load_board(state: &SharedState, id: BoardId) -> ApiResult<Board> {
    service::load_board(state, id).await
}

/// Creates a board.
#[utoipa::path(post, path = "/api/v1/boards", tag = "boards", request_body = BoardWrite,
    responses((status = 200, body = BoardRead), (status = 409), (status = 422)))]
pub async fn create_board(
    _: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<BoardWrite>,
) -> ApiResult<Json<BoardRead>> {
    let board = service::create_board(&state, body.into()).await?;
    Ok(Json(board.into()))
}

/// Lists boards by name.
#[utoipa::path(get, path = "/api/v1/boards", tag = "boards",
    params(("gateway_id" = Option<Uuid>, Query), ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<BoardRead>)))]
pub async fn list_boards(
    _: Admin,
    State(state): State<SharedState>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<BoardRead>>> {
    let request = query.page()?;
    let gateway = query.id::<GatewayId>("gateway_id")?;
    let page = state
        .store
        .list_boards(state.organization_id, gateway, request)
        .await?;
    Ok(Json(PageOf::from_page(page, request, BoardRead::from)))
}

/// Reads a board.
#[utoipa::path(get, path = "/api/v1/boards/{board_id}", tag = "boards",
    params(("board_id" = Uuid, Path)), responses((status = 200, body = BoardRead), (status = 404)))]
pub async fn get_board(
    _: Admin,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
) -> ApiResult<Json<BoardRead>> {
    let id = path_id(&board_id, "board_id")?;
    Ok(Json(load_board(&state, id).await?.into()))
}

/// Changes a board.
#[utoipa::path(patch, path = "/api/v1/boards/{board_id}", tag = "boards",
    params(("board_id" = Uuid, Path)), request_body = BoardWrite,
    responses((status = 200, body = BoardRead), (status = 404), (status = 409), (status = 422)))]
pub async fn update_board(
    _: Admin,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    ApiJson(body): ApiJson<BoardWrite>,
) -> ApiResult<Json<BoardRead>> {
    let id = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let board = service::update_board(&state, board, body.into()).await?;
    Ok(Json(board.into()))
}

/// Deletes a board with its agents and enrollment tokens.
#[utoipa::path(delete, path = "/api/v1/boards/{board_id}", tag = "boards",
    params(("board_id" = Uuid, Path)), responses((status = 200, body = OkResponse), (status = 404)))]
pub async fn delete_board(
    _: Admin,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
) -> ApiResult<Json<OkResponse>> {
    service::delete_board(&state, path_id(&board_id, "board_id")?).await?;
    Ok(Json(OkResponse::ok()))
}
