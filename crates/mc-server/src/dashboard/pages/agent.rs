//! One agent: its fields, liveness timeline and uptime, provisioning state in words, and
//! the actions rotate token and delete. (Re-provisioning arrives with gateway
//! provisioning; no button pretends to do it before then.)

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mc_domain::agent::AgentStatus;
use mc_domain::ids::AgentId;
use mc_domain::time::Timestamp;
use mc_domain::uptime::{StatusChange, StatusSpan, timeline, uptime};

use super::{Directory, heartbeat_words, last_event_id};
use crate::dashboard::forms::csrf_field;
use crate::dashboard::layout::{
    Section, live_ago, page, shown_once, status_badge, status_label, utc,
};
use crate::dashboard::session::Session;
use crate::dashboard::{CsrfForm, PageResult, SignedIn, no_store};
use crate::extract::path_id;
use crate::liveness::{AgentView, LiveAgent};
use crate::services::{agents as service, history};
use crate::state::SharedState;

const DAY_SECONDS: i64 = 86_400;

/// Uptime as "99.5 %", or "no data yet".
pub fn uptime_words(share: Option<f64>) -> String {
    share.map_or_else(
        || "no data yet".to_owned(),
        |s| format!("{:.1} %", s * 100.0),
    )
}

/// What the agent's provisioning state means, in words.
pub fn provisioning_words(view: &AgentView, managed_gateway: bool) -> String {
    match (view.status, view.last_seen_at, managed_gateway) {
        (AgentStatus::Updating, _, _) => "Updating: a job is pushing its settings and workspace files to its gateway.".to_owned(),
        (AgentStatus::Deleting, _, _) => "Deleting: a job is removing it from its gateway; then it leaves Mission Control.".to_owned(),
        (AgentStatus::Provisioning, None, false) => "Created; waiting for its first heartbeat. On an unmanaged gateway the agent is started by hand: give it its token and it appears here with its first heartbeat.".to_owned(),
        (AgentStatus::Provisioning, None, true) => "Created; waiting for its first heartbeat.".to_owned(),
        (_, Some(_), _) => "Running: it has sent heartbeats to Mission Control.".to_owned(),
        (_, None, _) => "Known, but it has never sent a heartbeat.".to_owned(),
    }
}

/// A status timeline drawn as an SVG bar: one rectangle per span, with a text
/// alternative listing the spans.
fn timeline_svg(
    label: &str,
    spans: &[StatusSpan],
    window_start: Timestamp,
    now: Timestamp,
) -> Markup {
    let total = (now.as_millis() - window_start.as_millis()).max(1) as f64;
    let x = |t: Timestamp| (t.as_millis() - window_start.as_millis()) as f64 / total * 1000.0;
    let description: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} from {} to {}",
                status_label(s.status),
                s.from.to_datetime().format("%d %b %H:%M"),
                s.until.to_datetime().format("%d %b %H:%M")
            )
        })
        .collect();
    let description = if description.is_empty() {
        "No data: the agent did not exist yet.".to_owned()
    } else {
        description.join("; ")
    };
    html! {
        figure {
            figcaption { (label) }
            svg class="timeline" viewBox="0 0 1000 20" preserveAspectRatio="none" role="img" aria-label=(description) {
                @for span in spans {
                    rect class={ "status-" (span.status.as_str()) } x=(format!("{:.2}", x(span.from)))
                        y="0" height="20" width=(format!("{:.2}", (x(span.until) - x(span.from)).max(0.5))) {
                        title { (status_label(span.status)) }
                    }
                }
            }
        }
    }
}

