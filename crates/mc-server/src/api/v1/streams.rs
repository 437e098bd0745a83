//! Server-sent event streams: `/api/v1/activity/stream` and `/api/v1/agents/stream`.
//!
//! Live events come from the store's feed (in process, in id order; never a database
//! poll). A client that reconnects with `Last-Event-ID` first gets what it missed from the
//! durable activity log, then the live events, with no gap and no duplicate: the feed is
//! subscribed before the log is read, and live events at or below the last id sent are
//! dropped. A client that falls more than the feed's buffer behind gets a `lagged` event
//! saying so and is disconnected; it resumes with `Last-Event-ID`.

use std::collections::HashSet;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use mc_domain::activity::{ActivityEvent, EventType};
use mc_domain::error::FieldError;
use mc_domain::ids::{AgentId, BoardId};
use mc_domain::time::Timestamp;
use mc_store::ActivityFilter;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::activity::ActivityEventRead;
use super::agents::AgentRead;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::state::SharedState;

/// Events read from the log per query while catching up.
const CATCH_UP_BATCH: u32 = 500;

/// Which events a stream delivers.
#[derive(Debug, Clone)]
struct StreamFilter {
    store: ActivityFilter,
    /// `None` means every type.
    event_types: Option<HashSet<&'static str>>,
    agents_only: bool,
}

impl StreamFilter {
    fn matches(&self, event: &ActivityEvent) -> bool {
        let store = &self.store;
        store.agent_id.is_none_or(|id| event.agent_id == Some(id))
            && store.board_id.is_none_or(|id| event.board_id == Some(id))
            && (!self.agents_only || event.agent_id.is_some())
            && self
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(event.event_type.as_str()))
    }
}

/// Parses `event_types=a,b` into known event types (422 naming the unknown one).
fn parse_event_types(query: &QueryParams) -> ApiResult<Option<HashSet<&'static str>>> {
    let Some(raw) = query
        .text("event_types")
        .filter(|raw| !raw.trim().is_empty())
    else {
        return Ok(None);
    };
    raw.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            EventType::from_wire(name)
                .map(EventType::as_str)
                .ok_or_else(|| {
                    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                    ApiError::field(FieldError::new(
                        ["query", "event_types"],
                        format!(
                            "unknown event type {name:?}; known types: {}",
                            known.join(", ")
                        ),
                        "enum",
                    ))
                })
        })
        .collect::<ApiResult<HashSet<_>>>()
        .map(Some)
}

/// The resume point: the `Last-Event-ID` header, else the `last_event_id` query parameter.
fn parse_last_event_id(headers: &HeaderMap, query: &QueryParams) -> ApiResult<Option<i64>> {
    let invalid = |loc: [&str; 2]| {
        ApiError::field(FieldError::new(
            loc,
            format!("{} must be a non-negative integer event id", loc[1]),
            "int_parsing",
        ))
    };
    if let Some(value) = headers.get("last-event-id") {
        let id = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .filter(|id| *id >= 0)
            .ok_or_else(|| invalid(["header", "Last-Event-ID"]))?;
        return Ok(Some(id));
    }
    match query.int("last_event_id")? {
        Some(id) if id < 0 => Err(invalid(["query", "last_event_id"])),
        other => Ok(other),
    }
}

/// Reads the filters common to both streams; agents see only their own events.
fn stream_filter(
    caller: &Caller,
    query: &QueryParams,
    agents_only: bool,
) -> ApiResult<StreamFilter> {
    let mut store = ActivityFilter {
        agent_id: query.id::<AgentId>("agent_id")?,
        board_id: query.id::<BoardId>("board_id")?,
    };
    match caller {
        Caller::Admin => {}
        Caller::Agent(agent) => store.agent_id = Some(agent.id()),
        Caller::Enrollment(_) => caller.require_admin()?,
    }
    Ok(StreamFilter {
        store,
        event_types: parse_event_types(query)?,
        agents_only,
    })
}

/// One message of the agents stream: the event and the agent as it is now.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentStreamMessage<'a> {
    /// The recorded event.
    event: ActivityEventRead,
    /// The agent now; null once it is deleted.
    agent: Option<AgentRead<'a>>,
}

/// How a stream turns an event into the SSE `data` line.
#[derive(Debug, Clone, Copy)]
enum Payload {
    Activity,
    AgentWithState,
}

