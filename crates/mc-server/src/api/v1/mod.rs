//! `/api/v1`: handlers grouped by resource.

pub mod activity;
pub mod agents;
pub mod boards;
pub mod enrollment_tokens;
pub mod gateways;
pub mod heartbeats;
pub mod provision_jobs;
pub mod streams;
pub mod webhooks;

use axum::Router;
use axum::routing::{get, post};
use mc_domain::page::{Page, PageRequest};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::state::SharedState;

/// The `/api/v1` routes.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route(
            "/gateways",
            get(gateways::list_gateways).post(gateways::create_gateway),
        )
        .route(
            "/gateways/{gateway_id}",
            get(gateways::get_gateway)
                .patch(gateways::update_gateway)
                .delete(gateways::delete_gateway),
        )
        .route(
            "/agents/{agent_id}/provision-jobs",
            get(provision_jobs::list_provision_jobs),
        )
        .route(
            "/agents/{agent_id}/provision",
            post(provision_jobs::provision_agent),
        )
        .route(
            "/gateways/{gateway_id}/status",
            get(gateways::gateway_status),
        )
        .route(
            "/boards",
            get(boards::list_boards).post(boards::create_board),
        )
        .route(
            "/boards/{board_id}",
            get(boards::get_board)
                .patch(boards::update_board)
                .delete(boards::delete_board),
        )
        .route(
            "/boards/{board_id}/enrollment-tokens",
            get(enrollment_tokens::list_enrollment_tokens)
                .post(enrollment_tokens::create_enrollment_token),
        )
        .route(
            "/boards/{board_id}/enrollment-tokens/{token_id}",
            axum::routing::delete(enrollment_tokens::revoke_enrollment_token),
        )
        .route(
            "/agents",
            get(agents::list_agents).post(agents::create_agent),
        )
        .route("/agents/heartbeat", post(heartbeats::heartbeat_by_name))
        .route("/agents/stream", get(streams::agents_stream))
        .route(
            "/agents/{agent_id}",
            get(agents::get_agent)
                .patch(agents::update_agent)
                .delete(agents::delete_agent),
        )
        .route(
            "/agents/{agent_id}/heartbeat",
            post(heartbeats::heartbeat_agent),
        )
        .route("/agents/{agent_id}/token", post(agents::rotate_agent_token))
        .route("/agent/heartbeat", post(heartbeats::heartbeat_own))
        .route("/activity", get(activity::list_activity))
        .route("/activity/stream", get(streams::activity_stream))
        .route(
            "/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route(
            "/webhooks/{webhook_id}",
            get(webhooks::get_webhook)
                .patch(webhooks::update_webhook)
                .delete(webhooks::delete_webhook),
        )
        .route(
            "/webhooks/{webhook_id}/deliveries",
            get(webhooks::list_deliveries),
        )
}

/// A page of results: `{items, total, limit, offset}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageOf<T> {
    /// This page's rows.
    pub items: Vec<T>,
    /// Rows matching before paging.
    pub total: u64,
    /// Page size asked for.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u64,
}

impl<T> PageOf<T> {
    /// Maps a store page into a response page.
    pub fn from_page<U>(page: Page<U>, request: PageRequest, map: impl FnMut(U) -> T) -> Self {
        Self {
            items: page.items.into_iter().map(map).collect(),
            total: page.total,
            limit: request.limit,
            offset: request.offset,
        }
    }
}

/// `{"ok": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OkResponse {
    /// Always true.
    pub ok: bool,
}

impl OkResponse {
    /// The success answer.
    pub const fn ok() -> Self {
        Self { ok: true }
    }
}

/// For PATCH bodies: distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`).
pub fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
