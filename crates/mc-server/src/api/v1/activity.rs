//! `/api/v1/activity`: the durable activity log, newest first.

use axum::Json;
use axum::extract::State;
use mc_domain::activity::{ActivityEvent, EventType};
use mc_domain::ids::{AgentId, BoardId};
use mc_domain::time::Timestamp;
use mc_store::ActivityFilter;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::PageOf;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::state::SharedState;

/// The wire name of an event type in the OpenAPI document: a string, one of every
/// [`EventType`] (so the document lists them all, from the one list the filters and
/// webhook subscriptions accept).
#[derive(Debug)]
pub struct EventTypeName;

impl PartialSchema for EventTypeName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "What happened: an agent's own change (`agent.created`, `agent.updated`, \
                 `agent.deleted`, `agent.token_rotated`), a liveness transition \
                 (`agent.provisioning`, `agent.healthy`, `agent.degraded`, `agent.offline`), \
                 a provisioning job's progress (`agent.provision.*`, data `{job, action, \
                 attempt}` and, where they apply, `error`, `next_attempt_at`, `placement`) or \
                 a wake sent again to an agent that did not check in (`agent.wakeup.sent`).",
            ))
            .enum_values(Some(EventType::ALL.iter().map(|t| t.as_str())))
            .into()
    }
}

impl ToSchema for EventTypeName {}

/// One recorded event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityEventRead {
    /// Monotonically increasing id (the event-stream resume point).
    id: i64,
    #[schema(value_type = EventTypeName)]
    event_type: String,
    /// One sentence.
    message: String,
    agent_id: Option<Uuid>,
    board_id: Option<Uuid>,
    /// Structured details, e.g. `{"from": "healthy", "to": "offline"}`.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
}

impl From<ActivityEvent> for ActivityEventRead {
    fn from(e: ActivityEvent) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type,
            message: e.message,
            agent_id: e.agent_id.map(|a| a.as_uuid()),
            board_id: e.board_id.map(|b| b.as_uuid()),
            data: e.data,
            created_at: e.created_at,
        }
    }
}

/// Lists events, newest first. Agents see only their own.
#[utoipa::path(get, path = "/api/v1/activity", tags = ["activity", "agent-main", "agent-lead", "agent-worker"],
    params(("agent_id" = Option<Uuid>, Query), ("board_id" = Option<Uuid>, Query),
        ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<ActivityEventRead>), (status = 401), (status = 422)))]
pub async fn list_activity(
    caller: Caller,
    State(state): State<SharedState>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<ActivityEventRead>>> {
    let request = query.page()?;
    let mut filter = ActivityFilter {
        agent_id: query.id::<AgentId>("agent_id")?,
        board_id: query.id::<BoardId>("board_id")?,
    };
    match &caller {
        Caller::Admin => {}
        Caller::Agent(agent) => filter.agent_id = Some(agent.id()),
        Caller::Enrollment(_) => caller.require_admin()?,
    }
    // Read your writes: transitions accepted so far are in the log before it is read.
    state.engine.flush().await.map_err(ApiError::from)?;
    let page = state.store.list_activity(filter, request).await?;
    Ok(Json(PageOf::from_page(
        page,
        request,
        ActivityEventRead::from,
    )))
}
