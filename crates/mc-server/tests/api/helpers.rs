//! The test harness: [`TestApp`] runs the real server on `127.0.0.1:0` over its own
//! temporary data directory and offers one typed method per endpoint, so a test reads as
//! the HTTP conversation it specifies.
//!
//! The store is chosen by `MC_TEST_BACKEND`: `sqlite` (the default: a database file in
//! the data directory) or `postgres` (a fresh schema on this test process's throwaway
//! PostgreSQL, see `mc-testpg`). `scripts/test` runs this suite once with each.

use std::future::Future;
use std::time::{Duration, Instant};

use mc_domain::Timestamp;
use mc_domain::token::{Secret, generate_admin_token};
use mc_server::config::ServerConfig;
use mc_server::startup::Server;
use mc_testpg::TestPostgres;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How often the liveness engine looks for silent agents in tests: short, so offline
/// flips are observed within a fraction of a second of the deadline.
pub const LIVENESS_TICK: Duration = Duration::from_millis(20);

/// How long `last_seen_at` writes may wait before they are flushed, in tests.
pub const WRITE_BEHIND_INTERVAL: Duration = Duration::from_millis(50);

/// How long [`eventually`] waits for an expected state before the test fails.
pub const EVENTUALLY_DEADLINE: Duration = Duration::from_secs(10);

/// The body size limit the contract promises by default (1 MiB).
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// The environment variable choosing the store the suite runs on.
pub const BACKEND_VARIABLE: &str = "MC_TEST_BACKEND";

/// The store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the data directory.
    Sqlite,
    /// A schema of the throwaway PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend `MC_TEST_BACKEND` names; SQLite when it is unset.
    pub fn from_env() -> Self {
        match std::env::var(BACKEND_VARIABLE).as_deref() {
            Err(_) | Ok("" | "sqlite") => Self::Sqlite,
            Ok("postgres") => Self::Postgres,
            Ok(other) => panic!("{BACKEND_VARIABLE}={other:?}: expected `sqlite` or `postgres`"),
        }
    }
}

/// The credentials a request carries.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `Authorization: Bearer <admin token>`.
    Admin,
    /// `X-Agent-Token: <token>` (an agent token or an enrollment token).
    Agent(&'a str),
    /// `Authorization: Bearer <any value>`.
    Bearer(&'a str),
    /// No credentials at all.
    None,
}

/// A gateway and a board on it, as created by [`TestApp::unmanaged_board`].
#[derive(Debug, Clone)]
pub struct BoardFixture {
    /// The unmanaged gateway's id.
    pub gateway_id: String,
    /// The board's id.
    pub board_id: String,
}

/// An agent created by the admin, with its own token.
#[derive(Debug, Clone)]
pub struct AgentFixture {
    /// The agent's id.
    pub id: String,
    /// The agent's name.
    pub name: String,
    /// The board it was created on.
    pub board_id: String,
    /// Its plaintext agent token.
    pub token: String,
}

/// An enrollment token as issued by the admin.
#[derive(Debug, Clone)]
pub struct EnrollmentFixture {
    /// The token's id (for listing and revoking).
    pub id: String,
    /// The board it enrolls agents on.
    pub board_id: String,
    /// The plaintext `mce_...` token.
    pub token: String,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    serve: JoinHandle<anyhow::Result<()>>,
}

/// A running Mission Control server with its own temporary data directory.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234` (changes on restart).
    pub address: String,
    /// The admin bearer token the server accepts.
    pub admin_token: String,
    /// A client without proxies, shared by every request of the test.
    pub client: reqwest::Client,
    data_dir: TempDir,
    database_url: Option<String>,
    configure: fn(&mut ServerConfig),
    running: Option<Running>,
}

