//! Boards: the list and create form; a board's page with its agents (live) and its
//! enrollment tokens (issue with expiry and use limit, shown once; revoke).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mc_domain::board::Board;
use mc_domain::enrollment::EnrollmentToken;
use mc_domain::ids::{BoardId, EnrollmentTokenId, GatewayId};
use mc_domain::page::{MAX_PAGE_LIMIT, PageRequest};
use mc_domain::time::Timestamp;

use super::fleet::{FleetFilter, fleet_views};
use super::{Directory, agent_row, agent_row_template, agent_table_head, last_event_id};
use crate::dashboard::forms::{
    FormErrors, InputKind, checkbox, csrf_field, input, optional_int, select,
};
use crate::dashboard::layout::{Section, page, shown_once, utc};
use crate::dashboard::session::Session;
use crate::dashboard::{CsrfForm, PageResult, SignedIn, no_store};
use crate::extract::{QueryParams, path_id};
use crate::services::boards::{self as service, BoardFields, load_board};
use crate::services::enrollment;
use crate::state::SharedState;

/// The rule flags, as (form field, label).
const RULES: [(&str, &str); 5] = [
    (
        "require_approval_for_done",
        "Require approval before a task is done",
    ),
    (
        "require_review_before_done",
        "Require review before a task is done",
    ),
    (
        "comment_required_for_review",
        "Require a comment when asking for review",
    ),
    (
        "block_status_changes_with_pending_approval",
        "Block status changes while an approval is pending",
    ),
    (
        "only_lead_can_change_status",
        "Only the board lead changes task status",
    ),
];

/// Lifetimes offered for enrollment tokens, as (seconds, label).
const LIFETIMES: [(i64, &str); 4] = [
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "7 days"),
    (30 * 86_400, "30 days"),
];

fn board_form(
    directory: &Directory,
    form: &QueryParams,
    session: &Session,
    errors: &FormErrors,
) -> Markup {
    let mut gateways = vec![(String::new(), "Choose a gateway…".to_owned())];
    gateways.extend(
        directory
            .gateways
            .iter()
            .map(|g| (g.id.to_string(), g.name.clone())),
    );
    let value = |name: &str| form.text(name).unwrap_or_default().to_owned();
    html! {
        (errors.summary())
        form method="post" action="/boards" class="card" novalidate {
            (csrf_field(session.csrf_token()))
            (input("Name", "name", &value("name"), InputKind::Text, None, errors))
            (input("Slug", "slug", &value("slug"), InputKind::Text, Some("Lowercase letters, digits and hyphens; unique."), errors))
            (input("Description", "description", &value("description"), InputKind::Text, None, errors))
            (select("Gateway", "gateway_id", &gateways, &value("gateway_id"), errors))
            (input("Agent limit", "max_agents", &value("max_agents"), InputKind::Number, Some("0 or blank: no limit."), errors))
            fieldset {
                legend { "Rules" }
                @for (name, label) in RULES { (checkbox(label, name, form.text(name).is_some())) }
            }
            button type="submit" { "Create board" }
        }
    }
}

fn list_body(
    directory: &Directory,
    counts: &HashMap<BoardId, usize>,
    form: &QueryParams,
    session: &Session,
    errors: &FormErrors,
) -> Markup {
    html! {
        h1 { "Boards" }
        @if directory.boards.is_empty() {
            p class="muted" { "No boards yet." }
        } @else {
            table class="responsive" {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Slug" } th scope="col" { "Gateway" } th scope="col" { "Agents" } } }
                tbody {
                    @for board in &directory.boards {
                        tr {
                            td data-label="Name" { a href={ "/boards/" (board.id) } { (board.name) } }
                            td data-label="Slug" { code { (board.slug.as_str()) } }
                            td data-label="Gateway" { (directory.gateway(board.gateway_id).map_or("?", |g| g.name.as_str())) }
                            td data-label="Agents" { (counts.get(&board.id).copied().unwrap_or(0)) }
                        }
                    }
                }
            }
        }
        h2 { "New board" }
        @if directory.gateways.is_empty() {
            p { "A board needs a gateway: " a href="/gateways" { "create a gateway" } " first." }
        } @else {
            (board_form(directory, form, session, errors))
        }
    }
}

fn agent_counts(state: &SharedState) -> HashMap<BoardId, usize> {
    let mut counts = HashMap::new();
    for agent in state.registry.agents_where(|a| a.board_id.is_some()) {
        if let Some(board) = agent.board_id {
            *counts.entry(board).or_insert(0) += 1;
        }
    }
    counts
}

/// `GET /boards`.
pub async fn list_boards(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
) -> PageResult<Response> {
    let directory = Directory::load(&state).await?;
    let body = list_body(
        &directory,
        &agent_counts(&state),
        &QueryParams::default(),
        &session,
        &FormErrors::default(),
    );
    Ok(page("Boards", Section::Boards, &session, body))
}

