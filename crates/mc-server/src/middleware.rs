//! Cross-cutting HTTP behaviour: request ids, security headers, the error envelope and
//! one log line per request (route, status, latency, request id).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

use crate::error::ErrorDetail;
use crate::state::SharedState;

/// The request id header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Assigns the request id, finishes error bodies, adds security headers and logs.
pub async fn around_request(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let mut response = next.run(request).await;

    if let Some(error) = response.extensions_mut().remove::<ErrorDetail>() {
        if let Some(reason) = &error.log {
            tracing::error!(request.id = %id, http.route = %route, error = %reason, "request failed");
        }
        let body = json!({"detail": error.detail, "request_id": id}).to_string();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }

    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID.clone(), value);
    }
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(route, &method, status, elapsed);
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    // Health checks and successful heartbeats are routine (thousands a second with a large
    // fleet): they log at debug; everything else, and every failure, at info.
    let routine = route == "/healthz"
        || route == "/readyz"
        || (route.ends_with("/heartbeat") && status < 400);
    if routine {
        tracing::debug!(http.method = %method, http.route = %route, http.status = status, duration_ms, request.id = %id, "request");
    } else {
        tracing::info!(http.method = %method, http.route = %route, http.status = status, duration_ms, request.id = %id, "request");
    }
    response
}
