//! One heartbeat at a time, with whatever credential the agent holds: its own token, or
//! on first contact an enrollment token, whose answer carries the agent's own token. That
//! token is saved (mode 0600) before it is used, and used from then on.

use std::path::PathBuf;

use mc_domain::token::Secret;

use super::credentials::{Credential, Origin, save_token};
use crate::client::Client;
use crate::error::{ClientError, Failure};
use crate::wire::{AgentRead, HealthStatus};

/// A heartbeat that did not go through, with advice for the operator when retrying with
/// the same settings cannot help.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// The request failed.
    #[error("{error}{}", advice.as_deref().map(|a| format!(". {a}")).unwrap_or_default())]
    Request {
        /// What went wrong.
        error: ClientError,
        /// What to do about it, when the operator must act.
        advice: Option<String>,
    },
    /// Enrollment succeeded but the answer did not carry the agent's token.
    #[error(
        "the enrollment answer carried no X-Agent-Token header, so the agent's own token is unknown; ask an admin to issue one (POST /api/v1/agents/{agent_id}/token) and pass it with --token"
    )]
    NoTokenInEnrollmentAnswer {
        /// The agent that was enrolled.
        agent_id: uuid::Uuid,
    },
    /// The agent's own token could not be kept.
    #[error(
        "cannot save the agent's token to {path}: {source}; fix the path or its permissions (the next enrollment attempt issues a new token)"
    )]
    SaveToken {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl BeatError {
    /// How a retrying caller should treat the error.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Request { error, .. } => error.failure(),
            Self::NoTokenInEnrollmentAnswer { .. } | Self::SaveToken { .. } => Failure::Permanent,
        }
    }
}

/// A successful heartbeat.
#[derive(Debug, Clone)]
pub struct BeatOutcome {
    /// The agent as the server sees it after the heartbeat.
    pub agent: AgentRead,
    /// Set when this heartbeat enrolled the agent: where its own token was saved.
    pub enrolled: Option<PathBuf>,
}

/// Sends heartbeats for one agent.
#[derive(Debug)]
pub struct Heartbeater {
    client: Client,
    credential: Credential,
}

impl Heartbeater {
    /// A heartbeater for the agent that `credential` identifies.
    pub fn new(client: Client, credential: Credential) -> Self {
        Self { client, credential }
    }

    /// Whether the agent holds its own token (it has been enrolled, or never needed to).
    pub fn has_own_token(&self) -> bool {
        matches!(self.credential, Credential::Token { .. })
    }

    /// The client in use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends one heartbeat reporting `status`; enrolls first when the agent has no token.
    pub async fn beat(&mut self, status: HealthStatus) -> Result<BeatOutcome, BeatError> {
        match &self.credential {
            Credential::Token { token, origin } => {
                match self.client.agent_heartbeat(token, status).await {
                    Ok(agent) => Ok(BeatOutcome {
                        agent,
                        enrolled: None,
                    }),
                    Err(error) => {
                        let advice = token_advice(&error, origin, self.client.base_url());
                        Err(BeatError::Request { error, advice })
                    }
                }
            }
            Credential::Enroll {
                token,
                name,
                board_id,
                save_to,
            } => {
                let enrolled = match self.client.enroll(token, name, *board_id, status).await {
                    Ok(enrolled) => enrolled,
                    Err(error) => {
                        let advice = enrollment_advice(&error, self.client.base_url());
                        return Err(BeatError::Request { error, advice });
                    }
                };
                let own: Secret = enrolled.token.ok_or(BeatError::NoTokenInEnrollmentAnswer {
                    agent_id: enrolled.agent.id,
                })?;
                save_token(save_to, &own).map_err(|source| BeatError::SaveToken {
                    path: save_to.clone(),
                    source,
                })?;
                let path = save_to.clone();
                self.credential = Credential::Token {
                    token: own,
                    origin: Origin::File(path.clone()),
                };
                Ok(BeatOutcome {
                    agent: enrolled.agent,
                    enrolled: Some(path),
                })
            }
        }
    }
}

fn base_url_advice(error: &ClientError, base_url: &str) -> Option<String> {
    (error.status() == Some(404)).then(|| {
        format!("{base_url} does not look like a Mission Control server: check the base URL")
    })
}

fn token_advice(error: &ClientError, origin: &Origin, base_url: &str) -> Option<String> {
    match error.status() {
        Some(401) => Some(format!(
            "The agent token from {origin} was refused: the agent may have been deleted or its token rotated. Put the agent's current token there, or remove it and enroll again with --enroll-token"
        )),
        Some(403) => Some(format!(
            "The agent token from {origin} is valid but not allowed to do this; ask an admin to check the agent"
        )),
        _ => base_url_advice(error, base_url),
    }
}

fn enrollment_advice(error: &ClientError, base_url: &str) -> Option<String> {
    match error.status() {
        Some(401) => Some(
            "The enrollment token was refused: it may be expired, revoked or used up. Ask an admin for a new one (POST /api/v1/boards/{board_id}/enrollment-tokens)".to_owned(),
        ),
        Some(403) => Some(
            "The enrollment token may not enroll this agent (another board, or the name is taken). If this agent was enrolled before, pass its own token with --token or --token-file".to_owned(),
        ),
        Some(409 | 422) => Some("Check --name and --board-id".to_owned()),
        _ => base_url_advice(error, base_url),
    }
}
