//! The harness: [`TestServer`] runs the real Mission Control server in-process on
//! `127.0.0.1:0` over its own temporary data directory, with typed admin set-up through
//! `mc-client`; [`Front`] is a loopback HTTP front that answers a script of errors first
//! and then forwards to the server, recording every request it saw and when.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use mc_client::{
    AgentCreate, BoardCreate, Client, EnrollmentTokenCreate, GatewayCreate, HeartbeatConfig, Secret,
};
use mc_domain::token::generate_admin_token;
use mc_server::config::ServerConfig;
use mc_server::startup::Server;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How long [`eventually`] waits for an expected state.
pub const EVENTUALLY_DEADLINE: Duration = Duration::from_secs(10);

/// A running server with its own data directory; stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The admin token.
    pub admin: Secret,
    /// A client for the server.
    pub client: Client,
    _data_dir: TempDir,
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    /// Starts the server (20 ms liveness tick, 50 ms write-behind).
    pub async fn spawn() -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let admin = generate_admin_token();
        let mut config = ServerConfig::for_data_dir(data_dir.path());
        config.admin_token = Some(admin.clone());
        config.liveness_tick = Duration::from_millis(20);
        config.write_behind_interval = Duration::from_millis(50);
        let server = Server::build(config).await.expect("the server builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = format!("http://{}", listener.local_addr().expect("an address"));
        let (shutdown, signal) = oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async move {
            let _ = signal.await;
        }));
        let client = Client::new(&address, Duration::from_secs(30)).expect("a client");
        Self {
            address,
            admin,
            client,
            _data_dir: data_dir,
            _shutdown: shutdown,
        }
    }

    /// A new board on a new unmanaged gateway.
    pub async fn board(&self) -> Uuid {
        let gateway = self
            .client
            .create_gateway(
                &self.admin,
                &GatewayCreate {
                    name: unique("gateway"),
                    url: String::new(),
                },
            )
            .await
            .expect("the gateway is created");
        let slug = unique("board");
        self.client
            .create_board(
                &self.admin,
                &BoardCreate {
                    name: format!("Board {slug}"),
                    slug,
                    description: "A board for agent client tests.".into(),
                    gateway_id: gateway.id,
                    max_agents: 100,
                },
            )
            .await
            .expect("the board is created")
            .id
    }

    /// An agent on a new board, heartbeating every `interval_seconds`, with its token.
    pub async fn agent(&self, interval_seconds: u32) -> (Uuid, Secret) {
        let board_id = self.board().await;
        let agent = self
            .client
            .create_agent(
                &self.admin,
                &AgentCreate {
                    name: unique("agent"),
                    board_id,
                    heartbeat_config: Some(HeartbeatConfig {
                        interval_seconds,
                        missing_tolerance: 120,
                    }),
                },
            )
            .await
            .expect("the agent is created");
        let token = self
            .client
            .rotate_agent_token(&self.admin, agent.id)
            .await
            .expect("the agent gets a token");
        (agent.id, token)
    }

    /// The agent's computed status as the admin reads it.
    pub async fn status_of(&self, agent_id: Uuid) -> String {
        self.client
            .get_agent(&self.admin, agent_id)
            .await
            .expect("the agent is readable")
            .status
    }

    /// An enrollment token for `board_id` that may create `max_uses` agents.
    pub async fn enrollment_token(&self, board_id: Uuid, max_uses: u32) -> Secret {
        self.client
            .create_enrollment_token(
                &self.admin,
                board_id,
                &EnrollmentTokenCreate {
                    expires_in_seconds: None,
                    max_uses: Some(max_uses),
                },
            )
            .await
            .expect("the enrollment token is issued")
            .token
            .expect("a new enrollment token carries its secret")
    }
}

/// What the front answers instead of forwarding.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// This status with an empty body, and `Retry-After: <seconds>` when given.
    Status {
        /// The status code.
        status: u16,
        /// The `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// This status and body.
    Body {
        /// The status code.
        status: u16,
        /// The body.
        body: &'static str,
    },
}

/// `status` with no body and no `Retry-After`.
pub fn status(status: u16) -> Scripted {
    Scripted::Status {
        status,
        retry_after: None,
    }
}

/// A request the front saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Its path.
    pub path: String,
    /// The `status` of its JSON body, if any.
    pub reported: Option<String>,
    /// Its `X-Agent-Token`, if any.
    pub agent_token: Option<String>,
    /// The status the front answered.
    pub answered: u16,
}

struct FrontState {
    upstream: Option<String>,
    script: Mutex<VecDeque<Scripted>>,
    seen: Mutex<Vec<Seen>>,
    http: reqwest::Client,
}

/// A loopback HTTP front: scripted answers first, then forwarding to the upstream
/// (502 when there is none).
pub struct Front {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    state: Arc<FrontState>,
}

impl Front {
    /// Starts a front for `upstream` answering `script` to the first requests.
    pub async fn start(upstream: Option<&str>, script: Vec<Scripted>) -> Self {
        let state = Arc::new(FrontState {
            upstream: upstream.map(str::to_owned),
            script: Mutex::new(script.into()),
            seen: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
        });
        let app = axum::Router::new()
            .fallback(front_request)
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, state }
    }

    /// Every request seen so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("the log lock").clone()
    }
}

async fn front_request(State(state): State<Arc<FrontState>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let reported = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
    let agent_token = header("x-agent-token");
    let scripted = state.script.lock().expect("the script lock").pop_front();
    let response = match (scripted, &state.upstream) {
        (
            Some(Scripted::Status {
                status,
                retry_after,
            }),
            _,
        ) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::from_u16(status).expect("a status");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
            }
            response
        }
        (Some(Scripted::Body { status, body }), _) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).expect("a status");
            response
        }
        (None, Some(upstream)) => {
            let mut forwarded = state
                .http
                .request(parts.method.clone(), format!("{upstream}{path}"))
                .body(body.clone());
            for name in ["x-agent-token", "content-type", "authorization"] {
                if let Some(value) = header(name) {
                    forwarded = forwarded.header(name, value);
                }
            }
            match forwarded.send().await {
                Ok(answer) => {
                    let mut response = Response::builder().status(answer.status().as_u16());
                    for name in ["x-agent-token", "content-type"] {
                        if let Some(value) = answer.headers().get(name) {
                            response = response.header(name, value.as_bytes());
                        }
                    }
                    let bytes = answer.bytes().await.unwrap_or_default();
                    response.body(Body::from(bytes)).expect("a response")
                }
                Err(_) => bad_gateway(),
            }
        }
        (None, None) => bad_gateway(),
    };
    state.seen.lock().expect("the log lock").push(Seen {
        at,
        path,
        reported,
        agent_token,
        answered: response.status().as_u16(),
    });
    response
}

fn bad_gateway() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Polls `check` every 25 ms until it holds; fails the test after [`EVENTUALLY_DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < EVENTUALLY_DEADLINE,
            "{what} did not happen within {EVENTUALLY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A URL on which nothing listens: a port bound and released again.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let address = listener.local_addr().expect("an address");
    drop(listener);
    format!("http://{address}")
}
