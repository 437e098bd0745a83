//! The dashboard's pages, one module per section, and what they share: the directory of
//! boards and gateways (for names), the agent row, and the live-stream resume point.

pub mod activity;
pub mod agent;
pub mod boards;
pub mod fleet;
pub mod gateways;
pub mod sign_in;

use std::collections::HashMap;

use maud::{Markup, html};
use mc_domain::agent::AgentStatus;
use mc_domain::board::Board;
use mc_domain::gateway::Gateway;
use mc_domain::ids::{BoardId, GatewayId};
use mc_domain::page::{MAX_PAGE_LIMIT, PageRequest};
use mc_domain::time::Timestamp;
use mc_store::ActivityFilter;
use serde_json::json;

use super::layout::{json_data, row_ago, status_badge};
use crate::error::ApiResult;
use crate::liveness::AgentView;
use crate::state::AppState;

/// Every board and gateway of the organisation, for names and filters.
#[derive(Debug, Default)]
pub struct Directory {
    /// Boards by name.
    pub boards: Vec<Board>,
    /// Gateways, newest first.
    pub gateways: Vec<Gateway>,
    board_names: HashMap<BoardId, usize>,
    gateway_names: HashMap<GatewayId, usize>,
    connections: HashMap<GatewayId, String>,
}

impl Directory {
    /// Reads every board and gateway.
    pub async fn load(state: &AppState) -> ApiResult<Self> {
        let mut boards = Vec::new();
        loop {
            let request = PageRequest {
                limit: MAX_PAGE_LIMIT,
                offset: boards.len() as u64,
            };
            let page = state
                .store
                .list_boards(state.organization_id, None, request)
                .await?;
            let done = page.items.len() < MAX_PAGE_LIMIT as usize;
            boards.extend(page.items);
            if done {
                break;
            }
        }
        let mut gateways = Vec::new();
        loop {
            let request = PageRequest {
                limit: MAX_PAGE_LIMIT,
                offset: gateways.len() as u64,
            };
            let page = state
                .store
                .list_gateways(state.organization_id, request)
                .await?;
            let done = page.items.len() < MAX_PAGE_LIMIT as usize;
            gateways.extend(page.items);
            if done {
                break;
            }
        }
        let mut directory = Self::new(boards, gateways);
        directory.connections = directory
            .gateways
            .iter()
            .map(|g| (g.id, gateways::connection_state(&state.gateways, g).words))
            .collect();
        Ok(directory)
    }

    /// A gateway's connection state in words, as of [`Directory::load`].
    pub fn connection_words(&self, gateway: GatewayId) -> &str {
        self.connections
            .get(&gateway)
            .map_or("unknown", String::as_str)
    }

    /// A directory of the given boards and gateways.
    pub fn new(boards: Vec<Board>, gateways: Vec<Gateway>) -> Self {
        let board_names = boards.iter().enumerate().map(|(i, b)| (b.id, i)).collect();
        let gateway_names = gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id, i))
            .collect();
        Self {
            boards,
            gateways,
            board_names,
            gateway_names,
            connections: HashMap::new(),
        }
    }

    /// A board by id.
    pub fn board(&self, id: BoardId) -> Option<&Board> {
        self.board_names.get(&id).map(|&i| &self.boards[i])
    }

    /// A gateway by id.
    pub fn gateway(&self, id: GatewayId) -> Option<&Gateway> {
        self.gateway_names.get(&id).map(|&i| &self.gateways[i])
    }

    /// Names by id, embedded for the script (rows it adds for new agents).
    pub fn names_json(&self) -> Markup {
        let boards: serde_json::Map<_, _> = self
            .boards
            .iter()
            .map(|b| (b.id.to_string(), json!(b.name)))
            .collect();
        let gateways: serde_json::Map<_, _> = self
            .gateways
            .iter()
            .map(|g| (g.id.to_string(), json!(g.name)))
            .collect();
        json_data("mc-names", &json!({"boards": boards, "gateways": gateways}))
    }
}

/// The id of the newest recorded event: live streams resume after it, so nothing that
/// happens between rendering and subscribing is missed.
pub async fn last_event_id(state: &AppState) -> ApiResult<i64> {
    let page = state
        .store
        .list_activity(
            ActivityFilter::default(),
            PageRequest {
                limit: 1,
                offset: 0,
            },
        )
        .await?;
    Ok(page.items.first().map_or(0, |e| e.id))
}

/// "every 60 s, offline after 120 s".
pub fn heartbeat_words(interval_seconds: u32, missing_tolerance: u32) -> String {
    format!("every {interval_seconds} s, offline after {missing_tolerance} s")
}

/// The table head that goes with [`agent_row`].
pub fn agent_table_head() -> Markup {
    html! {
        thead {
            tr {
                th scope="col" { "Name" }
                th scope="col" { "Status" }
                th scope="col" { "Last seen" }
                th scope="col" { "Heartbeat" }
                th scope="col" { "Board" }
                th scope="col" { "Gateway" }
            }
        }
    }
}

/// One agent as a table row; `hidden` when a status filter hides it. Kept small (the
/// fleet may list 10,000): the cells' labels for phone width come from the stylesheet,
/// and the script finds cells by position (see `app.js`, `CELL`).
pub fn agent_row(view: &AgentView, directory: &Directory, hidden: bool, now: Timestamp) -> Markup {
    let agent = &view.profile;
    let board = match agent.board_id {
        Some(id) => directory
            .board(id)
            .map_or_else(|| id.to_string(), |b| b.name.clone()),
        None => "(gateway main)".to_owned(),
    };
    let gateway = directory
        .gateway(agent.gateway_id)
        .map_or_else(|| agent.gateway_id.to_string(), |g| g.name.clone());
    html! {
        tr id={ "agent-" (agent.id) } data-status=(view.status.as_str())
            data-name=(agent.name.as_str().to_lowercase()) hidden[hidden] {
            td { a href={ "/agents/" (agent.id) } { (agent.name.as_str()) } }
            td { (status_badge(view.status)) }
            td { (row_ago(view.last_seen_at, now)) }
            td {
                (heartbeat_words(agent.heartbeat_config.interval_seconds, agent.heartbeat_config.missing_tolerance))
            }
            td { (board) }
            td { (gateway) }
        }
    }
}

/// The empty row the script clones for agents that appear while the page is open.
pub fn agent_row_template() -> Markup {
    html! {
        template id="agent-row-template" {
            tr data-status="provisioning" data-name="" {
                td { a href="#" {} }
                td { (status_badge(AgentStatus::Provisioning)) }
                td { time class="ago" data-ts="" { "never" } }
                td {}
                td {}
                td {}
            }
        }
    }
}
