//! An agent's liveness history, read back from the activity log: the transitions that
//! uptime and the timeline are computed from (`mc_domain::uptime`).

use mc_domain::activity::EventType;
use mc_domain::ids::AgentId;
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_domain::uptime::StatusChange;
use mc_store::ActivityFilter;

use crate::error::ApiResult;
use crate::state::AppState;

/// Most events read for one agent's history (a cap against pathological flapping).
const MAX_EVENTS: u64 = 20_000;

/// The agent's status transitions from shortly before `since` until now, oldest first.
/// The newest transition before `since` is included: it is the status the window starts in.
pub async fn status_changes(
    state: &AppState,
    agent_id: AgentId,
    since: Timestamp,
) -> ApiResult<Vec<StatusChange>> {
    // Transitions accepted in memory are in the log before it is read.
    state.engine.flush().await?;
    let filter = ActivityFilter {
        agent_id: Some(agent_id),
        board_id: None,
    };
    let mut changes = Vec::new();
    let mut offset = 0;
    'pages: while offset < MAX_EVENTS {
        let request = PageRequest { limit: 200, offset };
        let page = state.store.list_activity(filter, request).await?;
        let count = page.items.len() as u64;
        for event in page.items {
            if let Some(EventType::AgentStatusChanged(to)) = EventType::from_wire(&event.event_type)
            {
                changes.push(StatusChange {
                    at: event.created_at,
                    to,
                });
                if event.created_at <= since {
                    break 'pages;
                }
            }
        }
        if count < u64::from(request.limit) {
            break;
        }
        offset += count;
    }
    changes.reverse();
    Ok(changes)
}