/// `POST /boards`: creates a board or shows the form again with every invalid field marked.
pub async fn create_board(
    State(state): State<SharedState>,
    form: CsrfForm,
) -> PageResult<Response> {
    let fields = &form.fields;
    let mut errors = FormErrors::default();
    let text = |name: &str| Some(fields.text(name).unwrap_or_default().to_owned());
    let gateway_id = match fields
        .text("gateway_id")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => {
            errors.add("gateway_id", "Choose a gateway.");
            None
        }
        Some(raw) => raw
            .parse::<GatewayId>()
            .map_err(|_| errors.add("gateway_id", "gateway_id must be a gateway's id"))
            .ok(),
    };
    let max_agents = optional_int(fields.text("max_agents"), "max_agents", &mut errors);
    let flag = |name: &str| Some(fields.text(name).is_some());
    let input = BoardFields {
        name: text("name"),
        slug: text("slug"),
        description: text("description"),
        gateway_id,
        require_approval_for_done: flag("require_approval_for_done"),
        require_review_before_done: flag("require_review_before_done"),
        comment_required_for_review: flag("comment_required_for_review"),
        block_status_changes_with_pending_approval: flag(
            "block_status_changes_with_pending_approval",
        ),
        only_lead_can_change_status: flag("only_lead_can_change_status"),
        max_agents,
    };
    // The service checks every other field; form-only errors are merged with its own so
    // every invalid field is reported at once, and nothing is saved if any is invalid.
    let refused = if errors.is_empty() {
        match service::create_board(&state, input).await {
            Ok(board) => {
                return Ok(Redirect::to(&format!("/boards/{}", board.id)).into_response());
            }
            Err(error) => error,
        }
    } else {
        match service::check_new_board(&state, input).await {
            Ok(()) => return board_form_refused(&state, &form, &errors).await,
            Err(error) => error,
        }
    };
    errors.merge(FormErrors::from_api(refused, Some("slug"))?);
    board_form_refused(&state, &form, &errors).await
}

/// The boards page again, with the refused form and its errors (422).
async fn board_form_refused(
    state: &SharedState,
    form: &CsrfForm,
    errors: &FormErrors,
) -> PageResult<Response> {
    let directory = Directory::load(state).await?;
    let body = list_body(
        &directory,
        &agent_counts(state),
        &form.fields,
        &form.session,
        errors,
    );
    let response = page("Boards", Section::Boards, &form.session, body);
    Ok((StatusCode::UNPROCESSABLE_ENTITY, response).into_response())
}

/// A token's state in words.
fn token_state(token: &EnrollmentToken, now: Timestamp) -> (&'static str, bool) {
    match token.check_usable(now) {
        Ok(()) => ("Active", true),
        Err(refusal) => (refusal.message(), false),
    }
}

async fn board_tokens(state: &SharedState, board: BoardId) -> PageResult<Vec<EnrollmentToken>> {
    let request = PageRequest {
        limit: MAX_PAGE_LIMIT,
        offset: 0,
    };
    Ok(state
        .store
        .list_enrollment_tokens(board, request)
        .await?
        .items)
}

struct BoardPage<'a> {
    board: &'a Board,
    directory: &'a Directory,
    tokens: &'a [EnrollmentToken],
    session: &'a Session,
    errors: &'a FormErrors,
    form: &'a QueryParams,
    new_token: Option<&'a str>,
}

