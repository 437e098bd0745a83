//! One agent: its fields, liveness timeline and uptime, provisioning state in words, and
//! the actions rotate token (shown once), re-provision (on a managed gateway) and delete
//! (confirmed).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mc_domain::agent::AgentStatus;
use mc_domain::ids::AgentId;
use mc_domain::time::Timestamp;
use mc_domain::uptime::{StatusChange, StatusSpan, timeline, uptime};
use mc_store::{ProvisionJob, ProvisionJobState};

use super::{Directory, heartbeat_words, last_event_id};
use crate::dashboard::forms::csrf_field;
use crate::dashboard::layout::{
    Notice, Section, live_ago, page, shown_once, status_badge, status_label, utc,
};
use crate::dashboard::session::Session;
use crate::dashboard::{CsrfForm, PageError, PageResult, SignedIn, no_store};
use crate::error::ApiError;
use crate::extract::{QueryParams, path_id};
use crate::liveness::{AgentView, LiveAgent};
use crate::provision;
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

/// Whether (and why not) Mission Control provisions an agent on its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Its gateway is managed and Mission Control created it: jobs put it there.
    Managed,
    /// Its gateway is unmanaged: nobody contacts it; the agent is started by hand.
    UnmanagedGateway,
    /// Found on its gateway, not created by Mission Control: shown, never provisioned.
    NotCreatedByMissionControl,
}

impl Provisioning {
    /// How `agent` (on a gateway that is `managed` or not) is provisioned.
    pub fn of(agent: &mc_domain::agent::Agent, managed: bool) -> Self {
        match (agent.is_mc_agent, managed) {
            (false, _) => Self::NotCreatedByMissionControl,
            (true, false) => Self::UnmanagedGateway,
            (true, true) => Self::Managed,
        }
    }
}

