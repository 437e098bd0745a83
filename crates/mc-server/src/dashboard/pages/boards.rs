//! Boards: the list and create form; a board's page with its agents (live, and a form to
//! create one) and its enrollment tokens (issue with expiry and use limit, shown once;
//! revoke); the board's settings page.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mc_domain::agent::{AgentName, HeartbeatConfig};
use mc_domain::board::Board;
use mc_domain::enrollment::EnrollmentToken;
use mc_domain::ids::{BoardId, EnrollmentTokenId, GatewayId};
use mc_domain::page::{MAX_PAGE_LIMIT, PageRequest};
use mc_domain::time::Timestamp;
use mc_store::AgentFilter;

use super::fleet::{FleetFilter, fleet_views};
use super::{Directory, agent_row, agent_row_template, agent_table_head, last_event_id};
use crate::dashboard::forms::{
    FormErrors, InputKind, checkbox, csrf_field, input, optional_int, select,
};
use crate::dashboard::layout::{Notice, Section, page, shown_once, utc};
use crate::dashboard::session::Session;
use crate::dashboard::{CsrfForm, PageResult, SignedIn, no_store};
use crate::error::ApiError;
use crate::extract::{QueryParams, path_id};
use crate::services::agents::{self as agents, NewAgent, Origin};
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
    (action, submit): (&str, &str),
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
        form method="post" action=(action) class="card" novalidate {
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
            button type="submit" { (submit) }
        }
    }
}

fn list_body(
    directory: &Directory,
    counts: &HashMap<BoardId, u64>,
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
            (board_form(("/boards", "Create board"), directory, form, session, errors))
        }
    }
}

/// Each listed board's agent count, from the registry's counts (no scan of the agents).
fn agent_counts(state: &SharedState, directory: &Directory) -> HashMap<BoardId, u64> {
    directory
        .boards
        .iter()
        .map(|board| {
            let filter = AgentFilter {
                board_id: Some(board.id),
                gateway_id: None,
            };
            (board.id, state.registry.agent_count(filter))
        })
        .collect()
}

/// `GET /boards`.
pub async fn list_boards(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
) -> PageResult<Response> {
    let directory = Directory::load(&state).await?;
    let body = list_body(
        &directory,
        &agent_counts(&state, &directory),
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
    let mut errors = FormErrors::default();
    let input = board_fields(&form.fields, &mut errors);
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

/// A board form's fields; malformed gateway ids and numbers are recorded in `errors`.
fn board_fields(fields: &QueryParams, errors: &mut FormErrors) -> BoardFields {
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
    // Blank is "no limit" (0), also when editing.
    let max_agents = optional_int(fields.text("max_agents"), "max_agents", errors).or(Some(0));
    let flag = |name: &str| Some(fields.text(name).is_some());
    BoardFields {
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
    }
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
        &agent_counts(state, &directory),
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

/// The forms of a board's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoardForm {
    /// Issue an enrollment token.
    Token,
    /// Create an agent.
    Agent,
}

struct BoardPage<'a> {
    board: &'a Board,
    directory: &'a Directory,
    tokens: &'a [EnrollmentToken],
    session: &'a Session,
    /// The form that `errors` and `form` belong to.
    refused: BoardForm,
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
        refused,
        errors,
        form,
        new_token,
    } = parts;
    let (none, blank) = (FormErrors::default(), QueryParams::default());
    let pick = |which: BoardForm| {
        if which == refused {
            (errors, form)
        } else {
            (&none, &blank)
        }
    };
    let (agent_errors, agent_values) = pick(BoardForm::Agent);
    let (errors, form) = pick(BoardForm::Token);
    let managed = directory
        .gateway(board.gateway_id)
        .is_some_and(|g| g.url.is_managed());
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
            a class="button secondary" href={ "/boards/" (board.id) "/edit" } { "Edit board" }
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
            @if views.is_empty() { p class="muted" data-empty { "No agents yet. Create one below, or issue an enrollment token and start an agent with it." } }
        }
        (agent_row_template())
        (directory.names_json())
        h3 id="new-agent" { "New agent" }
        (agent_errors.summary())
        form method="post" action={ "/boards/" (board.id) "/agents" } class="card" novalidate {
            (csrf_field(session.csrf_token()))
            (input("Name", "name", agent_values.text("name").unwrap_or_default(), InputKind::Text,
                Some("Unique on this board, whatever the case."), agent_errors))
            (input("Heartbeat interval (seconds)", "interval_seconds", agent_values.text("interval_seconds").unwrap_or_default(),
                InputKind::Number, Some("Blank for 60."), agent_errors))
            (input("Offline after (seconds without a heartbeat)", "missing_tolerance", agent_values.text("missing_tolerance").unwrap_or_default(),
                InputKind::Number, Some("Blank for 120, or twice the interval if that is longer."), agent_errors))
            (checkbox("Board lead", "is_board_lead", agent_values.text("is_board_lead").is_some()))
            p class="hint" {
                @if managed { "Mission Control provisions it on the board's gateway." }
                @else { "The board's gateway is unmanaged: start the agent by hand with the token shown once after creating it." }
            }
            button type="submit" { "Create agent" }
        }
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
            refused: BoardForm::Token,
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
        refused: BoardForm::Token,
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