fn render(state: &SharedState, payload: Payload, event: ActivityEvent) -> Event {
    let frame = Event::default()
        .id(event.id.to_string())
        .event(event.event_type.clone());
    let json = match payload {
        Payload::Activity => serde_json::to_string(&ActivityEventRead::from(event)),
        Payload::AgentWithState => {
            // The deletion event is on the feed once committed, which can be a moment
            // before the agent leaves the in-memory index: a deleted agent is null.
            let deleted = event.event_type == EventType::AgentDeleted.as_str();
            let view = event
                .agent_id
                .filter(|_| !deleted)
                .and_then(|id| state.registry.get(id))
                .map(|agent| agent.view(Timestamp::now()));
            serde_json::to_string(&AgentStreamMessage {
                event: ActivityEventRead::from(event),
                agent: view.as_ref().map(AgentRead::from_view),
            })
        }
    };
    frame.data(json.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
}

/// The event stream: catch up from the log after `last_event_id`, then follow the feed
/// until the client leaves, lags or the server shuts down.
fn event_stream(
    state: SharedState,
    filter: StreamFilter,
    last_event_id: Option<i64>,
    payload: Payload,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // Subscribe before reading the log, so nothing committed in between is missed.
    let mut live = state.store.subscribe_activity();
    let mut shutdown = state.shutdown.subscribe();
    let open = state.metrics.stream_opened();
    async_stream::stream! {
        let _open = open;
        let mut sent_up_to = last_event_id;
        if let Some(mut after) = last_event_id {
            loop {
                let batch = match state.store.activity_since(after, filter.store, CATCH_UP_BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(%error, "event stream could not read the activity log");
                        yield Ok(Event::default().event("error").data(
                            "the activity log is unavailable; reconnect with Last-Event-ID to resume",
                        ));
                        return;
                    }
                };
                let full = batch.len() == CATCH_UP_BATCH as usize;
                for event in batch {
                    after = event.id;
                    sent_up_to = Some(event.id);
                    if filter.matches(&event) {
                        yield Ok(render(&state, payload, event));
                    }
                }
                if !full {
                    break;
                }
            }
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = shutting_down(&mut shutdown) => {
                    yield Ok(Event::default().event("shutdown").data(
                        "the server is shutting down; reconnect with Last-Event-ID to resume",
                    ));
                    return;
                }
            };
            match received {
                Ok(event) if sent_up_to.is_some_and(|up_to| event.id <= up_to) => {}
                Ok(event) => {
                    sent_up_to = Some(event.id);
                    if filter.matches(&event) {
                        yield Ok(render(&state, payload, event));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    yield Ok(Event::default().event("lagged").data(format!(
                        "this client fell {missed} events behind and is disconnected; \
                         reconnect with Last-Event-ID to resume"
                    )));
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Resolves once the server starts shutting down.
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server state is gone: shutting down as well.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// The SSE response for a request: filters, resume point, keep-alive comments.
fn respond(
    caller: &Caller,
    state: SharedState,
    headers: &HeaderMap,
    query: &QueryParams,
    payload: Payload,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>> + Send + use<>>> {
    let filter = stream_filter(caller, query, matches!(payload, Payload::AgentWithState))?;
    let last_event_id = parse_last_event_id(headers, query)?;
    let keep_alive = KeepAlive::new()
        .interval(state.stream_keep_alive)
        .text("keep-alive");
    Ok(Sse::new(event_stream(state, filter, last_event_id, payload)).keep_alive(keep_alive))
}

/// Streams activity events as they are recorded (`text/event-stream`).
#[utoipa::path(get, path = "/api/v1/activity/stream", tags = ["activity", "agent-main", "agent-lead", "agent-worker"],
    params(("agent_id" = Option<Uuid>, Query), ("board_id" = Option<Uuid>, Query),
        ("event_types" = Option<String>, Query, description = "Comma-separated event types (see the `EventTypeName` schema), e.g. `agent.offline,agent.healthy` or `agent.provision.failed`"),
        ("last_event_id" = Option<i64>, Query, description = "Resume after this event id (the `Last-Event-ID` header wins)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", body = ActivityEventRead,
        description = "One SSE message per event: `id` is the event id, `event` its type, `data` the event as JSON"),
        (status = 401), (status = 403), (status = 422)))]
pub async fn activity_stream(
    caller: Caller,
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: QueryParams,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>> {
    respond(&caller, state, &headers, &query, Payload::Activity)
}

/// Streams agent events (created, updated, deleted, every liveness transition, each
/// provisioning job's progress and wakes sent again), each with the agent as it is now.
#[utoipa::path(get, path = "/api/v1/agents/stream", tags = ["agents", "agent-main", "agent-lead"],
    params(("agent_id" = Option<Uuid>, Query), ("board_id" = Option<Uuid>, Query),
        ("event_types" = Option<String>, Query, description = "Comma-separated event types (see the `EventTypeName` schema), e.g. `agent.offline,agent.healthy` or `agent.provision.failed`"),
        ("last_event_id" = Option<i64>, Query, description = "Resume after this event id (the `Last-Event-ID` header wins)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", body = AgentStreamMessage,
        description = "One SSE message per agent event: `id` is the event id, `event` its type, `data` `{event, agent}`"),
        (status = 401), (status = 403), (status = 422)))]
pub async fn agents_stream(
    caller: Caller,
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: QueryParams,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>> {
    respond(&caller, state, &headers, &query, Payload::AgentWithState)
}
