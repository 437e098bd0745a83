//! Gateways: the list with each one's connection state in words, create, edit and delete
//! (confirmed). The gateway token is write-only: the form never shows it, blank keeps it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mc_domain::gateway::Gateway;
use mc_domain::ids::GatewayId;

use crate::api::v1::gateways::GatewayStatusRead;
use crate::dashboard::forms::{FormErrors, InputKind, checkbox, csrf_field, input};
use crate::dashboard::layout::{Notice, Section, page};
use crate::dashboard::session::Session;
use crate::dashboard::{CsrfForm, PageError, PageResult, SignedIn};
use crate::error::ApiError;
use crate::extract::{QueryParams, path_id};
use crate::services::gateways::{self as service, GatewayFields};
use crate::state::SharedState;
use mc_gateway::GatewayPool;

/// A gateway's connection state for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionState {
    /// One or two words.
    pub label: &'static str,
    /// The reason, in a sentence.
    pub words: String,
}

/// What is known about a gateway's connection. The one place to change when the gateway
/// connection status lands.
pub fn connection_state(pool: &GatewayPool, gateway: &Gateway) -> ConnectionState {
    let status = GatewayStatusRead::of(pool, gateway);
    let label = match (status.managed, status.connected) {
        (false, _) => "Unmanaged",
        (true, true) => "Connected",
        (true, false) => "Not connected",
    };
    let words = match (status.connected, status.last_error) {
        (true, _) => {
            let protocol = status
                .protocol
                .map(|p| format!("protocol {p}"))
                .unwrap_or_default();
            let version = status.version.unwrap_or_default();
            format!("{version} {protocol}").trim().to_owned()
        }
        (false, Some(error)) => error,
        (false, None) => "connecting".to_owned(),
    };
    ConnectionState { label, words }
}

/// The values a gateway form shows.
#[derive(Debug, Default)]
struct GatewayFormValues {
    name: String,
    url: String,
    workspace_root: String,
    allow_insecure_tls: bool,
    disable_device_pairing: bool,
    has_token: bool,
}

impl GatewayFormValues {
    fn of(gateway: &Gateway) -> Self {
        Self {
            name: gateway.name.clone(),
            url: gateway.url.stored().to_owned(),
            workspace_root: gateway.workspace_root.clone(),
            allow_insecure_tls: gateway.allow_insecure_tls,
            disable_device_pairing: gateway.disable_device_pairing,
            has_token: gateway.token.is_some(),
        }
    }

    fn posted(form: &QueryParams, has_token: bool) -> Self {
        Self {
            name: form.text("name").unwrap_or_default().to_owned(),
            url: form.text("url").unwrap_or_default().to_owned(),
            workspace_root: form.text("workspace_root").unwrap_or_default().to_owned(),
            allow_insecure_tls: form.text("allow_insecure_tls").is_some(),
            disable_device_pairing: form.text("disable_device_pairing").is_some(),
            has_token,
        }
    }
}

fn gateway_form(
    action: &str,
    submit: &str,
    values: &GatewayFormValues,
    editing: bool,
    session: &Session,
    errors: &FormErrors,
) -> Markup {
    let token_hint = if values.has_token {
        "A token is stored. Leave blank to keep it; it is never shown."
    } else {
        "Optional. Write-only: it is never shown again."
    };
    html! {
        (errors.summary())
        form method="post" action=(action) class="card" novalidate {
            (csrf_field(session.csrf_token()))
            (input("Name", "name", &values.name, InputKind::Text, None, errors))
            (input("URL", "url", &values.url, InputKind::Url,
                Some("ws:// or wss:// address of the OpenClaw gateway. Leave empty for an unmanaged gateway (its agents only heartbeat)."), errors))
            (input("Workspace root", "workspace_root", &values.workspace_root, InputKind::Text,
                Some("Directory for agent workspaces on the gateway host; required with a URL."), errors))
            (input("Token", "token", "", InputKind::Password, Some(token_hint), errors))
            @if editing && values.has_token { (checkbox("Remove the stored token", "remove_token", false)) }
            (checkbox("Allow self-signed TLS certificates", "allow_insecure_tls", values.allow_insecure_tls))
            (checkbox("Disable device pairing", "disable_device_pairing", values.disable_device_pairing))
            button type="submit" { (submit) }
        }
    }
}

