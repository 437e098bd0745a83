//! [`Client`]: one typed method per `/api/v1` endpoint the CLI, the agent loop, the tests
//! and the benchmarks use. Agent calls carry `X-Agent-Token`, admin calls
//! `Authorization: Bearer`; secrets never appear in errors.

use std::time::Duration;

use mc_domain::token::Secret;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ClientError, parse_retry_after, with_sources};
use crate::wire::{
    AgentCreate, AgentRead, BoardCreate, BoardRead, Enrolled, EnrollmentTokenCreate,
    EnrollmentTokenRead, GatewayCreate, GatewayRead, HealthStatus, HeartbeatByName, Page,
    RotatedToken, StatusBody,
};

/// The header agents authenticate with, and in which enrollment returns a new token.
pub const AGENT_TOKEN_HEADER: &str = "x-agent-token";

/// Longest error detail quoted from a server answer.
const MAX_DETAIL_CHARS: usize = 300;

/// A client for one Mission Control server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The base URL without a trailing slash, e.g. `https://mc.example.com` or
    /// `http://10.0.0.5:8000/mission-control`.
    base: String,
}

impl Client {
    /// A client for `base_url` (`http://` or `https://`, optionally with a path prefix);
    /// every request is bounded by `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let base = normalize_base_url(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("mission-control/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::InvalidBaseUrl {
                url: base_url.to_owned(),
                reason: format!("cannot set up an HTTP client: {}", with_sources(&e)),
            })?;
        Ok(Self { http, base })
    }

    /// The base URL requests go to (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    // --- agents ---------------------------------------------------------------------

    /// `POST /api/v1/agent/heartbeat`: the agent named by `token` is alive and reports
    /// `status`; returns the agent as the server sees it now.
    pub async fn agent_heartbeat(
        &self,
        token: &Secret,
        status: HealthStatus,
    ) -> Result<AgentRead, ClientError> {
        let path = "/api/v1/agent/heartbeat";
        let request = self
            .request(Method::POST, path)
            .header(AGENT_TOKEN_HEADER, token.expose())
            .json(&StatusBody { status });
        let response = self.send("POST", path, request).await?;
        decode("POST", path, response).await
    }

    /// `POST /api/v1/agents/heartbeat` with an enrollment token: creates the agent `name`
    /// (on `board_id`, or the token's board) and returns it with its own token, which the
    /// server sends only in this answer.
    pub async fn enroll(
        &self,
        enrollment_token: &Secret,
        name: &str,
        board_id: Option<Uuid>,
        status: HealthStatus,
    ) -> Result<Enrolled, ClientError> {
        let path = "/api/v1/agents/heartbeat";
        let request = self
            .request(Method::POST, path)
            .header(AGENT_TOKEN_HEADER, enrollment_token.expose())
            .json(&HeartbeatByName {
                name,
                board_id,
                status,
            });
        let response = self.send("POST", path, request).await?;
        let token = match response.headers().get(AGENT_TOKEN_HEADER) {
            None => None,
            Some(value) => Some(Secret::new(value.to_str().map_err(|_| {
                ClientError::MalformedResponse {
                    method: "POST",
                    path: path.to_owned(),
                    reason: "the X-Agent-Token header is not ASCII".into(),
                }
            })?)),
        };
        let agent = decode("POST", path, response).await?;
        Ok(Enrolled { agent, token })
    }

    // --- admin ----------------------------------------------------------------------

    /// `GET /api/v1/agents/{id}` as admin.
    pub async fn get_agent(&self, admin: &Secret, id: Uuid) -> Result<AgentRead, ClientError> {
        self.admin_call(
            Method::GET,
            &format!("/api/v1/agents/{id}"),
            admin,
            None::<&()>,
        )
        .await
    }

    /// `GET /api/v1/agents?board_id={board_id}` as admin (first page).
    pub async fn list_agents_on_board(
        &self,
        admin: &Secret,
        board_id: Uuid,
    ) -> Result<Page<AgentRead>, ClientError> {
        let path = format!("/api/v1/agents?board_id={board_id}");
        self.admin_call(Method::GET, &path, admin, None::<&()>)
            .await
    }

    /// `POST /api/v1/agents` as admin.
    pub async fn create_agent(
        &self,
        admin: &Secret,
        agent: &AgentCreate,
    ) -> Result<AgentRead, ClientError> {
        self.admin_call(Method::POST, "/api/v1/agents", admin, Some(agent))
            .await
    }

    /// `POST /api/v1/agents/{id}/token` as admin: a new token for the agent (the old one
    /// stops working).
    pub async fn rotate_agent_token(
        &self,
        admin: &Secret,
        id: Uuid,
    ) -> Result<Secret, ClientError> {
        let path = format!("/api/v1/agents/{id}/token");
        let rotated: RotatedToken = self
            .admin_call(Method::POST, &path, admin, None::<&()>)
            .await?;
        Ok(rotated.token)
    }

    /// `POST /api/v1/gateways` as admin.
    pub async fn create_gateway(
        &self,
        admin: &Secret,
        gateway: &GatewayCreate,
    ) -> Result<GatewayRead, ClientError> {
        self.admin_call(Method::POST, "/api/v1/gateways", admin, Some(gateway))
            .await
    }

    /// `POST /api/v1/boards` as admin.
    pub async fn create_board(
        &self,
        admin: &Secret,
        board: &BoardCreate,
    ) -> Result<BoardRead, ClientError> {
        self.admin_call(Method::POST, "/api/v1/boards", admin, Some(board))
            .await
    }

    /// `POST /api/v1/boards/{board_id}/enrollment-tokens` as admin.
    pub async fn create_enrollment_token(
        &self,
        admin: &Secret,
        board_id: Uuid,
        terms: &EnrollmentTokenCreate,
    ) -> Result<EnrollmentTokenRead, ClientError> {
        let path = format!("/api/v1/boards/{board_id}/enrollment-tokens");
        self.admin_call(Method::POST, &path, admin, Some(terms))
            .await
    }

    /// `GET /api/v1/boards/{board_id}/enrollment-tokens` as admin (first page).
    pub async fn list_enrollment_tokens(
        &self,
        admin: &Secret,
        board_id: Uuid,
    ) -> Result<Page<EnrollmentTokenRead>, ClientError> {
        let path = format!("/api/v1/boards/{board_id}/enrollment-tokens");
        self.admin_call(Method::GET, &path, admin, None::<&()>)
            .await
    }

    // --- plumbing -------------------------------------------------------------------

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn admin_call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        admin: &Secret,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let method_name = method_name(&method);
        let mut request = self.request(method, path).bearer_auth(admin.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(method_name, path, request).await?;
        decode(method_name, path, response).await
    }

    /// Sends the request; a transport failure or a non-success status becomes an error.
    async fn send(
        &self,
        method: &'static str,
        path: &str,
        request: RequestBuilder,
    ) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: format!("{}{path}", self.base),
            reason: transport_reason(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::Status {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            detail: error_detail(&body, status.canonical_reason()),
            retry_after,
        })
    }
}

