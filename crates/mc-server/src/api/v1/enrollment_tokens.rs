//! `/api/v1/boards/{board_id}/enrollment-tokens`: issue, list and revoke the tokens that
//! let new agents join a board on their first heartbeat.

use axum::Json;
use axum::extract::{Path, State};
use mc_domain::enrollment::EnrollmentToken;
use mc_domain::ids::{BoardId, EnrollmentTokenId};
use mc_domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::boards::load_board;
use super::{OkResponse, PageOf};
use crate::auth::Admin;
use crate::error::ApiResult;
use crate::extract::{ApiJson, QueryParams, path_id};
use crate::services::enrollment as service;
use crate::state::SharedState;

/// An enrollment token as read; `token` only in the answer that creates it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenRead {
    id: Uuid,
    board_id: Uuid,
    /// The secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    expires_at: Timestamp,
    max_uses: Option<u32>,
    uses: u32,
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
}

impl From<EnrollmentToken> for EnrollmentTokenRead {
    fn from(t: EnrollmentToken) -> Self {
        Self {
            id: t.id.as_uuid(),
            board_id: t.board_id.as_uuid(),
            token: None,
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: t.uses,
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

/// Terms of a new enrollment token.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EnrollmentTokenCreate {
    /// Lifetime in seconds (60 to one year; default one day).
    expires_in_seconds: Option<i64>,
    /// How many agents it may create (default unlimited).
    max_uses: Option<i64>,
}

/// Issues an enrollment token for a board.
#[utoipa::path(post, path = "/api/v1/boards/{board_id}/enrollment-tokens", tag = "enrollment-tokens",
    params(("board_id" = Uuid, Path)), request_body = EnrollmentTokenCreate,
    responses((status = 200, body = EnrollmentTokenRead), (status = 404), (status = 422)))]
pub async fn create_enrollment_token(
    _: Admin,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    ApiJson(body): ApiJson<EnrollmentTokenCreate>,
) -> ApiResult<Json<EnrollmentTokenRead>> {
    let board_id: BoardId = path_id(&board_id, "board_id")?;
    let (token, secret) =
        service::issue_enrollment_token(&state, board_id, body.expires_in_seconds, body.max_uses)
            .await?;
    let mut read = EnrollmentTokenRead::from(token);
    read.token = Some(secret.expose().to_owned());
    Ok(Json(read))
}

/// Lists a board's enrollment tokens (without secrets).
#[utoipa::path(get, path = "/api/v1/boards/{board_id}/enrollment-tokens", tag = "enrollment-tokens",
    params(("board_id" = Uuid, Path), ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<EnrollmentTokenRead>), (status = 404)))]
pub async fn list_enrollment_tokens(
    _: Admin,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<EnrollmentTokenRead>>> {
    let board_id: BoardId = path_id(&board_id, "board_id")?;
    let request = query.page()?;
    load_board(&state, board_id).await?;
    let page = state
        .store
        .list_enrollment_tokens(board_id, request)
        .await?;
    Ok(Json(PageOf::from_page(
        page,
        request,
        EnrollmentTokenRead::from,
    )))
}

/// Revokes an enrollment token: it stops working at once.
#[utoipa::path(delete, path = "/api/v1/boards/{board_id}/enrollment-tokens/{token_id}", tag = "enrollment-tokens",
    params(("board_id" = Uuid, Path), ("token_id" = Uuid, Path)),
    responses((status = 200, body = OkResponse), (status = 404)))]
pub async fn revoke_enrollment_token(
    _: Admin,
    State(state): State<SharedState>,
    Path((board_id, token_id)): Path<(String, String)>,
) -> ApiResult<Json<OkResponse>> {
    let board_id: BoardId = path_id(&board_id, "board_id")?;
    let token_id: EnrollmentTokenId = path_id(&token_id, "token_id")?;
    service::revoke_enrollment_token(&state, board_id, token_id).await?;
    Ok(Json(OkResponse::ok()))
}