fn list_body(
    pool: &GatewayPool,
    gateways: &[Gateway],
    session: &Session,
    values: &GatewayFormValues,
    errors: &FormErrors,
) -> Markup {
    html! {
        h1 { "Gateways" }
        @if gateways.is_empty() {
            p class="muted" { "No gateways yet. Create one below; boards need a gateway." }
        } @else {
            table class="responsive" {
                thead { tr { th scope="col" { "Name" } th scope="col" { "URL" } th scope="col" { "Connection" } th scope="col" { "Token" } } }
                tbody {
                    @for gateway in gateways {
                        @let state = connection_state(pool, gateway);
                        tr {
                            td data-label="Name" { a href={ "/gateways/" (gateway.id) } { (gateway.name) } }
                            td data-label="URL" { @if gateway.url.is_managed() { code { (gateway.url.stored()) } } @else { "(none)" } }
                            td data-label="Connection" { strong { (state.label) } ": " (state.words) }
                            td data-label="Token" { @if gateway.token.is_some() { "stored" } @else { "none" } }
                        }
                    }
                }
            }
        }
        h2 { "New gateway" }
        (gateway_form("/gateways", "Create gateway", values, false, session, errors))
    }
}

async fn all_gateways(state: &SharedState) -> PageResult<Vec<Gateway>> {
    Ok(super::Directory::load(state).await?.gateways)
}

/// `GET /gateways`.
pub async fn list_gateways(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
) -> PageResult<Response> {
    let gateways = all_gateways(&state).await?;
    let body = list_body(
        &state.gateways,
        &gateways,
        &session,
        &GatewayFormValues::default(),
        &FormErrors::default(),
    );
    Ok(page("Gateways", Section::Gateways, &session, body))
}

fn token_field(form: &QueryParams) -> Option<String> {
    form.text("token")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// `POST /gateways`: creates a gateway, or shows the form again with every invalid
/// field marked.
pub async fn create_gateway(
    State(state): State<SharedState>,
    form: CsrfForm,
) -> PageResult<Response> {
    let fields = &form.fields;
    let values = GatewayFormValues::posted(fields, false);
    let input = GatewayFields {
        name: Some(values.name.clone()),
        url: Some(values.url.clone()),
        token: Some(token_field(fields)),
        workspace_root: Some(values.workspace_root.clone()),
        allow_insecure_tls: Some(values.allow_insecure_tls),
        disable_device_pairing: Some(values.disable_device_pairing),
    };
    match service::create_gateway(&state, input).await {
        Ok(gateway) => Ok(Redirect::to(&format!("/gateways/{}", gateway.id)).into_response()),
        Err(error) => {
            let errors = FormErrors::from_api(error, None)?;
            let gateways = all_gateways(&state).await?;
            let body = list_body(&state.gateways, &gateways, &form.session, &values, &errors);
            let response = page("Gateways", Section::Gateways, &form.session, body);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, response).into_response())
        }
    }
}

fn edit_body(
    pool: &GatewayPool,
    gateway: &Gateway,
    values: &GatewayFormValues,
    session: &Session,
    errors: &FormErrors,
    saved: bool,
) -> Markup {
    let state = connection_state(pool, gateway);
    html! {
        h1 { "Gateway " (gateway.name) }
        @if saved { p class="card" role="status" { "Saved." } }
        p class="card" { strong { (state.label) } ": " (state.words) }
        h2 { "Settings" }
        (gateway_form(&format!("/gateways/{}", gateway.id), "Save changes", values, true, session, errors))
        p { a class="button danger" href={ "/gateways/" (gateway.id) "/delete" } { "Delete gateway…" } }
    }
}

fn confirm_delete_body(
    gateway: &Gateway,
    boards: &[&mc_domain::board::Board],
    session: &Session,
    refusal: Option<Notice>,
) -> Markup {
    html! {
        @if let Some(refusal) = &refusal { (refusal) }
        h1 { "Delete gateway " (gateway.name) "?" }
        @if !boards.is_empty() {
            div class="card" {
                p { "These boards use the gateway:" }
                ul { @for board in boards { li { a href={ "/boards/" (board.id) } { (board.name) } } } }
            }
        }
        div class="card" {
            p { "The gateway is removed from Mission Control together with its main agents. A gateway that boards still use cannot be deleted: delete those boards or move them to another gateway first. This cannot be undone." }
            form method="post" action={ "/gateways/" (gateway.id) "/delete" } class="actions" {
                (csrf_field(session.csrf_token()))
                button type="submit" class="danger" { "Delete gateway" }
                a href={ "/gateways/" (gateway.id) } { "Cancel" }
            }
        }
    }
}

