//! The live dashboard at `/`: server-rendered HTML (maud, compiled into the binary), a
//! stylesheet and one small script embedded with `include_str!`, live updates over the
//! event streams of `/api/v1`. No build step, no CDN: it works offline.
//!
//! Handlers are thin: they read a form into the same field structs the REST API uses and
//! call the same services; the dashboard adds only presentation. Errors are mapped to
//! pages in one place, [`PageError`]; invalid form fields come back next to the field.

pub mod assets;
pub mod forms;
pub mod layout;
pub mod pages;
pub mod session;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mc_domain::time::Timestamp;

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::SharedState;
use session::{SESSION_COOKIE, Session, SessionKey, cookie};

/// The dashboard's routes (mounted at `/`).
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/", get(pages::fleet::show_overview))
        .route(
            "/sign-in",
            get(pages::sign_in::show_sign_in).post(pages::sign_in::sign_in),
        )
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route("/agents/{agent_id}", get(pages::agent::show_agent))
        .route(
            "/agents/{agent_id}/token",
            post(pages::agent::rotate_agent_token),
        )
        .route(
            "/agents/{agent_id}/provision",
            post(pages::agent::reprovision_agent),
        )
        .route(
            "/agents/{agent_id}/delete",
            get(pages::agent::confirm_delete_agent).post(pages::agent::delete_agent),
        )
        .route(
            "/gateways",
            get(pages::gateways::list_gateways).post(pages::gateways::create_gateway),
        )
        .route(
            "/gateways/{gateway_id}",
            get(pages::gateways::edit_gateway).post(pages::gateways::update_gateway),
        )
        .route(
            "/gateways/{gateway_id}/delete",
            get(pages::gateways::confirm_delete_gateway).post(pages::gateways::delete_gateway),
        )
        .route(
            "/boards",
            get(pages::boards::list_boards).post(pages::boards::create_board),
        )
        .route("/boards/{board_id}", get(pages::boards::show_board))
        .route(
            "/boards/{board_id}/edit",
            get(pages::boards::edit_board).post(pages::boards::update_board),
        )
        .route(
            "/boards/{board_id}/agents",
            post(pages::boards::create_agent),
        )
        .route(
            "/boards/{board_id}/enrollment-tokens",
            post(pages::boards::issue_enrollment_token),
        )
        .route(
            "/boards/{board_id}/enrollment-tokens/{token_id}/revoke",
            post(pages::boards::revoke_enrollment_token),
        )
        .route("/activity", get(pages::activity::show_activity))
        .route("/assets/app.css", get(assets::stylesheet))
        .route("/assets/app.js", get(assets::script))
        .layer(axum::middleware::map_response(content_security_policy))
}

/// Pages load only this server's own script, styles and streams, and are never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn content_security_policy(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// Whether cookies should carry `Secure`: the server is reached over HTTPS.
pub fn cookies_secure(state: &SharedState, headers: &HeaderMap) -> bool {
    state.base_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// A failed dashboard request, rendered as a page.
#[derive(Debug)]
pub enum PageError {
    /// Any error of the services, by its API meaning.
    Api(ApiError),
    /// A form without the session's CSRF token.
    Csrf,
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl From<mc_store::StoreError> for PageError {
    fn from(error: mc_store::StoreError) -> Self {
        Self::Api(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "This form expired or did not come from this dashboard. Go back, reload the page and try again.".to_owned(),
            ),
            Self::Api(error) => {
                let message = match error {
                    ApiError::Internal(reason)
                    | ApiError::Unavailable(reason)
                    | ApiError::Contention(reason) => {
                        tracing::error!(error = %reason, "dashboard request failed");
                        "Something went wrong on the server; it has been logged. Try again shortly.".to_owned()
                    }
                    ApiError::NotFound(what) => format!("{what}."),
                    ApiError::Validation(errors) => errors
                        .0
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                    ApiError::Conflict(reason) | ApiError::Forbidden(reason) => reason.clone(),
                    other => other.to_string(),
                };
                (error.status(), message)
            }
        };
        let body = layout::error_page(status, &message);
        (status, body).into_response()
    }
}

/// The result of a dashboard handler.
pub type PageResult<T = Response> = Result<T, PageError>;

/// Where to go after signing in: the path asked for, if it is a local dashboard path.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.contains(['\r', '\n']) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// Percent-encodes a query value.
pub fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The sign-in redirect for a request without a valid session: back to the page asked
/// for (for a form post: the page the form was on) after signing in.
fn to_sign_in(parts: &Parts) -> Response {
    let wanted = if parts.method == Method::GET {
        parts.uri.path_and_query().map(|pq| pq.as_str().to_owned())
    } else {
        parts
            .headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .and_then(|referer| referer.parse::<axum::http::Uri>().ok())
            .and_then(|uri| uri.path_and_query().map(|pq| pq.as_str().to_owned()))
    };
    let next = safe_next(wanted.as_deref());
    let target = if next == "/" {
        "/sign-in".to_owned()
    } else {
        format!("/sign-in?next={}", encode_query_value(&next))
    };
    Redirect::to(&target).into_response()
}

/// A signed-in operator; without a valid session the request goes to the sign-in page.
#[derive(Debug, Clone)]
pub struct SignedIn(pub Session);

impl FromRequestParts<SharedState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let key = SessionKey::for_admin_token(&state.admin_token);
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|value| key.verify(value, Timestamp::now()))
            .map(Self)
            .ok_or_else(|| to_sign_in(parts))
    }
}

/// A form posted by a signed-in operator, with its CSRF token checked.
#[derive(Debug)]
pub struct CsrfForm {
    /// The operator's session.
    pub session: Session,
    /// The form's fields.
    pub fields: QueryParams,
}

/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";

impl FromRequest<SharedState> for CsrfForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let SignedIn(session) = SignedIn::from_request_parts(&mut parts, state).await?;
        let fields = read_form(Request::from_parts(parts, body), state).await?;
        let presented = fields.text(CSRF_FIELD).unwrap_or_default();
        if !session.csrf_matches(presented) {
            return Err(PageError::Csrf.into_response());
        }
        Ok(Self { session, fields })
    }
}

/// Reads an `application/x-www-form-urlencoded` body.
pub async fn read_form(request: Request, state: &SharedState) -> Result<QueryParams, Response> {
    let bytes = axum::body::Bytes::from_request(request, state)
        .await
        .map_err(|_| PageError::Api(ApiError::PayloadTooLarge).into_response())?;
    Ok(QueryParams::parse(&String::from_utf8_lossy(&bytes)))
}

/// Marks a response as not to be cached (pages that show a secret once).
pub fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/agents/1?x=2")), "/agents/1?x=2");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("/a?b=c d"), "/a%3Fb%3Dc%20d");
    }
}
