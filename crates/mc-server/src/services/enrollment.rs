//! Issuing and revoking enrollment tokens, shared by the REST API and the dashboard.

use mc_domain::enrollment::{EnrollmentTerms, EnrollmentToken};
use mc_domain::ids::{BoardId, EnrollmentTokenId};
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, generate_enrollment_token};

use crate::error::{ApiError, ApiResult};
use crate::services::boards::load_board;
use crate::state::AppState;

/// Issues an enrollment token for a board; the secret is returned once, only its digest
/// is stored.
pub async fn issue_enrollment_token(
    state: &AppState,
    board_id: BoardId,
    expires_in_seconds: Option<i64>,
    max_uses: Option<i64>,
) -> ApiResult<(EnrollmentToken, Secret)> {
    load_board(state, board_id).await?;
    let terms = EnrollmentTerms::parse(expires_in_seconds, max_uses)?;
    let now = Timestamp::now();
    let secret = generate_enrollment_token();
    let token = EnrollmentToken {
        id: EnrollmentTokenId::new(),
        board_id,
        expires_at: now.plus_seconds(terms.expires_in_seconds),
        max_uses: terms.max_uses,
        uses: 0,
        revoked_at: None,
        created_at: now,
    };
    state
        .store
        .insert_enrollment_token(&token, secret.digest())
        .await?;
    Ok((token, secret))
}

/// Revokes a board's enrollment token: it stops working at once.
pub async fn revoke_enrollment_token(
    state: &AppState,
    board_id: BoardId,
    token_id: EnrollmentTokenId,
) -> ApiResult<EnrollmentToken> {
    load_board(state, board_id).await?;
    state
        .store
        .revoke_enrollment_token(board_id, token_id, Timestamp::now())
        .await?
        .ok_or(ApiError::NotFound("Enrollment token not found"))
}