fn agent_body(
    view: &AgentView,
    directory: &Directory,
    changes: &[StatusChange],
    session: &Session,
    after: i64,
    now: Timestamp,
    new_token: Option<&str>,
) -> Markup {
    let agent = &view.profile;
    let gateway = directory.gateway(agent.gateway_id);
    let managed = gateway.is_some_and(|g| g.url.is_managed());
    let day = now.plus_seconds(-DAY_SECONDS);
    let week = now.plus_seconds(-7 * DAY_SECONDS);
    let stream = format!(
        "/api/v1/agents/stream?agent_id={}&last_event_id={after}",
        agent.id
    );
    let recent: Vec<&StatusChange> = changes.iter().rev().take(20).collect();
    html! {
        @if let Some(token) = new_token {
            (shown_once("New agent token", token, "The previous token no longer works. Give this one to the agent (its heartbeat sends it as X-Agent-Token)."))
        }
        div data-live-agents data-agent-id=(agent.id) data-stream-url=(stream) {
            div id={ "agent-" (agent.id) } data-status=(view.status.as_str()) data-name=(agent.name.as_str().to_lowercase()) {
                div class="actions" {
                    h1 data-field="name" { (agent.name.as_str()) }
                    (status_badge(view.status))
                    span class="live" data-live-status data-state="connecting" aria-live="polite" { "Connecting…" }
                }
                p class="form-errors" data-gone hidden role="alert" { "This agent was deleted or moved out of view." }
                section class="card" aria-labelledby="facts" {
                    h2 id="facts" { "Details" }
                    dl class="facts" {
                        dt { "Last seen" } dd { (live_ago(view.last_seen_at, now)) }
                        dt { "Heartbeat" } dd data-field="heartbeat" {
                            (heartbeat_words(agent.heartbeat_config.interval_seconds, agent.heartbeat_config.missing_tolerance))
                        }
                        dt { "Board" } dd {
                            @match agent.board_id {
                                Some(id) => {
                                    @match directory.board(id) {
                                        Some(board) => a href={ "/boards/" (id) } { (board.name) },
                                        None => (id),
                                    }
                                }
                                None => "(gateway main agent: no board)",
                            }
                        }
                        dt { "Gateway" } dd {
                            @match gateway {
                                Some(g) => { a href={ "/gateways/" (g.id) } { (g.name) } " — " (directory.connection_words(g.id)) },
                                None => (agent.gateway_id),
                            }
                        }
                        dt { "Role" } dd {
                            @if agent.is_gateway_main() { "Gateway main agent" }
                            @else if agent.is_board_lead { "Board lead" }
                            @else { "Worker" }
                            @if !agent.is_mc_agent { " (found on the gateway, not created by Mission Control)" }
                        }
                        dt { "Provisioning" } dd { (provisioning_words(view, managed)) }
                        dt { "Last provisioning error" } dd {
                            @match &agent.last_provision_error { Some(e) => (e), None => "None." }
                        }
                        dt { "Gateway agent id" } dd { (agent.gateway_agent_id.as_deref().unwrap_or("not assigned")) }
                        dt { "Workspace" } dd { (agent.workspace_path.as_deref().unwrap_or("not assigned")) }
                        dt { "Created" } dd { (utc(agent.created_at)) }
                        dt { "Id" } dd { code { (agent.id) } }
                    }
                }
            }
        }
        section class="card" aria-labelledby="liveness" {
            h2 id="liveness" { "Liveness" }
            ul class="counts" {
                li { span class="n" { (uptime_words(uptime(agent.created_at, changes, day, now))) } "uptime, last 24 hours" }
                li { span class="n" { (uptime_words(uptime(agent.created_at, changes, week, now))) } "uptime, last 7 days" }
            }
            (timeline_svg("Last 24 hours", &timeline(agent.created_at, changes, day, now), day, now))
            (timeline_svg("Last 7 days", &timeline(agent.created_at, changes, week, now), week, now))
            ul class="legend" aria-hidden="true" {
                @for status in AgentStatus::ALL { li { (status_badge(status)) } }
            }
            h3 { "Recent transitions" }
            @if recent.is_empty() {
                p class="muted" { "None recorded in the last 7 days." }
            } @else {
                ol class="feed" {
                    @for change in recent {
                        li { (utc(change.at)) " " (status_badge(change.to)) }
                    }
                }
            }
        }
        section class="card" aria-labelledby="actions" {
            h2 id="actions" { "Actions" }
            div class="actions" {
                form method="post" action={ "/agents/" (agent.id) "/token" } {
                    (csrf_field(session.csrf_token()))
                    button type="submit" class="secondary" { "Rotate token" }
                }
                a class="button danger" href={ "/agents/" (agent.id) "/delete" } { "Delete agent…" }
            }
            p class="hint" { "Rotating mints a new token at once; the old one stops working." }
        }
    }
}

fn load(state: &SharedState, raw_id: &str) -> PageResult<Arc<LiveAgent>> {
    let id: AgentId = path_id(raw_id, "agent_id")?;
    Ok(crate::api::v1::agents::load_agent(state, id)?)
}

async fn render(
    state: &SharedState,
    session: &Session,
    agent: &LiveAgent,
    new_token: Option<&str>,
) -> PageResult<Response> {
    let directory = Directory::load(state).await?;
    let after = last_event_id(state).await?;
    let now = Timestamp::now();
    let changes =
        history::status_changes(state, agent.id(), now.plus_seconds(-7 * DAY_SECONDS)).await?;
    let view = agent.view(Timestamp::now());
    let body = agent_body(&view, &directory, &changes, session, after, now, new_token);
    Ok(page(
        view.profile.name.as_str(),
        Section::Fleet,
        session,
        body,
    ))
}

/// `GET /agents/{agent_id}`.
pub async fn show_agent(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    render(&state, &session, &agent, None).await
}

/// `POST /agents/{agent_id}/token`: a new token, shown once on the agent's page.
pub async fn rotate_agent_token(
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let token = service::rotate_token(&state, &agent).await?;
    let response = render(&state, &form.session, &agent, Some(token.expose())).await?;
    Ok(no_store(response))
}

/// `GET /agents/{agent_id}/delete`: asks for confirmation.
pub async fn confirm_delete_agent(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let profile = agent.profile();
    let body = html! {
        h1 { "Delete " (profile.name.as_str()) "?" }
        div class="card" {
            p { "The agent is removed from Mission Control and its token stops working at once. This cannot be undone." }
            form method="post" action={ "/agents/" (profile.id) "/delete" } class="actions" {
                (csrf_field(session.csrf_token()))
                button type="submit" class="danger" { "Delete agent" }
                a href={ "/agents/" (profile.id) } { "Cancel" }
            }
        }
    };
    Ok(page("Delete agent", Section::Fleet, &session, body))
}

/// `POST /agents/{agent_id}/delete`: deletes the agent and goes back to its board (or
/// the fleet).
pub async fn delete_agent(
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    _form: CsrfForm,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let board = agent.profile().board_id;
    service::delete_agent(&state, &agent).await?;
    let target = board.map_or_else(|| "/".to_owned(), |id| format!("/boards/{id}"));
    Ok(Redirect::to(&target).into_response())
}