async fn render_board(state: &SharedState, parts: BoardPage<'_>) -> PageResult<Response> {
    let BoardPage {
        board,
        directory,
        tokens,
        session,
        errors,
        form,
        new_token,
    } = parts;
    let after = last_event_id(state).await?;
    let now = Timestamp::now();
    let filter = FleetFilter {
        board: Some(board.id),
        ..FleetFilter::default()
    };
    let views = fleet_views(state, &filter, now);
    let stream = format!(
        "/api/v1/agents/stream?board_id={}&last_event_id={after}",
        board.id
    );
    let lifetimes: Vec<(String, String)> = LIFETIMES
        .iter()
        .map(|(s, l)| (s.to_string(), (*l).to_owned()))
        .collect();
    let lifetime = form.text("expires_in_seconds").unwrap_or("86400");
    let body = html! {
        @if let Some(token) = new_token {
            (shown_once("New enrollment token", token, "Give it to new agents of this board: their first heartbeat with it creates them."))
        }
        div class="actions" {
            h1 { (board.name) }
            span class="live" data-live-status data-state="connecting" aria-live="polite" { "Connecting…" }
        }
        p { (board.description) }
        p class="muted" {
            "Slug " code { (board.slug.as_str()) } " · gateway "
            @match directory.gateway(board.gateway_id) {
                Some(g) => a href={ "/gateways/" (g.id) } { (g.name) },
                None => (board.gateway_id),
            }
            " · agent limit " @if board.rules.max_agents == 0 { "none" } @else { (board.rules.max_agents) }
        }
        h2 { "Agents (" span data-count="total" { (views.len()) } ")" }
        div data-live-agents data-rows-container data-stream-url=(stream) data-filter-board=(board.id) data-filter-status="" {
            table class="responsive agents" {
                caption class="visually-hidden" { "Agents of this board" }
                (agent_table_head())
                tbody data-rows { @for view in &views { (agent_row(view, directory, false, now)) } }
            }
            @if views.is_empty() { p class="muted" data-empty { "No agents yet. Issue an enrollment token below and start an agent with it." } }
        }
        (agent_row_template())
        (directory.names_json())
        h2 id="enrollment" { "Enrollment tokens" }
        @if tokens.is_empty() {
            p class="muted" { "None issued." }
        } @else {
            table class="responsive" {
                thead { tr { th scope="col" { "Issued" } th scope="col" { "Expires" } th scope="col" { "Uses" } th scope="col" { "State" } th scope="col" { span class="visually-hidden" { "Actions" } } } }
                tbody {
                    @for token in tokens {
                        @let (state_words, active) = token_state(token, now);
                        tr id={ "token-" (token.id) } {
                            td data-label="Issued" { (utc(token.created_at)) }
                            td data-label="Expires" { (utc(token.expires_at)) }
                            td data-label="Uses" { (token.uses) " of " @match token.max_uses { Some(n) => (n), None => "unlimited" } }
                            td data-label="State" data-field="token-state" { (state_words) }
                            td {
                                @if token.revoked_at.is_none() && active {
                                    form method="post" action={ "/boards/" (board.id) "/enrollment-tokens/" (token.id) "/revoke" } {
                                        (csrf_field(session.csrf_token()))
                                        button type="submit" class="secondary" aria-label={ "Revoke the token issued " (token.created_at) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h3 { "Issue a token" }
        (errors.summary())
        form method="post" action={ "/boards/" (board.id) "/enrollment-tokens" } class="card" novalidate {
            (csrf_field(session.csrf_token()))
            (select("Expires after", "expires_in_seconds", &lifetimes, lifetime, errors))
            (input("Use limit", "max_uses", form.text("max_uses").unwrap_or_default(), InputKind::Number,
                Some("How many agents it may create; blank for no limit."), errors))
            button type="submit" { "Issue token" }
        }
    };
    Ok(page(&board.name, Section::Boards, session, body))
}

/// `GET /boards/{board_id}`.
pub async fn show_board(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
) -> PageResult<Response> {
    let id: BoardId = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let directory = Directory::load(&state).await?;
    let tokens = board_tokens(&state, id).await?;
    let form = QueryParams::default();
    render_board(
        &state,
        BoardPage {
            board: &board,
            directory: &directory,
            tokens: &tokens,
            session: &session,
            errors: &FormErrors::default(),
            form: &form,
            new_token: None,
        },
    )
    .await
}

/// `POST /boards/{board_id}/enrollment-tokens`: issues a token and shows it once.
pub async fn issue_enrollment_token(
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let id: BoardId = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let mut errors = FormErrors::default();
    let expires = optional_int(
        form.fields.text("expires_in_seconds"),
        "expires_in_seconds",
        &mut errors,
    );
    let max_uses = optional_int(form.fields.text("max_uses"), "max_uses", &mut errors);
    let issued = if errors.is_empty() {
        match enrollment::issue_enrollment_token(&state, id, expires, max_uses).await {
            Ok((_, secret)) => Some(secret),
            Err(error) => {
                errors = FormErrors::from_api(error, None)?;
                None
            }
        }
    } else {
        None
    };
    let directory = Directory::load(&state).await?;
    let tokens = board_tokens(&state, id).await?;
    let empty = QueryParams::default();
    let page = BoardPage {
        board: &board,
        directory: &directory,
        tokens: &tokens,
        session: &form.session,
        errors: &errors,
        form: if issued.is_some() {
            &empty
        } else {
            &form.fields
        },
        new_token: issued.as_ref().map(|s| s.expose()),
    };
    let response = render_board(&state, page).await?;
    Ok(match issued {
        Some(_) => no_store(response),
        None => (StatusCode::UNPROCESSABLE_ENTITY, response).into_response(),
    })
}

/// `POST /boards/{board_id}/enrollment-tokens/{token_id}/revoke`.
pub async fn revoke_enrollment_token(
    State(state): State<SharedState>,
    Path((board_id, token_id)): Path<(String, String)>,
    _form: CsrfForm,
) -> PageResult<Response> {
    let board: BoardId = path_id(&board_id, "board_id")?;
    let token: EnrollmentTokenId = path_id(&token_id, "token_id")?;
    enrollment::revoke_enrollment_token(&state, board, token).await?;
    Ok(Redirect::to(&format!("/boards/{board}#enrollment")).into_response())
}