impl TestApp {
    /// Starts a server with the test defaults (20 ms liveness tick, 50 ms write-behind).
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server whose configuration `configure` adjusts after the test defaults
    /// are applied. The same adjustment is applied again on [`TestApp::restart`].
    pub async fn spawn_with(configure: fn(&mut ServerConfig)) -> Self {
        let database_url = match Backend::from_env() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestPostgres::shared().fresh_schema_url().await),
        };
        Self::spawn_on(database_url, configure).await
    }

    /// Starts a server on the database at `database_url` (`None`: an SQLite file in the
    /// data directory), whatever `MC_TEST_BACKEND` says.
    pub async fn spawn_on(database_url: Option<String>, configure: fn(&mut ServerConfig)) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("the HTTP client builds");
        let mut app = Self {
            address: String::new(),
            admin_token: generate_admin_token().expose().to_owned(),
            client,
            data_dir: tempfile::tempdir().expect("a temporary data directory"),
            database_url,
            configure,
            running: None,
        };
        app.start().await;
        app
    }

    /// Starts the server on the data directory (again) and a fresh port.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        let mut config = ServerConfig::for_data_dir(self.data_dir.path());
        config.database_url.clone_from(&self.database_url);
        config.admin_token = Some(Secret::new(self.admin_token.clone()));
        config.liveness_tick = LIVENESS_TICK;
        config.write_behind_interval = WRITE_BEHIND_INTERVAL;
        (self.configure)(&mut config);
        let server = Server::build(config).await.expect("the server builds");
        self.admin_token = server.admin_token().expose().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("a bound address").port();
        let (shutdown, signal) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = signal.await;
                })
                .await
        });
        self.address = format!("http://127.0.0.1:{port}");
        self.running = Some(Running { shutdown, serve });
    }

    /// Shuts the server down gracefully and waits until it has finished (pending
    /// `last_seen_at` writes flushed).
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the server is running");
        let _ = running.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(30), running.serve)
            .await
            .expect("graceful shutdown finishes within 30 s")
            .expect("the serve task does not panic")
            .expect("the server shuts down without error");
    }

    /// A graceful shutdown followed by a start on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// The agent's `last_seen_at` as a fresh start would read it back from the database
    /// right now (rows and liveness log), through a second store on the same database:
    /// what survives if the server dies this instant.
    pub async fn durable_last_seen(&self, agent_id: &str) -> Option<Timestamp> {
        let agents = self
            .second_store()
            .await
            .all_agents()
            .await
            .expect("the agents load");
        agents
            .into_iter()
            .find(|stored| stored.agent.id.to_string() == agent_id)
            .and_then(|stored| stored.agent.last_seen_at)
    }

    /// The agent's `last_seen_at` in its database row alone (without the liveness log
    /// not folded into it yet).
    pub async fn row_last_seen(&self, agent_id: &str) -> Option<Timestamp> {
        let id = agent_id.parse().expect("an agent id");
        self.second_store()
            .await
            .agent(id)
            .await
            .expect("the agent reads")
            .and_then(|agent| agent.last_seen_at)
    }

    /// Stores a new agent named `name` and its create job through a second store on the
    /// test database, as another replica sharing it would (this server's memory does not
    /// know the agent); returns the agent's id.
    pub async fn store_agent_with_create_job(
        &self,
        board_id: &str,
        gateway_id: &str,
        name: &str,
    ) -> String {
        self.store_elsewhere(Some(board_id), gateway_id, name).await
    }

    /// Stores a main agent (no board) for `gateway_id` and its create job, as another
    /// replica creating it would; returns the agent's id.
    pub async fn store_main_agent_elsewhere(&self, gateway_id: &str) -> String {
        self.store_elsewhere(None, gateway_id, "Main agent made elsewhere")
            .await
    }

    async fn store_elsewhere(
        &self,
        board_id: Option<&str>,
        gateway_id: &str,
        name: &str,
    ) -> String {
        use mc_domain::activity::{EventType, NewActivity};
        use mc_domain::agent::{Agent, AgentName};
        use mc_store::ProvisionAction;
        let now = Timestamp::now();
        let name = AgentName::parse(name, "name").expect("a valid name");
        let gateway_id = gateway_id.parse().expect("a gateway id");
        let agent = Agent::new(
            board_id.map(|id| id.parse().expect("a board id")),
            gateway_id,
            name,
            now,
        );
        let event = NewActivity {
            event_type: EventType::AgentCreated,
            message: format!("Agent {} was created elsewhere.", agent.name),
            agent_id: Some(agent.id),
            board_id: agent.board_id,
            data: None,
            created_at: now,
        };
        let job = mc_store::NewProvisionJob {
            agent_id: agent.id,
            gateway_id,
            action: ProvisionAction::Create,
            gateway_agent_id: None,
            session_key: None,
            requested_at: now,
        };
        self.second_store()
            .await
            .insert_agent_with_job(&agent, None, None, &event, &job)
            .await
            .expect("the agent and its job are stored");
        agent.id.to_string()
    }

    /// Stores a new agent named `name` on `board_id`, as enrolled with the enrollment
    /// token `enrollment_id` (one use spent), through a second store on the test database:
    /// what another replica's enrollment leaves before this server has followed it.
    /// Returns the agent's id.
    pub async fn store_enrolled_agent(
        &self,
        board_id: &str,
        gateway_id: &str,
        name: &str,
        enrollment_id: &str,
    ) -> String {
        use mc_domain::activity::{EventType, NewActivity};
        use mc_domain::agent::{Agent, AgentName};
        let now = Timestamp::now();
        let token_id = enrollment_id.parse().expect("an enrollment token id");
        let agent = Agent {
            enrolled_via: Some(token_id),
            ..Agent::new(
                Some(board_id.parse().expect("a board id")),
                gateway_id.parse().expect("a gateway id"),
                AgentName::parse(name, "name").expect("a valid name"),
                now,
            )
        };
        let event = NewActivity {
            event_type: EventType::AgentCreated,
            message: format!("Agent {} was created by enrollment elsewhere.", agent.name),
            agent_id: Some(agent.id),
            board_id: agent.board_id,
            data: None,
            created_at: now,
        };
        let token = mc_domain::token::generate_agent_token();
        let spend = mc_store::EnrollmentSpend { token_id, now };
        self.second_store()
            .await
            .insert_agent(&agent, Some(token.digest()), Some(spend), &event)
            .await
            .expect("the agent is stored");
        agent.id.to_string()
    }

    async fn second_store(&self) -> std::sync::Arc<dyn mc_store::Store> {
        let mut config = ServerConfig::for_data_dir(self.data_dir.path());
        config.database_url.clone_from(&self.database_url);
        mc_store::open(&config.effective_database_url(), false)
            .await
            .expect("a second store opens on the test database")
    }

    /// A request to `path` (absolute, e.g. `/api/v1/agents`) with the given credentials.
    pub fn request(&self, method: Method, path: &str, auth: Auth<'_>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{}", self.address, path));
        match auth {
            Auth::Admin => builder.bearer_auth(&self.admin_token),
            Auth::Agent(token) => builder.header("X-Agent-Token", token),
            Auth::Bearer(token) => builder.bearer_auth(token),
            Auth::None => builder,
        }
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&Value>,
    ) -> Response {
        let mut builder = self.request(method, path, auth);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        builder
            .send()
            .await
            .expect("the request reaches the server")
    }

    /// Sends `method path` with a raw body and content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.request(method, path, auth)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("the request reaches the server")
    }

    // --- health and documents ---------------------------------------------------------

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Response {
        self.send(Method::GET, "/healthz", Auth::None, None).await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Response {
        self.send(Method::GET, "/readyz", Auth::None, None).await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Response {
        self.send(Method::GET, "/openapi.json", Auth::None, None)
            .await
    }

    // --- gateways ---------------------------------------------------------------------

    /// `POST /api/v1/gateways` as admin.
    pub async fn create_gateway(&self, body: &Value) -> Response {
        self.send(Method::POST, "/api/v1/gateways", Auth::Admin, Some(body))
            .await
    }

    /// `GET /api/v1/gateways?{query}` as admin.
    pub async fn list_gateways(&self, query: &str) -> Response {
        self.send(
            Method::GET,
            &with_query("/api/v1/gateways", query),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `GET /api/v1/gateways/{id}` as admin.
    pub async fn get_gateway(&self, id: &str) -> Response {
        self.send(
            Method::GET,
            &format!("/api/v1/gateways/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `PATCH /api/v1/gateways/{id}` as admin.
    pub async fn patch_gateway(&self, id: &str, body: &Value) -> Response {
        self.send(
            Method::PATCH,
            &format!("/api/v1/gateways/{id}"),
            Auth::Admin,
            Some(body),
        )
        .await
    }

    /// `DELETE /api/v1/gateways/{id}` as admin.
    pub async fn delete_gateway(&self, id: &str) -> Response {
        self.send(
            Method::DELETE,
            &format!("/api/v1/gateways/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    // --- boards -----------------------------------------------------------------------

    /// `POST /api/v1/boards` as admin.
    pub async fn create_board(&self, body: &Value) -> Response {
        self.send(Method::POST, "/api/v1/boards", Auth::Admin, Some(body))
            .await
    }

    /// `GET /api/v1/boards?{query}` as admin.
    pub async fn list_boards(&self, query: &str) -> Response {
        self.send(
            Method::GET,
            &with_query("/api/v1/boards", query),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `GET /api/v1/boards/{id}` as admin.
    pub async fn get_board(&self, id: &str) -> Response {
        self.send(
            Method::GET,
            &format!("/api/v1/boards/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `PATCH /api/v1/boards/{id}` as admin.
    pub async fn patch_board(&self, id: &str, body: &Value) -> Response {
        self.send(
            Method::PATCH,
            &format!("/api/v1/boards/{id}"),
            Auth::Admin,
            Some(body),
        )
        .await
    }

    /// `DELETE /api/v1/boards/{id}` as admin.
    pub async fn delete_board(&self, id: &str) -> Response {
        self.send(
            Method::DELETE,
            &format!("/api/v1/boards/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    // --- enrollment tokens ------------------------------------------------------------

    /// `POST /api/v1/boards/{board_id}/enrollment-tokens` as admin.
    pub async fn create_enrollment_token(&self, board_id: &str, body: &Value) -> Response {
        self.send(
            Method::POST,
            &format!("/api/v1/boards/{board_id}/enrollment-tokens"),
            Auth::Admin,
            Some(body),
        )
        .await
    }

    /// `GET /api/v1/boards/{board_id}/enrollment-tokens` as admin.
    pub async fn list_enrollment_tokens(&self, board_id: &str) -> Response {
        self.send(
            Method::GET,
            &format!("/api/v1/boards/{board_id}/enrollment-tokens"),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `DELETE /api/v1/boards/{board_id}/enrollment-tokens/{id}` as admin.
    pub async fn revoke_enrollment_token(&self, board_id: &str, id: &str) -> Response {
        self.send(
            Method::DELETE,
            &format!("/api/v1/boards/{board_id}/enrollment-tokens/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    // --- agents -----------------------------------------------------------------------

    /// `POST /api/v1/agents` as admin.
    pub async fn create_agent(&self, body: &Value) -> Response {
        self.send(Method::POST, "/api/v1/agents", Auth::Admin, Some(body))
            .await
    }

    /// `GET /api/v1/agents?{query}` as admin.
    pub async fn list_agents(&self, query: &str) -> Response {
        self.send(
            Method::GET,
            &with_query("/api/v1/agents", query),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `GET /api/v1/agents/{id}` as admin.
    pub async fn get_agent(&self, id: &str) -> Response {
        self.send(
            Method::GET,
            &format!("/api/v1/agents/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `PATCH /api/v1/agents/{id}` as admin.
    pub async fn patch_agent(&self, id: &str, body: &Value) -> Response {
        self.send(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Auth::Admin,
            Some(body),
        )
        .await
    }

    /// `DELETE /api/v1/agents/{id}` as admin.
    pub async fn delete_agent(&self, id: &str) -> Response {
        self.send(
            Method::DELETE,
            &format!("/api/v1/agents/{id}"),
            Auth::Admin,
            None,
        )
        .await
    }

    /// `POST /api/v1/agents/{id}/token` as admin.
    pub async fn rotate_agent_token(&self, id: &str) -> Response {
        self.send(
            Method::POST,
            &format!("/api/v1/agents/{id}/token"),
            Auth::Admin,
            None,
        )
        .await
    }

    // --- heartbeats -------------------------------------------------------------------

    /// `POST /api/v1/agents/heartbeat` (heartbeat by name, or bootstrap).
    pub async fn heartbeat_by_name(&self, auth: Auth<'_>, body: &Value) -> Response {
        self.send(Method::POST, "/api/v1/agents/heartbeat", auth, Some(body))
            .await
    }

    /// `POST /api/v1/agents/{agent_id}/heartbeat`.
    pub async fn heartbeat_agent_id(
        &self,
        auth: Auth<'_>,
        agent_id: &str,
        body: &Value,
    ) -> Response {
        self.send(
            Method::POST,
            &format!("/api/v1/agents/{agent_id}/heartbeat"),
            auth,
            Some(body),
        )
        .await
    }

    /// `POST /api/v1/agent/heartbeat` with the agent token and an optional raw JSON body
    /// (`None` sends no body and no content type, like `curl -X POST`).
    pub async fn agent_heartbeat(&self, token: &str, body: Option<&str>) -> Response {
        let builder = self.request(Method::POST, "/api/v1/agent/heartbeat", Auth::Agent(token));
        let builder = match body {
            Some(body) => builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned()),
            None => builder,
        };
        builder
            .send()
            .await
            .expect("the request reaches the server")
    }

    // --- activity ---------------------------------------------------------------------

    /// `GET /api/v1/activity?{query}`.
    pub async fn list_activity(&self, auth: Auth<'_>, query: &str) -> Response {
        self.send(
            Method::GET,
            &with_query("/api/v1/activity", query),
            auth,
            None,
        )
        .await
    }

    // --- fixtures ---------------------------------------------------------------------

    /// An unmanaged gateway (url `""`) and a board on it.
    pub async fn unmanaged_board(&self) -> BoardFixture {
        let gateway = expect_success(
            self.create_gateway(&json!({"name": unique("gateway"), "url": ""}))
                .await,
        )
        .await;
        let gateway_id = id_of(&gateway);
        let board_id = self.board_on(&gateway_id).await;
        BoardFixture {
            gateway_id,
            board_id,
        }
    }

    /// A new board on the gateway `gateway_id`, with room for 100 agents.
    pub async fn board_on(&self, gateway_id: &str) -> String {
        let slug = unique("board");
        let board = expect_success(
            self.create_board(&json!({
                "name": format!("Board {slug}"),
                "slug": slug,
                "description": "A board for tests.",
                "gateway_id": gateway_id,
                "max_agents": 100,
            }))
            .await,
        )
        .await;
        id_of(&board)
    }

    /// An agent created with `POST /agents` on `board_id`, given a token with
    /// `POST /agents/{id}/token`.
    pub async fn agent_with_token(&self, board_id: &str) -> AgentFixture {
        self.agent_with_config(board_id, None).await
    }

    /// Like [`TestApp::agent_with_token`], with an explicit `heartbeat_config`.
    pub async fn agent_with_config(
        &self,
        board_id: &str,
        heartbeat_config: Option<Value>,
    ) -> AgentFixture {
        let name = unique("agent");
        let mut body = json!({"name": name, "board_id": board_id});
        if let Some(config) = heartbeat_config {
            body["heartbeat_config"] = config;
        }
        let agent = expect_success(self.create_agent(&body).await).await;
        let id = id_of(&agent);
        let token = self.new_token_for(&id).await;
        AgentFixture {
            id,
            name,
            board_id: board_id.to_owned(),
            token,
        }
    }

    /// Rotates the agent's token and returns the new one.
    pub async fn new_token_for(&self, agent_id: &str) -> String {
        let rotated = expect_success(self.rotate_agent_token(agent_id).await).await;
        rotated["token"]
            .as_str()
            .expect("the rotation response carries the token")
            .to_owned()
    }

    /// An enrollment token for `board_id` created with `body` (e.g. `{"max_uses": 1}`).
    pub async fn enrollment_token(&self, board_id: &str, body: &Value) -> EnrollmentFixture {
        let created = expect_success(self.create_enrollment_token(board_id, body).await).await;
        EnrollmentFixture {
            id: id_of(&created),
            board_id: board_id.to_owned(),
            token: created["token"]
                .as_str()
                .expect("the created enrollment token carries its secret")
                .to_owned(),
        }
    }

    /// The enrollment token as listed for its board.
    pub async fn listed_enrollment_token(&self, enrollment: &EnrollmentFixture) -> Value {
        let id = enrollment.id.as_str();
        let page = expect_json(
            self.list_enrollment_tokens(&enrollment.board_id).await,
            StatusCode::OK,
        )
        .await;
        page["items"]
            .as_array()
            .expect("a page has items")
            .iter()
            .find(|item| item["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("enrollment token {id} is listed: {page}"))
    }

    /// The agent as the admin reads it now.
    pub async fn agent(&self, id: &str) -> Value {
        expect_json(self.get_agent(id).await, StatusCode::OK).await
    }

    /// Every activity event about `agent_id`, newest first, as the admin sees them.
    pub async fn activity_of(&self, agent_id: &str) -> Vec<Value> {
        let page = expect_json(
            self.list_activity(Auth::Admin, &format!("agent_id={agent_id}"))
                .await,
            StatusCode::OK,
        )
        .await;
        page["items"].as_array().expect("a page has items").clone()
    }

    /// The agent heartbeats itself by id reporting `status`; returns its AgentRead (200).
    pub async fn report_status(&self, agent: &AgentFixture, status: &str) -> Value {
        expect_json(
            self.heartbeat_agent_id(
                Auth::Agent(&agent.token),
                &agent.id,
                &json!({ "status": status }),
            )
            .await,
            StatusCode::OK,
        )
        .await
    }

    /// How many events of type `event_type` were recorded about `agent_id`.
    pub async fn count_events(&self, agent_id: &str, event_type: &str) -> usize {
        self.activity_of(agent_id)
            .await
            .iter()
            .filter(|event| event["event_type"] == event_type)
            .count()
    }
}

/// `path?query`, or `path` alone when `query` is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// A name no other test uses, e.g. `agent-3f2c...`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// The `id` field of a JSON object, as a string.
pub fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an `id` string in {value}"))
        .to_owned()
}

/// Asserts the response status and returns the body as JSON (the body is shown when the
/// status differs, so a failure explains itself).
pub async fn expect_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("a readable body");
    assert_eq!(actual, status, "{url} answered {actual}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
}

/// Asserts a 2xx response and returns the body as JSON.
pub async fn expect_success(response: Response) -> Value {
    let actual = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("a readable body");
    assert!(actual.is_success(), "{url} answered {actual}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
}

/// Asserts a 4xx response and returns its status and JSON body.
pub async fn expect_client_error(response: Response) -> (StatusCode, Value) {
    let actual = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("a readable body");
    assert!(actual.is_client_error(), "{url} answered {actual}: {text}");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (actual, body)
}

/// Asserts a 422 whose first detail entry points at `loc` and returns the body.
pub async fn expect_validation_error(response: Response, loc: &[&str]) -> Value {
    let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let details = body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("a 422 detail is an array: {body}"));
    assert!(
        details.iter().any(|entry| entry["loc"] == json!(loc)),
        "a detail entry at {loc:?}: {body}"
    );
    for entry in details {
        assert!(
            entry["msg"].is_string(),
            "every detail entry has a msg: {body}"
        );
        assert!(
            entry["type"].is_string(),
            "every detail entry has a type: {body}"
        );
    }
    body
}

/// Asserts a 4xx that is either 401 or 403: the caller is not allowed in.
pub async fn expect_denied(response: Response) {
    let (status, body) = expect_client_error(response).await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "expected 401 or 403, got {status}: {body}"
    );
}

/// The plaintext agent token sent back in the `X-Agent-Token` response header, if any.
pub fn agent_token_header(response: &Response) -> Option<String> {
    response
        .headers()
        .get("x-agent-token")
        .map(|value| value.to_str().expect("an ASCII token").to_owned())
}

/// Parses an RFC 3339 timestamp field.
pub fn timestamp(value: &Value) -> Timestamp {
    value
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .unwrap_or_else(|| panic!("an RFC 3339 timestamp, got {value}"))
}

/// Polls `check` every 25 ms until it holds, failing the test after
/// [`EVENTUALLY_DEADLINE`]. For waiting on an expected state, never on readiness.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, EVENTUALLY_DEADLINE, check).await;
}

/// Like [`eventually`], for a state that takes `limit` to come about (a wait the server
/// makes on purpose, e.g. for a gateway slow to see an agent).
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
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
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every field an AgentRead carries.
pub const AGENT_READ_FIELDS: [&str; 19] = [
    "id",
    "gateway_id",
    "board_id",
    "name",
    "status",
    "gateway_agent_id",
    "workspace_path",
    "is_mc_agent",
    "is_board_lead",
    "is_gateway_main",
    "openclaw_session_id",
    "last_seen_at",
    "created_at",
    "updated_at",
    "heartbeat_config",
    "identity_profile",
    "identity_template",
    "soul_template",
    "last_provision_error",
];

/// Asserts that `value` has the AgentRead shape and no token field.
pub fn assert_agent_read(value: &Value) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("an AgentRead object, got {value}"));
    for field in AGENT_READ_FIELDS {
        assert!(
            object.contains_key(field),
            "AgentRead lacks `{field}`: {value}"
        );
    }
    assert!(
        value["heartbeat_config"]["interval_seconds"].is_u64()
            && value["heartbeat_config"]["missing_tolerance"].is_u64(),
        "heartbeat_config has both settings: {value}"
    );
    assert!(
        !object.contains_key("token"),
        "AgentRead has no token: {value}"
    );
}