/// `POST /boards/{board_id}/agents`: creates an agent on the board and shows its page
/// with its token once; or the board page again with every invalid field marked.
pub async fn create_agent(
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let id: BoardId = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let fields = &form.fields;
    let mut errors = FormErrors::default();
    let mut invalid = mc_domain::ValidationErrors::default();
    let name = invalid.collect(AgentName::parse(
        fields.text("name").unwrap_or_default(),
        "name",
    ));
    let interval = optional_int(
        fields.text("interval_seconds"),
        "interval_seconds",
        &mut errors,
    );
    let tolerance = optional_int(
        fields.text("missing_tolerance"),
        "missing_tolerance",
        &mut errors,
    );
    let config = if errors.is_empty() {
        invalid.collect(HeartbeatConfig::parse(interval, tolerance))
    } else {
        None
    };
    if !invalid.0.is_empty() {
        errors.merge(FormErrors::from_api(ApiError::Validation(invalid), None)?);
    }
    let refusal = match (name, config) {
        (Some(name), Some(heartbeat_config)) if errors.is_empty() => {
            let new = NewAgent {
                heartbeat_config,
                is_board_lead: fields.text("is_board_lead").is_some(),
                ..NewAgent::named(name)
            };
            match agents::create_agent(&state, &board, new, Origin::Admin).await {
                Ok((agent, token)) => {
                    let response =
                        super::agent::show_created(&state, &form.session, &agent, &token).await?;
                    return Ok(no_store(response));
                }
                Err(error) => Some(error),
            }
        }
        _ => None,
    };
    if let Some(error) = refusal {
        errors.merge(FormErrors::from_api(error, Some("name"))?);
    }
    let directory = Directory::load(&state).await?;
    let tokens = board_tokens(&state, id).await?;
    let page = BoardPage {
        board: &board,
        directory: &directory,
        tokens: &tokens,
        session: &form.session,
        refused: BoardForm::Agent,
        errors: &errors,
        form: &form.fields,
        new_token: None,
    };
    let response = render_board(&state, page).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, response).into_response())
}

/// The form values of a stored board.
fn board_values(board: &Board) -> QueryParams {
    let rules = &board.rules;
    let flags = [
        ("require_approval_for_done", rules.require_approval_for_done),
        (
            "require_review_before_done",
            rules.require_review_before_done,
        ),
        (
            "comment_required_for_review",
            rules.comment_required_for_review,
        ),
        (
            "block_status_changes_with_pending_approval",
            rules.block_status_changes_with_pending_approval,
        ),
        (
            "only_lead_can_change_status",
            rules.only_lead_can_change_status,
        ),
    ];
    let max_agents = if rules.max_agents == 0 {
        String::new()
    } else {
        rules.max_agents.to_string()
    };
    [
        ("name", board.name.clone()),
        ("slug", board.slug.as_str().to_owned()),
        ("description", board.description.clone()),
        ("gateway_id", board.gateway_id.to_string()),
        ("max_agents", max_agents),
    ]
    .into_iter()
    .chain(
        flags
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| (name, "on".to_owned())),
    )
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

fn edit_body(
    board: &Board,
    directory: &Directory,
    values: &QueryParams,
    session: &Session,
    errors: &FormErrors,
    saved: bool,
) -> Markup {
    let action = format!("/boards/{}/edit", board.id);
    html! {
        @if saved { (Notice::Done("The board's settings are saved.".to_owned())) }
        h1 { "Edit board " (board.name) }
        p { a href={ "/boards/" (board.id) } { "Back to the board" } }
        (board_form((&action, "Save changes"), directory, values, session, errors))
    }
}

/// `GET /boards/{board_id}/edit`: the board's settings.
pub async fn edit_board(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    query: QueryParams,
) -> PageResult<Response> {
    let id: BoardId = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let directory = Directory::load(&state).await?;
    let body = edit_body(
        &board,
        &directory,
        &board_values(&board),
        &session,
        &FormErrors::default(),
        query.text("saved").is_some(),
    );
    Ok(page(&board.name, Section::Boards, &session, body))
}

/// `POST /boards/{board_id}/edit`: saves the settings, all or nothing; a refused form
/// comes back with every invalid field marked (422).
pub async fn update_board(
    State(state): State<SharedState>,
    Path(board_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let id: BoardId = path_id(&board_id, "board_id")?;
    let board = load_board(&state, id).await?;
    let mut errors = FormErrors::default();
    let input = board_fields(&form.fields, &mut errors);
    let refused = if errors.is_empty() {
        match service::update_board(&state, board.clone(), input).await {
            Ok(saved) => {
                return Ok(
                    Redirect::to(&format!("/boards/{}/edit?saved=1", saved.id)).into_response()
                );
            }
            Err(error) => Some(error),
        }
    } else {
        service::check_board_update(&state, board.clone(), input)
            .await
            .err()
    };
    if let Some(error) = refused {
        errors.merge(FormErrors::from_api(error, Some("slug"))?);
    }
    let directory = Directory::load(&state).await?;
    let body = edit_body(
        &board,
        &directory,
        &form.fields,
        &form.session,
        &errors,
        false,
    );
    let response = page(&board.name, Section::Boards, &form.session, body);
    Ok((StatusCode::UNPROCESSABLE_ENTITY, response).into_response())
}