/// The state of an agent's provisioning jobs in a sentence: the newest job's action,
/// where it stands, its attempts and error.
pub fn job_words(how: Provisioning, jobs: &[ProvisionJob], now: Timestamp) -> String {
    match how {
        Provisioning::UnmanagedGateway => {
            return "Not provisioned by Mission Control: its gateway is unmanaged (no URL), so \
                    Mission Control never contacts it."
                .to_owned();
        }
        Provisioning::NotCreatedByMissionControl => {
            return "Not provisioned by Mission Control: the agent was found on its gateway, \
                    not created by Mission Control."
                .to_owned();
        }
        Provisioning::Managed => {}
    }
    let Some(job) = jobs.iter().max_by_key(|job| job.id) else {
        return "No provisioning job has run for it yet.".to_owned();
    };
    let action = match job.action {
        mc_store::ProvisionAction::Create => "Creating it on its gateway",
        mc_store::ProvisionAction::Update => "Updating it on its gateway",
        mc_store::ProvisionAction::Delete => "Removing it from its gateway",
    };
    let tries = |n: u32| {
        if n == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{n} attempts")
        }
    };
    // The runner records "<action> failed: <reason>"; the sentence already names the action.
    let verb = job.action.as_str();
    let reason = |error: &str| -> String {
        error
            .strip_prefix(&format!("{verb} failed: "))
            .or_else(|| error.strip_prefix(&format!("{verb} failed, retrying: ")))
            .unwrap_or(error)
            .to_owned()
    };
    match (job.state, &job.last_error) {
        (ProvisionJobState::Done, _) => format!(
            "{action} succeeded ({}, after {}).",
            crate::dashboard::layout::ago(job.updated_at, now),
            tries(job.attempts)
        ),
        (ProvisionJobState::Failed, error) => format!(
            "{action} failed for good after {}: {}. Fix the cause, then re-provision.",
            tries(job.attempts),
            error
                .as_deref()
                .map_or_else(|| "no reason recorded".to_owned(), reason)
        ),
        (ProvisionJobState::Pending, None) => {
            format!("{action} is queued; it runs within seconds.")
        }
        (ProvisionJobState::Pending, Some(error)) => {
            let wait = (job.next_attempt_at.as_millis() - now.as_millis()).max(0) / 1000;
            format!(
                "{action} is being retried: {} failed so far, the next in {wait} s. Last error: {}.",
                tries(job.attempts),
                reason(error)
            )
        }
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

/// Why a token is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewToken<'a> {
    /// The agent was just created with it.
    Created(&'a str),
    /// It replaced the agent's previous token.
    Rotated(&'a str),
}

/// What the agent page shows besides the agent itself.
#[derive(Debug, Default)]
struct Extras<'a> {
    /// A token just minted, shown once.
    new_token: Option<NewToken<'a>>,
    /// The outcome of an action just taken.
    notice: Option<Notice>,
    /// The provisioning job just queued from this page (by its number).
    queued_job: Option<i64>,
}

/// The notice for a re-provisioning job just queued.
fn queued_notice(job: &ProvisionJob) -> Notice {
    let what = match job.action {
        mc_store::ProvisionAction::Create => "a create",
        mc_store::ProvisionAction::Update => "an update",
        mc_store::ProvisionAction::Delete => "a delete",
    };
    Notice::Done(format!(
        "Re-provisioning queued: {what} job (number {}) puts the agent on its gateway again. Its state shows under Provisioning below.",
        job.id
    ))
}

#[expect(clippy::too_many_arguments, reason = "one page, its parts named")]
fn agent_body(
    view: &AgentView,
    directory: &Directory,
    changes: &[StatusChange],
    jobs: &[ProvisionJob],
    session: &Session,
    after: i64,
    now: Timestamp,
    extras: Extras<'_>,
) -> Markup {
    let agent = &view.profile;
    let gateway = directory.gateway(agent.gateway_id);
    let managed = gateway.is_some_and(|g| g.url.is_managed());
    let how = Provisioning::of(agent, managed);
    let new_token = extras.new_token;
    let day = now.plus_seconds(-DAY_SECONDS);
    let week = now.plus_seconds(-7 * DAY_SECONDS);
    let stream = format!(
        "/api/v1/agents/stream?agent_id={}&last_event_id={after}",
        agent.id
    );
    let recent: Vec<&StatusChange> = changes.iter().rev().take(20).collect();
    let shown = new_token.map(|token| {
        let (secret, first) = match token {
            NewToken::Created(secret) => (secret, ""),
            NewToken::Rotated(secret) => (secret, "The previous token no longer works. "),
        };
        let then = if how == Provisioning::Managed {
            "Provisioning writes it into the agent's workspace; keep a copy only if you run the agent by hand."
        } else {
            "Give it to the agent: its heartbeat sends it as X-Agent-Token."
        };
        (secret, format!("{first}{then}"))
    });
    html! {
        @if let Some(notice) = &extras.notice { (notice) }
        @if let Some((secret, advice)) = &shown {
            (shown_once("New agent token", secret, advice))
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
                        dt { "Provisioning" } dd {
                            p { (job_words(how, jobs, now)) }
                            p { (provisioning_words(view, managed)) }
                        }
                        dt { "Last provisioning error" } dd {
                            @match &agent.last_provision_error { Some(e) => (e), None => "None." }
                        }
                        dt { "Gateway agent id" } dd { (agent.gateway_agent_id.as_deref().unwrap_or("not assigned")) }
                        dt { "Workspace" } dd { (agent.workspace_path.as_deref().unwrap_or("not assigned")) }
                        dt { "Main session" } dd { (agent.openclaw_session_id.as_deref().unwrap_or("not assigned")) }
                        dt { "Identity" } dd {
                            @match &agent.identity_profile {
                                Some(profile) => {
                                    @for (key, value) in profile { (key) ": " (value) br; }
                                }
                                None => "Defaults.",
                            }
                            @if agent.identity_template.is_some() || agent.soul_template.is_some() {
                                " Own "
                                @if agent.identity_template.is_some() { "IDENTITY.md" }
                                @if agent.identity_template.is_some() && agent.soul_template.is_some() { " and " }
                                @if agent.soul_template.is_some() { "SOUL.md" }
                                " template."
                            }
                        }
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
                @if how == Provisioning::Managed {
                    form method="post" action={ "/agents/" (agent.id) "/provision" } {
                        (csrf_field(session.csrf_token()))
                        button type="submit" class="secondary" { "Re-provision" }
                    }
                }
                a class="button danger" href={ "/agents/" (agent.id) "/delete" } { "Delete agent…" }
            }
            p class="hint" { "Rotating mints a new token at once; the old one stops working." }
            @match how {
                Provisioning::Managed => p class="hint" {
                    "Re-provisioning queues a job that puts the agent on its gateway again: its settings and workspace files, with its current token (a new one if its workspace lost it)."
                },
                Provisioning::UnmanagedGateway => p class="hint" {
                    "Re-provisioning is not offered: the gateway is unmanaged, so Mission Control never contacts it."
                },
                Provisioning::NotCreatedByMissionControl => p class="hint" {
                    "Re-provisioning is not offered: Mission Control did not create this agent."
                },
            }
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
    mut extras: Extras<'_>,
) -> PageResult<Response> {
    let directory = Directory::load(state).await?;
    let after = last_event_id(state).await?;
    let now = Timestamp::now();
    let changes =
        history::status_changes(state, agent.id(), now.plus_seconds(-7 * DAY_SECONDS)).await?;
    let jobs = state.store.provision_jobs(agent.id()).await?;
    if let Some(queued) = extras.queued_job {
        extras.notice = extras
            .notice
            .or_else(|| jobs.iter().find(|job| job.id == queued).map(queued_notice));
    }
    let view = agent.view(Timestamp::now());
    let body = agent_body(
        &view, &directory, &changes, &jobs, session, after, now, extras,
    );
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
    query: QueryParams,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let extras = Extras {
        queued_job: query.int("reprovisioned").ok().flatten(),
        ..Extras::default()
    };
    render(&state, &session, &agent, extras).await
}

/// `POST /agents/{agent_id}/token`: a new token, shown once on the agent's page.
pub async fn rotate_agent_token(
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let token = service::rotate_and_deliver_token(&state, &agent).await?;
    let extras = Extras {
        new_token: Some(NewToken::Rotated(token.expose())),
        ..Extras::default()
    };
    let response = render(&state, &form.session, &agent, extras).await?;
    Ok(no_store(response))
}

/// The page of an agent just created, with its token shown once.
pub async fn show_created(
    state: &SharedState,
    session: &Session,
    agent: &LiveAgent,
    token: &mc_domain::token::Secret,
) -> PageResult<Response> {
    let notice = Notice::Done(format!("Agent {} was created.", agent.profile().name));
    let extras = Extras {
        new_token: Some(NewToken::Created(token.expose())),
        notice: Some(notice),
        queued_job: None,
    };
    render(state, session, agent, extras).await
}

/// `POST /agents/{agent_id}/provision`: queues a re-provisioning job and goes back to the
/// agent's page, which says so (a reload does not queue another); a refusal (unmanaged
/// gateway, agent not created by Mission Control) is shown on the page, with 409.
pub async fn reprovision_agent(
    State(state): State<SharedState>,
    Path(agent_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let agent = load(&state, &agent_id)?;
    let reason = match provision::reprovision(&state, &agent.profile()).await {
        Ok(job) => {
            let target = format!("/agents/{}?reprovisioned={}", agent.id(), job.id);
            return Ok(Redirect::to(&target).into_response());
        }
        Err(ApiError::Conflict(reason)) => reason,
        Err(other) => return Err(PageError::Api(other)),
    };
    let extras = Extras {
        notice: Some(Notice::Refused(format!("Not re-provisioned: {reason}."))),
        ..Extras::default()
    };
    let response = render(&state, &form.session, &agent, extras).await?;
    Ok((StatusCode::CONFLICT, response).into_response())
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

#[cfg(test)]
mod tests {
    use mc_domain::ids::GatewayId;
    use mc_store::ProvisionAction;

    use super::*;

    fn job(id: i64, action: ProvisionAction, state: ProvisionJobState) -> ProvisionJob {
        let at = Timestamp::from_millis(1_000_000_000);
        ProvisionJob {
            id,
            agent_id: AgentId::new(),
            gateway_id: GatewayId::new(),
            action,
            gateway_agent_id: None,
            session_key: None,
            state,
            attempts: 0,
            last_error: None,
            next_attempt_at: at,
            first_attempt_at: None,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn agents_mission_control_does_not_provision_say_why() {
        let now = Timestamp::from_millis(1_000_000_000);
        assert!(job_words(Provisioning::UnmanagedGateway, &[], now).contains("unmanaged"));
        assert!(
            job_words(Provisioning::NotCreatedByMissionControl, &[], now)
                .contains("not created by Mission Control")
        );
        assert_eq!(
            job_words(Provisioning::Managed, &[], now),
            "No provisioning job has run for it yet."
        );
    }

    #[test]
    fn the_newest_job_tells_the_state_with_its_attempts_and_error() {
        let now = Timestamp::from_millis(1_000_005_000);
        let done = job(1, ProvisionAction::Create, ProvisionJobState::Done);
        let mut retrying = job(2, ProvisionAction::Update, ProvisionJobState::Pending);
        retrying.attempts = 2;
        retrying.last_error = Some("update failed, retrying: connection refused".into());
        retrying.next_attempt_at = now.plus_seconds(7);
        assert_eq!(
            job_words(
                Provisioning::Managed,
                &[retrying.clone(), done.clone()],
                now
            ),
            "Updating it on its gateway is being retried: 2 attempts failed so far, the next in 7 s. Last error: connection refused."
        );
        let mut failed = job(3, ProvisionAction::Create, ProvisionJobState::Failed);
        failed.attempts = 1;
        failed.last_error = Some("create failed: the gateway refused".into());
        assert_eq!(
            job_words(Provisioning::Managed, &[done.clone(), failed], now),
            "Creating it on its gateway failed for good after 1 attempt: the gateway refused. Fix the cause, then re-provision."
        );
        let queued = job(4, ProvisionAction::Update, ProvisionJobState::Pending);
        assert!(
            job_words(Provisioning::Managed, &[done.clone(), queued], now)
                .starts_with("Updating it on its gateway is queued")
        );
        let mut succeeded = done;
        succeeded.attempts = 1;
        assert_eq!(
            job_words(Provisioning::Managed, &[succeeded], now),
            "Creating it on its gateway succeeded (5 s ago, after 1 attempt)."
        );
    }
}
