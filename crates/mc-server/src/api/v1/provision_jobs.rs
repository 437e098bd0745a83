//! `/api/v1/agents/{agent_id}/provision-jobs`: an agent's provisioning jobs (create,
//! update, delete on its gateway), oldest first. Kept after the agent is deleted, so the
//! fate of its delete job stays visible. `/api/v1/agents/{agent_id}/provision` queues a
//! fresh one at an operator's request.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mc_domain::time::Timestamp;
use mc_store::ProvisionJob;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::ApiResult;
use crate::extract::path_id;
use crate::provision;
use crate::state::SharedState;

/// One provisioning job as read.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvisionJobRead {
    id: i64,
    /// `create`, `update` or `delete`.
    action: &'static str,
    /// `pending`, `done` or `failed`.
    state: &'static str,
    /// Attempts made so far.
    attempts: u32,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// When the job is (or was last) due.
    #[schema(value_type = String, format = DateTime)]
    next_attempt_at: Timestamp,
    /// When it first reached its gateway; its retry bound counts from then. Null before.
    #[schema(value_type = Option<String>, format = DateTime)]
    first_attempt_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

impl From<ProvisionJob> for ProvisionJobRead {
    fn from(job: ProvisionJob) -> Self {
        Self {
            id: job.id,
            action: job.action.as_str(),
            state: job.state.as_str(),
            attempts: job.attempts,
            last_error: job.last_error,
            next_attempt_at: job.next_attempt_at,
            first_attempt_at: job.first_attempt_at,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// Lists an agent's provisioning jobs, oldest first.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/provision-jobs", tag = "agents",
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = Vec<ProvisionJobRead>)))]
pub async fn list_provision_jobs(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Vec<ProvisionJobRead>>> {
    let id = path_id(&agent_id, "agent_id")?;
    let jobs = state.store.provision_jobs(id).await?;
    Ok(Json(jobs.into_iter().map(ProvisionJobRead::from).collect()))
}

/// Re-provisions an agent on its managed gateway: queues a create job when it was never
/// placed there (or its create failed), else an update that rewrites its settings and
/// workspace files. 202 with the queued job; 409 for an agent on an unmanaged gateway or
/// one Mission Control did not create.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/provision", tag = "agents",
    params(("agent_id" = Uuid, Path)),
    responses((status = 202, body = ProvisionJobRead), (status = 404), (status = 409), (status = 422)))]
pub async fn provision_agent(
    _: Admin,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionJobRead>)> {
    let agent = super::agents::load_agent(&state, path_id(&agent_id, "agent_id")?)?;
    let job = provision::reprovision(&state, &agent.profile()).await?;
    Ok((StatusCode::ACCEPTED, Json(ProvisionJobRead::from(job))))
}
