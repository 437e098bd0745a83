//! The HTTP surface: `/api/v1` by resource, the dashboard at `/`, health checks and the
//! OpenAPI document.
//! [`router`] is pure: state in, `Router` out.

pub mod health;
pub mod openapi;
pub mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::error::ApiError;
use crate::state::SharedState;

/// The whole application's routes.
pub fn router(state: SharedState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .nest("/api/v1", v1::router())
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::NotFound("Not Found") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::middleware::around_request,
        ))
        .with_state(state)
}
