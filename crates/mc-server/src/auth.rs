//! Who is calling: the admin (bearer token), an agent (`X-Agent-Token`, or a bearer that
//! is an agent token) or a would-be agent holding an enrollment token.
//!
//! Agent authentication is one SHA-256 and one lookup in the in-memory index: O(1), no
//! database. Enrollment tokens (prefix `mce_`) are looked up in the database, and only
//! by the endpoint that accepts them.
//!
//! The dashboard's session cookie also counts as the admin, but only for safe methods
//! (GET, HEAD) and only when the request carries no other credential: the browser cannot
//! set headers on an `EventSource`, and cookie authentication on a state-changing JSON
//! request would be open to cross-site request forgery.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use mc_domain::token::{Secret, TokenDigest, is_enrollment_token};

use crate::error::{ApiError, ApiResult};
use crate::liveness::LiveAgent;
use crate::state::SharedState;

/// The header agents authenticate with.
pub const AGENT_TOKEN_HEADER: &str = "x-agent-token";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The administrator.
    Admin,
    /// An agent, by its own token.
    Agent(Arc<LiveAgent>),
    /// An enrollment token (not yet checked against the database).
    Enrollment(Secret),
}

impl Caller {
    /// Refuses anyone but the admin.
    pub fn require_admin(&self) -> ApiResult<()> {
        match self {
            Self::Admin => Ok(()),
            Self::Agent(_) => Err(ApiError::Forbidden(
                "this operation needs the admin token; agent tokens cannot use it".into(),
            )),
            Self::Enrollment(_) => Err(enrollment_not_accepted()),
        }
    }
}

fn enrollment_not_accepted() -> ApiError {
    ApiError::Unauthorized("enrollment tokens are accepted only by POST /api/v1/agents/heartbeat")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Identifies the caller from the request headers. An agent token is looked up in memory
/// (and, for a token another replica minted a moment ago, in the database once).
pub async fn authenticate(state: &SharedState, headers: &HeaderMap) -> ApiResult<Caller> {
    let agent_header = headers
        .get(AGENT_TOKEN_HEADER)
        .map(|v| v.to_str().map(str::trim).unwrap_or_default());
    let (token, may_be_admin) = match (agent_header, bearer(headers)) {
        (Some(token), _) => (token, false),
        (None, Some(token)) => (token, true),
        (None, None) => return Err(ApiError::Unauthorized("Unauthorized")),
    };
    if token.is_empty() {
        return Err(ApiError::Unauthorized("Unauthorized"));
    }
    if may_be_admin && state.admin_token.matches(token) {
        return Ok(Caller::Admin);
    }
    if is_enrollment_token(token) {
        return Ok(Caller::Enrollment(Secret::new(token)));
    }
    let agent = state
        .engine
        .agent_by_token(&TokenDigest::of(token))
        .await?
        .ok_or(ApiError::Unauthorized("Unauthorized"))?;
    state.registry.note_own_token_use(&agent);
    Ok(Caller::Agent(agent))
}

/// Identifies the caller from headers, then (for GET and HEAD without credentials) from
/// the dashboard's session cookie.
pub async fn authenticate_request(state: &SharedState, parts: &Parts) -> ApiResult<Caller> {
    let has_credentials = parts.headers.contains_key(AGENT_TOKEN_HEADER)
        || parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
    let safe = parts.method == Method::GET || parts.method == Method::HEAD;
    if !has_credentials
        && safe
        && crate::dashboard::session::session_from_headers(&state.admin_token, &parts.headers)
            .is_some()
    {
        return Ok(Caller::Admin);
    }
    authenticate(state, &parts.headers).await
}

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        authenticate_request(state, parts).await
    }
}

/// A caller that must be the admin (403 for agents, 401 otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        authenticate_request(state, parts).await?.require_admin()?;
        Ok(Self)
    }
}

/// A caller that must be an agent using its own token.
#[derive(Debug, Clone)]
pub struct AgentCaller(pub Arc<LiveAgent>);

impl FromRequestParts<SharedState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate(state, &parts.headers).await? {
            Caller::Agent(agent) => Ok(Self(agent)),
            Caller::Admin => Err(ApiError::Forbidden(
                "this endpoint is for agents: send the agent's own X-Agent-Token".into(),
            )),
            Caller::Enrollment(_) => Err(enrollment_not_accepted()),
        }
    }
}
