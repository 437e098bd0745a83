//! Which token an agent's workspace files are written with, when no freshly minted one is
//! at hand (an update job, any job after a restart, a template sync).
//!
//! Plaintext tokens are never stored, so the agent's credentials file is read back from the
//! gateway (`agents.files.get`) and `AUTH_TOKEN` parsed with the parser the agent itself
//! uses; that token is kept when its digest is still the agent's current one. Only a file
//! holding no token, or another one, leads to a new token. The read comes first, and a
//! failed read fails the caller before anything is minted: minting kills the agent's
//! working token, so it must never happen for a gateway that then cannot take the new one.
//! Provisioning jobs and the template sync share this one decision.

use std::sync::Arc;

use mc_domain::credentials::credential_value;
use mc_domain::ids::AgentId;
use mc_domain::token::{Secret, TokenDigest};
use mc_gateway::{GatewayError, GatewayGeneration, GatewayHandle};

use super::plan::credentials_file;
use crate::error::ApiError;
use crate::liveness::LiveAgent;
use crate::services::agents::rotate_token;
use crate::state::AppState;

/// The token to write, and whether (and why) it is new.
#[derive(Debug)]
pub struct TokenChoice {
    /// The plaintext token.
    pub token: Secret,
    /// Whether it was minted now (the previous token no longer works).
    pub rotated: bool,
    /// Why a new token was minted.
    pub note: Option<String>,
}

/// Why no token could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading the credentials file failed; nothing was minted.
    #[error("reading the agent's credentials failed: {0}")]
    Read(GatewayError),
    /// Minting a new token failed.
    #[error("minting a new token failed: {0}")]
    Mint(ApiError),
}

/// Whether `token` is the current token of the agent `agent`.
pub fn is_current(state: &AppState, agent: AgentId, token: &Secret) -> bool {
    state
        .registry
        .by_token(&TokenDigest::of(token.expose()))
        .is_some_and(|holder| holder.id() == agent)
}

/// Mints a new token for `agent` (recorded as `agent.token_rotated`), saying `why`.
pub async fn mint(
    state: &AppState,
    agent: &Arc<LiveAgent>,
    why: String,
) -> Result<TokenChoice, TokenError> {
    let token = rotate_token(state, agent).await.map_err(TokenError::Mint)?;
    Ok(TokenChoice {
        token,
        rotated: true,
        note: Some(why),
    })
}

/// The token in `agent`'s credentials file on the gateway when it is still the agent's
/// current one, else a newly minted one (with the reason). `gateway_agent_id` names the
/// agent on the gateway, whose `generation` tells which file holds the credentials. A
/// gateway that fails the read (down, timing out, not knowing the agent) returns
/// [`TokenError::Read`] and nothing is minted.
pub async fn keep_or_mint(
    state: &AppState,
    handle: &GatewayHandle,
    generation: GatewayGeneration,
    agent: &Arc<LiveAgent>,
    gateway_agent_id: &str,
) -> Result<TokenChoice, TokenError> {
    let file = credentials_file(generation);
    let read = handle
        .agents_files_get(gateway_agent_id, file)
        .await
        .map_err(TokenError::Read)?;
    let content = read.file.content.unwrap_or_default();
    let why = match credential_value(&content, "AUTH_TOKEN") {
        Some(found) => {
            let found = Secret::new(found);
            if is_current(state, agent.id(), &found) {
                return Ok(TokenChoice {
                    token: found,
                    rotated: false,
                    note: None,
                });
            }
            format!(
                "the AUTH_TOKEN in {file} is not the agent's current token; a new one was minted"
            )
        }
        None => format!("{file} holds no AUTH_TOKEN; a new token was minted"),
    };
    mint(state, agent, why).await
}