/// Reads a success answer as JSON of type `T`.
async fn decode<T: DeserializeOwned>(
    method: &'static str,
    path: &str,
    response: Response,
) -> Result<T, ClientError> {
    let malformed = |reason: String| ClientError::MalformedResponse {
        method,
        path: path.to_owned(),
        reason,
    };
    let body = response
        .bytes()
        .await
        .map_err(|e| malformed(format!("reading the body failed: {}", with_sources(&e))))?;
    serde_json::from_slice(&body).map_err(|e| {
        malformed(format!(
            "{e} (the body starts with {:?}); is the base URL a Mission Control server?",
            snippet(&body)
        ))
    })
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        _ => "request",
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

fn transport_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("timed out ({})", with_sources(error))
    } else {
        with_sources(error)
    }
}

/// The `detail` of a `{"detail": ...}` error body, else the start of the body, else the
/// status's reason phrase.
fn error_detail(body: &[u8], reason: Option<&str>) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(detail) = value.get("detail")
    {
        return match detail {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
    }
    let text = snippet(body);
    if text.trim().is_empty() {
        reason.unwrap_or("no detail").to_owned()
    } else {
        text
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.into_owned(),
    }
}

/// Checks and normalises a base URL: `http` or `https`, a host, no query or fragment,
/// no trailing slash.
pub(crate) fn normalize_base_url(raw: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidBaseUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = raw.trim();
    let url = Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL has no query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_their_trailing_slash_and_keep_a_path_prefix() {
        assert_eq!(
            normalize_base_url("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            normalize_base_url(" https://mc.example.com/prefix/ ").unwrap(),
            "https://mc.example.com/prefix"
        );
    }

    #[test]
    fn base_urls_that_cannot_work_are_refused_with_the_reason() {
        for (url, reason) in [
            ("ftp://host", "scheme"),
            ("127.0.0.1:8000", ""),
            ("http://host/?a=1", "query"),
            ("not a url", ""),
        ] {
            let error = normalize_base_url(url).unwrap_err().to_string();
            assert!(error.contains(url.trim()), "{error}");
            assert!(error.contains(reason), "{error}");
        }
    }

    #[test]
    fn error_details_come_from_the_detail_field_or_the_body() {
        assert_eq!(
            error_detail(br#"{"detail":"Unauthorized","request_id":"x"}"#, None),
            "Unauthorized"
        );
        assert_eq!(
            error_detail(br#"{"detail":[{"loc":["body","status"]}]}"#, None),
            r#"[{"loc":["body","status"]}]"#
        );
        assert_eq!(
            error_detail(b"<html>bad gateway</html>", None),
            "<html>bad gateway</html>"
        );
        assert_eq!(
            error_detail(b"", Some("Service Unavailable")),
            "Service Unavailable"
        );
        assert_eq!(
            error_detail(&[b'x'; 1000], None).chars().count(),
            MAX_DETAIL_CHARS + 1
        );
    }
}
