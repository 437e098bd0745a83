//! The activity feed, newest first, live.

use axum::extract::State;
use axum::response::Response;
use maud::html;
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_store::ActivityFilter;

use crate::dashboard::layout::{Section, ago, page};
use crate::dashboard::{PageResult, SignedIn};
use crate::state::SharedState;

/// Events shown (and kept while live).
const FEED_LENGTH: u32 = 100;

/// `GET /activity`.
pub async fn show_activity(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
) -> PageResult<Response> {
    state.engine.flush().await?;
    let page_request = PageRequest {
        limit: FEED_LENGTH,
        offset: 0,
    };
    let events = state
        .store
        .list_activity(ActivityFilter::default(), page_request)
        .await?
        .items;
    let after = events.first().map_or(0, |e| e.id);
    let now = Timestamp::now();
    let stream = format!("/api/v1/activity/stream?last_event_id={after}");
    let body = html! {
        div class="actions" {
            h1 { "Activity" }
            span class="live" data-live-status data-state="connecting" aria-live="polite" { "Connecting…" }
        }
        @if events.is_empty() {
            p class="muted" data-activity-empty { "Nothing has happened yet." }
        }
        ol class="feed" data-live-activity data-stream-url=(stream) data-limit=(FEED_LENGTH) aria-live="polite" aria-label="Events, newest first" {
            @for event in &events {
                li class={ "event type-" (event.event_type.replace('.', "-")) } {
                    time class="ago" datetime=(event.created_at.to_rfc3339()) data-ts=(event.created_at.as_millis()) title=(event.created_at.to_rfc3339()) {
                        (ago(event.created_at, now))
                    }
                    span class="message" { " " (event.message) }
                    @if let Some(agent) = event.agent_id {
                        " " a href={ "/agents/" (agent) } { "agent" }
                    }
                }
            }
        }
    };
    Ok(page("Activity", Section::Activity, &session, body))
}