/// The boards whose agents run on gateway `id`.
fn boards_on(directory: &super::Directory, id: GatewayId) -> Vec<&mc_domain::board::Board> {
    directory
        .boards
        .iter()
        .filter(|board| board.gateway_id == id)
        .collect()
}

/// `GET /gateways/{gateway_id}/delete`: asks for confirmation.
pub async fn confirm_delete_gateway(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
) -> PageResult<Response> {
    let id: GatewayId = path_id(&gateway_id, "gateway_id")?;
    let gateway = crate::api::v1::gateways::load_gateway(&state, id).await?;
    let directory = super::Directory::load(&state).await?;
    let boards = boards_on(&directory, id);
    let body = confirm_delete_body(&gateway, &boards, &session, None);
    Ok(page("Delete gateway", Section::Gateways, &session, body))
}

/// `POST /gateways/{gateway_id}/delete`: deletes the gateway and goes back to the list;
/// while boards use it, the confirmation page says so (409) and nothing is deleted.
pub async fn delete_gateway(
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let id: GatewayId = path_id(&gateway_id, "gateway_id")?;
    let gateway = crate::api::v1::gateways::load_gateway(&state, id).await?;
    match service::delete_gateway(&state, id).await {
        Ok(()) => Ok(Redirect::to("/gateways").into_response()),
        Err(ApiError::Conflict(reason)) => {
            let directory = super::Directory::load(&state).await?;
            let boards = boards_on(&directory, id);
            let refusal = Some(Notice::Refused(reason));
            let body = confirm_delete_body(&gateway, &boards, &form.session, refusal);
            let response = page("Delete gateway", Section::Gateways, &form.session, body);
            Ok((StatusCode::CONFLICT, response).into_response())
        }
        Err(other) => Err(PageError::Api(other)),
    }
}

/// `GET /gateways/{gateway_id}`: the edit form.
pub async fn edit_gateway(
    SignedIn(session): SignedIn,
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
    query: QueryParams,
) -> PageResult<Response> {
    let id: GatewayId = path_id(&gateway_id, "gateway_id")?;
    let gateway = crate::api::v1::gateways::load_gateway(&state, id).await?;
    let body = edit_body(
        &state.gateways,
        &gateway,
        &GatewayFormValues::of(&gateway),
        &session,
        &FormErrors::default(),
        query.text("saved").is_some(),
    );
    Ok(page(&gateway.name, Section::Gateways, &session, body))
}

/// `POST /gateways/{gateway_id}`: saves the changes, all or nothing.
pub async fn update_gateway(
    State(state): State<SharedState>,
    Path(gateway_id): Path<String>,
    form: CsrfForm,
) -> PageResult<Response> {
    let id: GatewayId = path_id(&gateway_id, "gateway_id")?;
    let gateway = crate::api::v1::gateways::load_gateway(&state, id).await?;
    let fields = &form.fields;
    let values = GatewayFormValues::posted(fields, gateway.token.is_some());
    let token = if fields.text("remove_token").is_some() {
        Some(None)
    } else {
        token_field(fields).map(Some)
    };
    let input = GatewayFields {
        name: Some(values.name.clone()),
        url: Some(values.url.clone()),
        token,
        workspace_root: Some(values.workspace_root.clone()),
        allow_insecure_tls: Some(values.allow_insecure_tls),
        disable_device_pairing: Some(values.disable_device_pairing),
    };
    match service::update_gateway(&state, gateway.clone(), input).await {
        Ok(saved) => Ok(Redirect::to(&format!("/gateways/{}?saved=1", saved.id)).into_response()),
        Err(error) => {
            let errors = FormErrors::from_api(error, None)?;
            let body = edit_body(
                &state.gateways,
                &gateway,
                &values,
                &form.session,
                &errors,
                false,
            );
            let response = page(&gateway.name, Section::Gateways, &form.session, body);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, response).into_response())
        }
    }
}
