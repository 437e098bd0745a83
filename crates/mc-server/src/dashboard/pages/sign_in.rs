//! Signing in with the admin token, and signing out.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use mc_domain::time::Timestamp;

use crate::dashboard::forms::{FormErrors, InputKind, csrf_field, input};
use crate::dashboard::layout::shell;
use crate::dashboard::session::{
    SESSION_COOKIE, SESSION_LIFETIME, SIGN_IN_COOKIE, SessionKey, append_cookie, cookie, set_cookie,
};
use crate::dashboard::{CsrfForm, SignedIn, cookies_secure, no_store, read_form, safe_next};
use crate::extract::QueryParams;
use crate::state::SharedState;

/// How long a sign-in form stays valid.
const SIGN_IN_FORM_LIFETIME: Duration = Duration::from_secs(3600);

/// The sign-in page with a fresh CSRF challenge (its nonce goes in a cookie).
fn sign_in_form(
    state: &SharedState,
    secure: bool,
    next: &str,
    errors: &FormErrors,
    status: StatusCode,
) -> Response {
    let key = SessionKey::for_admin_token(&state.admin_token);
    let (nonce, token) = key.sign_in_challenge();
    let markup = shell(
        "Sign in",
        html! {
            main id="main" class="narrow" {
                h1 { "Sign in to Mission Control" }
                (errors.summary())
                form method="post" action="/sign-in" class="card" {
                    (csrf_field(&token))
                    input type="hidden" name="next" value=(next);
                    (input("Admin token", "token", "", InputKind::Password,
                        Some("The server wrote it to data/admin-token when it first started."), errors))
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    let mut response = (status, Html(markup.into_string())).into_response();
    append_cookie(
        response.headers_mut(),
        set_cookie(SIGN_IN_COOKIE, &nonce, SIGN_IN_FORM_LIFETIME, secure),
    );
    no_store(response)
}

/// `GET /sign-in`: the form, or straight on when already signed in.
pub async fn show_sign_in(State(state): State<SharedState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let query = QueryParams::parse(parts.uri.query().unwrap_or_default());
    let next = safe_next(query.text("next"));
    if SignedIn::from_request_parts(&mut parts, &state)
        .await
        .is_ok()
    {
        return Redirect::to(&next).into_response();
    }
    let secure = cookies_secure(&state, &parts.headers);
    sign_in_form(
        &state,
        secure,
        &next,
        &FormErrors::default(),
        StatusCode::OK,
    )
}

/// `POST /sign-in`: checks the CSRF token and the admin token, starts a session and goes
/// to the page asked for.
pub async fn sign_in(State(state): State<SharedState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let secure = cookies_secure(&state, &parts.headers);
    let key = SessionKey::for_admin_token(&state.admin_token);
    let nonce = cookie(&parts.headers, SIGN_IN_COOKIE).map(str::to_owned);
    let form = match read_form(Request::from_parts(parts, body), &state).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let next = safe_next(form.text("next"));
    let mut errors = FormErrors::default();
    let csrf_ok = nonce.as_deref().is_some_and(|nonce| {
        key.sign_in_token_matches(nonce, form.text(crate::dashboard::CSRF_FIELD).unwrap_or(""))
    });
    let token = form.text("token").map(str::trim).unwrap_or("");
    if !csrf_ok {
        errors.add(
            "token",
            "This sign-in form expired or did not come from this server; enter the token again.",
        );
    } else if token.is_empty() {
        errors.add("token", "Enter the admin token.");
    } else if !state.admin_token.matches(token) {
        errors.add(
            "token",
            "This is not the admin token. Copy it from data/admin-token on the server.",
        );
    }
    if !errors.is_empty() {
        let status = if csrf_ok {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        return sign_in_form(&state, secure, &next, &errors, status);
    }
    let (_, value) = key.start(Timestamp::now());
    let mut response = Redirect::to(&next).into_response();
    append_cookie(
        response.headers_mut(),
        set_cookie(SESSION_COOKIE, &value, SESSION_LIFETIME, secure),
    );
    append_cookie(
        response.headers_mut(),
        set_cookie(SIGN_IN_COOKIE, "", Duration::ZERO, secure),
    );
    response
}

/// `POST /sign-out`: ends the session on this browser.
pub async fn sign_out(
    State(state): State<SharedState>,
    headers: HeaderMap,
    _form: CsrfForm,
) -> Response {
    let secure = cookies_secure(&state, &headers);
    let mut response = Redirect::to("/sign-in").into_response();
    append_cookie(
        response.headers_mut(),
        set_cookie(SESSION_COOKIE, "", Duration::ZERO, secure),
    );
    response
}
