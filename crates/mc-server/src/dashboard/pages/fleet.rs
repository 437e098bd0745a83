//! The fleet overview at `/`: counts by status and every agent as a row, filtered by
//! board, gateway, status and name, kept live by the agents stream.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use mc_domain::agent::AgentStatus;
use mc_domain::ids::{BoardId, GatewayId};
use mc_domain::time::Timestamp;
use mc_domain::{FieldError, ValidationErrors};

use super::{Directory, agent_row, agent_row_template, agent_table_head, last_event_id};
use crate::dashboard::layout::{Section, page, status_icon, status_label};
use crate::dashboard::{PageResult, SignedIn};
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::liveness::AgentView;
use crate::state::SharedState;

/// What the overview shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFilter {
    /// Only this board's agents.
    pub board: Option<BoardId>,
    /// Only this gateway's agents.
    pub gateway: Option<GatewayId>,
    /// Only agents in this status (the counts still show every status).
    pub status: Option<AgentStatus>,
    /// Only agents whose name contains this (case-insensitive).
    pub name: String,
}

impl FleetFilter {
    /// Reads the filter from the query string (422 naming a malformed parameter).
    pub fn parse(query: &QueryParams) -> Result<Self, ApiError> {
        let status = match query.text("status").map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(AgentStatus::from_stored(text).ok_or_else(|| {
                ApiError::Validation(ValidationErrors::one(FieldError::new(
                    ["query", "status"],
                    format!("status must be one of provisioning, healthy, degraded, offline; got {text:?}"),
                    "enum",
                )))
            })?),
        };
        Ok(Self {
            board: query.id("board_id")?,
            gateway: query.id("gateway_id")?,
            status,
            name: query.text("q").unwrap_or_default().trim().to_owned(),
        })
    }

    /// Whether an agent's settings pass the board, gateway and name filters.
    fn admits(&self, agent: &mc_domain::agent::Agent, name_key: &str) -> bool {
        self.board.is_none_or(|b| agent.board_id == Some(b))
            && self.gateway.is_none_or(|g| agent.gateway_id == g)
            && (name_key.is_empty() || agent.name.key().contains(name_key))
    }
}

/// The agents the overview lists, by name.
pub fn fleet_views(state: &SharedState, filter: &FleetFilter, now: Timestamp) -> Vec<AgentView> {
    let name_key = filter.name.to_lowercase();
    let mut views = state
        .registry
        .views_where(now, |agent| filter.admits(agent, &name_key));
    views.sort_by_cached_key(|view| (view.profile.name.key(), view.profile.id));
    views
}

/// The overview's content: pure, so the benchmark can time it alone.
pub fn render_fleet(
    views: &[AgentView],
    directory: &Directory,
    filter: &FleetFilter,
    last_event_id: i64,
    now: Timestamp,
) -> Markup {
    let mut counts = [0usize; AgentStatus::ALL.len()];
    for view in views {
        counts[status_index(view.status)] += 1;
    }
    let mut stream = format!("/api/v1/agents/stream?last_event_id={last_event_id}");
    if let Some(board) = filter.board {
        stream.push_str(&format!("&board_id={board}"));
    }
    let status_value = filter.status.map_or("", AgentStatus::as_str);
    html! {
        div class="actions" {
            h1 { "Fleet" }
            span class="live" data-live-status data-state="connecting" aria-live="polite" { "Connecting…" }
        }
        ul class="counts" aria-label="Agents by status" {
            li { span class="n" data-count="total" { (views.len()) } "agents" }
            @for status in AgentStatus::ALL {
                li class={ "count-" (status.as_str()) } {
                    span class="n" data-count=(status.as_str()) { (counts[status_index(status)]) }
                    span class={ "badge status-" (status.as_str()) } {
                        span aria-hidden="true" { (status_icon(status)) } " " (status_label(status))
                    }
                }
            }
        }
        form class="filters card" method="get" action="/" role="search" aria-label="Filter agents" {
            div class="field" {
                label for="fleet-search" { "Name" }
                input id="fleet-search" name="q" type="text" value=(filter.name) placeholder="Search by name" autocomplete="off";
            }
            div class="field" {
                label for="filter-board" { "Board" }
                select id="filter-board" name="board_id" {
                    option value="" { "All boards" }
                    @for board in &directory.boards {
                        option value=(board.id) selected[filter.board == Some(board.id)] { (board.name) }
                    }
                }
            }
            div class="field" {
                label for="filter-gateway" { "Gateway" }
                select id="filter-gateway" name="gateway_id" {
                    option value="" { "All gateways" }
                    @for gateway in &directory.gateways {
                        option value=(gateway.id) selected[filter.gateway == Some(gateway.id)] { (gateway.name) }
                    }
                }
            }
            div class="field" {
                label for="filter-status" { "Status" }
                select id="filter-status" name="status" {
                    option value="" { "Any status" }
                    @for status in AgentStatus::ALL {
                        option value=(status.as_str()) selected[filter.status == Some(status)] { (status_label(status)) }
                    }
                }
            }
            button type="submit" { "Apply" }
        }
        div data-live-agents data-rows-container data-stream-url=(stream)
            data-filter-board=[filter.board] data-filter-gateway=[filter.gateway]
            data-filter-q=(filter.name) data-filter-status=(status_value) {
            table class="responsive agents" {
                caption class="visually-hidden" { "Agents" }
                (agent_table_head())
                tbody data-rows {
                    @for view in views {
                        (agent_row(view, directory, filter.status.is_some_and(|s| s != view.status), now))
                    }
                }
            }
            @if views.is_empty() {
                p class="muted" data-empty { "No agents match. Agents appear here when they are created or enroll with their first heartbeat." }
            }
        }
        (agent_row_template())
        (directory.names_json())
    }
}

const fn status_index(status: AgentStatus) -> usize {
    match status {
        AgentStatus::Provisioning => 0,
        AgentStatus::Healthy => 1,
        AgentStatus::Degraded => 2,
        AgentStatus::Offline => 3,
        AgentStatus::Updating => 4,
        AgentStatus::Deleting => 5,
    }
}

/// `GET /`: the fleet overview.
pub async fn show_overview(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    query: QueryParams,
) -> PageResult<Response> {
    let filter = FleetFilter::parse(&query)?;
    let directory = Directory::load(&state).await?;
    let after = last_event_id(&state).await?;
    let now = Timestamp::now();
    let views = fleet_views(&state, &filter, now);
    let body = render_fleet(&views, &directory, &filter, after, now);
    Ok(page("Fleet", Section::Fleet, &session, body))
}
