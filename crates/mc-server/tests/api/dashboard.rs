//! The dashboard as a browser without JavaScript sees it: sign-in and sessions, every
//! page's rendering, every form's validation and CSRF protection, and the session cookie
//! as a credential for the JSON API's reads only.

use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, REFERER, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions};

use crate::gateway_fixtures::{
    board_on_fake, create_agent_named, managed_board, provision_jobs, settled_jobs,
    spawn_provisioning_app,
};
use crate::helpers::{Auth, TestApp, eventually, expect_success, id_of, unique};

/// A page as received.
pub struct Page {
    /// The status.
    pub status: StatusCode,
    /// The `Location` header, for redirects.
    pub location: Option<String>,
    /// The body.
    pub html: String,
}

impl Page {
    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        value_of(&self.html, "name=\"csrf_token\" value=\"")
            .expect("the page has a form with a CSRF token")
    }

    /// The secret shown once on the page, if any.
    pub fn shown_secret(&self) -> Option<String> {
        self.html
            .find("id=\"secret-value\"")
            .and_then(|at| value_of(&self.html[at..], "value=\""))
    }

    /// The error message shown next to form field `name`.
    pub fn field_error(&self, name: &str) -> Option<String> {
        let marker = format!("id=\"field-{name}-error\">");
        let start = self.html.find(&marker)? + marker.len();
        let end = self.html[start..].find('<')? + start;
        Some(self.html[start..end].to_owned())
    }
}

fn value_of(html: &str, prefix: &str) -> Option<String> {
    let start = html.find(prefix)? + prefix.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// A browser-like client of the dashboard: it keeps the cookies it is given and never
/// follows redirects (so tests see them).
pub struct Browser {
    base: String,
    client: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    /// A browser with no cookies.
    pub fn new(app: &TestApp) -> Self {
        Self {
            base: app.address.clone(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("the client builds"),
            cookies: Vec::new(),
        }
    }

    /// A browser signed in with the admin token.
    pub async fn signed_in(app: &TestApp) -> Self {
        let mut browser = Self::new(app);
        let form = browser.get("/sign-in").await;
        let page = browser
            .post_raw(
                "/sign-in",
                &[
                    ("csrf_token", &form.csrf()),
                    ("token", &app.admin_token),
                    ("next", "/"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert!(
            browser.cookie("mc_session").is_some(),
            "a session cookie is set"
        );
        browser
    }

    /// The cookie `name`, if the browser holds it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces (or sets) a cookie by hand.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(n, _)| n != name);
        self.cookies.push((name.to_owned(), value.to_owned()));
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, builder: reqwest::RequestBuilder) -> Page {
        let response = builder
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .expect("the request reaches the server");
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().expect("an ASCII cookie");
            let pair = text.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            self.cookies.retain(|(n, _)| n != name);
            if !text.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().expect("ASCII").to_owned());
        let html = response.text().await.expect("a text body");
        Page {
            status,
            location,
            html,
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Page {
        let builder = self.client.get(format!("{}{path}", self.base));
        self.send(builder).await
    }

    /// `POST path` with exactly these form fields.
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let builder = self
            .client
            .post(format!("{}{path}", self.base))
            .form(fields);
        self.send(builder).await
    }

    /// `POST path` with these fields and the CSRF token of the page at `form_page`.
    pub async fn post(&mut self, form_page: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(form_page).await.csrf();
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }
}

// --- Sign-in and sessions -------------------------------------------------------------

#[tokio::test]
async fn a_page_without_a_session_redirects_to_sign_in_and_back_after_it() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let page = browser.get("/boards?x=1").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.location.as_deref(),
        Some("/sign-in?next=/boards%3Fx%3D1")
    );

    let form = browser.get("/sign-in?next=/boards%3Fx%3D1").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.html.contains("name=\"next\" value=\"/boards?x=1\""),
        "{}",
        form.html
    );
    let signed_in = browser
        .post_raw(
            "/sign-in",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &app.admin_token),
                ("next", "/boards?x=1"),
            ],
        )
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location.as_deref(), Some("/boards?x=1"));
    assert_eq!(browser.get("/boards").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(format!("{}/sign-in", app.address))
        .send()
        .await
        .unwrap();
    let nonce = form.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = value_of(&form.text().await.unwrap(), "name=\"csrf_token\" value=\"").unwrap();
    let response = client
        .post(format!("{}/sign-in", app.address))
        .header(COOKIE, nonce)
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("token", app.admin_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("mc_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(session.contains("Max-Age=43200"), "{session}");
}

#[tokio::test]
async fn signing_in_with_a_wrong_token_shows_the_reason_next_to_the_field() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let form = browser.get("/sign-in").await;
    let page = browser
        .post_raw(
            "/sign-in",
            &[("csrf_token", &form.csrf()), ("token", "not-the-token")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        page.field_error("token")
            .unwrap()
            .contains("not the admin token")
    );
    assert!(browser.cookie("mc_session").is_none());
    let empty = browser.get("/sign-in").await;
    let page = browser
        .post_raw("/sign-in", &[("csrf_token", &empty.csrf()), ("token", " ")])
        .await;
    assert_eq!(
        page.field_error("token").as_deref(),
        Some("Enter the admin token.")
    );
}

#[tokio::test]
async fn signing_in_without_the_forms_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.get("/sign-in").await;
    let page = browser
        .post_raw(
            "/sign-in",
            &[("csrf_token", "forged"), ("token", &app.admin_token)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(browser.cookie("mc_session").is_none());
}

#[tokio::test]
async fn a_tampered_session_cookie_goes_back_to_sign_in() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::signed_in(&app).await;
    let genuine = browser.cookie("mc_session").unwrap().to_owned();
    let (expires, rest) = genuine.split_once('.').unwrap();
    let later: i64 = expires.parse::<i64>().unwrap() + 3_600_000;
    browser.set_cookie("mc_session", &format!("{later}.{rest}"));
    let page = browser.get("/gateways").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/sign-in?next=/gateways"));
}

#[tokio::test]
async fn an_expired_session_goes_back_to_sign_in() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let key = mc_server::dashboard::session::SessionKey::for_admin_token(
        &mc_domain::token::Secret::new(app.admin_token.clone()),
    );
    let long_ago = mc_domain::Timestamp::now().plus_seconds(-13 * 3600);
    let (_, expired) = key.start(long_ago);
    browser.set_cookie("mc_session", &expired);
    let page = browser.get("/activity").await;
    assert_eq!(page.location.as_deref(), Some("/sign-in?next=/activity"));
}

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::signed_in(&app).await;
    let refused = browser
        .post_raw("/sign-out", &[("csrf_token", "forged")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get("/").await.status, StatusCode::OK);
    let out = browser.post("/", "/sign-out", &[]).await;
    assert_eq!(out.location.as_deref(), Some("/sign-in"));
    assert!(browser.cookie("mc_session").is_none());
    assert_eq!(browser.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_session_cookie_reads_the_api_and_its_streams_but_never_writes() {
    let app = TestApp::spawn().await;
    let browser = Browser::signed_in(&app).await;
    let cookie = format!("mc_session={}", browser.cookie("mc_session").unwrap());
    let get = app
        .request(Method::GET, "/api/v1/boards", Auth::None)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let stream = app
        .request(Method::GET, "/api/v1/agents/stream", Auth::None)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    drop(stream);
    let post = app
        .request(Method::POST, "/api/v1/gateways", Auth::None)
        .header(COOKIE, &cookie)
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let without = app
        .request(Method::GET, "/api/v1/boards", Auth::None)
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
}

// --- Pages ----------------------------------------------------------------------------

#[tokio::test]
async fn the_fleet_overview_counts_by_status_and_lists_every_agent() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let healthy = app.agent_with_token(&fixture.board_id).await;
    let waiting = app.agent_with_token(&fixture.board_id).await;
    app.report_status(&healthy, "healthy").await;
    let mut browser = Browser::signed_in(&app).await;
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.html.contains("data-count=\"total\">2<"),
        "{}",
        page.html
    );
    assert!(page.html.contains("data-count=\"healthy\">1<"));
    assert!(page.html.contains("data-count=\"provisioning\">1<"));
    assert!(page.html.contains(&format!(
        "id=\"agent-{}\" data-status=\"healthy\"",
        healthy.id
    )));
    assert!(page.html.contains(&format!(
        "id=\"agent-{}\" data-status=\"provisioning\"",
        waiting.id
    )));
    assert!(page.html.contains("every 60 s, offline after 120 s"));
    assert!(page.html.contains("/api/v1/agents/stream?last_event_id="));
    assert!(
        page.html.contains("s ago</time>"),
        "last seen is shown as an age"
    );
}

/// The agent count the boards page shows in the row of board `board_id`.
fn listed_agent_count(html: &str, board_id: &str) -> String {
    let row_start = html
        .find(&format!("href=\"/boards/{board_id}\""))
        .unwrap_or_else(|| panic!("board {board_id} is listed: {html}"));
    let row = &html[row_start..];
    let row = &row[..row.find("</tr>").expect("the row ends")];
    let cell = "data-label=\"Agents\">";
    let count = &row[row.find(cell).expect("an agents cell") + cell.len()..];
    count[..count.find('<').expect("the cell ends")].to_owned()
}

#[tokio::test]
async fn the_boards_page_counts_each_boards_agents_as_they_come_move_and_go() {
    let app = TestApp::spawn().await;
    let first = app.unmanaged_board().await;
    let second = app.unmanaged_board().await;
    let moving = app.agent_with_token(&first.board_id).await;
    let leaving = app.agent_with_token(&first.board_id).await;
    app.agent_with_token(&second.board_id).await;
    let mut browser = Browser::signed_in(&app).await;
    let counts = |html: &str| {
        [
            listed_agent_count(html, &first.board_id),
            listed_agent_count(html, &second.board_id),
        ]
    };
    assert_eq!(counts(&browser.get("/boards").await.html), ["2", "1"]);

    expect_success(
        app.patch_agent(&moving.id, &json!({"board_id": second.board_id}))
            .await,
    )
    .await;
    expect_success(app.delete_agent(&leaving.id).await).await;
    assert_eq!(counts(&browser.get("/boards").await.html), ["0", "2"]);
}

#[tokio::test]
async fn the_overview_filters_by_board_status_and_name() {
    let app = TestApp::spawn().await;
    let first = app.unmanaged_board().await;
    let second = app.unmanaged_board().await;
    let on_first = app.agent_with_token(&first.board_id).await;
    let on_second = app.agent_with_token(&second.board_id).await;
    app.report_status(&on_first, "healthy").await;
    let mut browser = Browser::signed_in(&app).await;

    let by_board = browser
        .get(&format!("/?board_id={}", second.board_id))
        .await;
    assert!(
        by_board
            .html
            .contains(&format!("id=\"agent-{}\"", on_second.id))
    );
    assert!(
        !by_board
            .html
            .contains(&format!("id=\"agent-{}\"", on_first.id))
    );

    let by_status = browser.get("/?status=healthy").await;
    assert!(by_status.html.contains(&format!(
        "id=\"agent-{}\" data-status=\"healthy\" data-name=\"{}\">",
        on_first.id, on_first.name
    )));
    assert!(by_status.html.contains(&format!(
        "id=\"agent-{}\" data-status=\"provisioning\" data-name=\"{}\" hidden",
        on_second.id, on_second.name
    )));

    let by_name = browser
        .get(&format!("/?q={}", on_second.name.to_uppercase()))
        .await;
    assert!(
        by_name
            .html
            .contains(&format!("id=\"agent-{}\"", on_second.id))
    );
    assert!(
        !by_name
            .html
            .contains(&format!("id=\"agent-{}\"", on_first.id))
    );

    let bad = browser.get("/?status=sleeping").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.html.contains("status must be one of"));
    let bad_board = browser.get("/?board_id=nope").await;
    assert_eq!(bad_board.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_agent_page_shows_fields_uptime_timeline_and_provisioning_in_words() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app.agent_with_token(&fixture.board_id).await;
    let mut browser = Browser::signed_in(&app).await;
    let before = browser.get(&format!("/agents/{}", agent.id)).await;
    assert!(
        before.html.contains("waiting for its first heartbeat"),
        "{}",
        before.html
    );
    app.report_status(&agent, "healthy").await;
    let page = browser.get(&format!("/agents/{}", agent.id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains(&agent.name));
    assert!(page.html.contains("Running: it has sent heartbeats"));
    assert!(
        page.html
            .contains("<dt>Main session</dt><dd>not assigned</dd>")
    );
    assert!(page.html.contains("<dt>Identity</dt><dd>Defaults.</dd>"));
    assert!(page.html.contains("uptime, last 24 hours"));
    assert!(page.html.contains("<svg class=\"timeline\""));
    assert!(page.html.contains("its agents only send heartbeats"));
    assert!(page.html.contains("Rotate token"));
    assert!(
        page.html
            .contains("Not provisioned by Mission Control: its gateway is unmanaged")
    );
    assert!(
        !page
            .html
            .contains(&format!("/agents/{}/provision\"", agent.id)),
        "no re-provision button for an agent Mission Control cannot provision"
    );
    assert!(
        page.html
            .contains("Re-provisioning is not offered: the gateway is unmanaged")
    );

    expect_success(
        app.patch_agent(
            &agent.id,
            &json!({"identity_profile": {"role": "Scout"}, "soul_template": "Be brief."}),
        )
        .await,
    )
    .await;
    let identity = browser.get(&format!("/agents/{}", agent.id)).await;
    assert!(
        identity.html.contains("role: Scout") && identity.html.contains("Own SOUL.md template."),
        "{}",
        identity.html
    );

    let missing = browser
        .get(&format!("/agents/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let malformed = browser.get("/agents/not-a-uuid").await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn rotating_a_token_shows_the_new_one_once_and_the_old_one_stops_working() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app.agent_with_token(&fixture.board_id).await;
    let mut browser = Browser::signed_in(&app).await;
    let path = format!("/agents/{}", agent.id);
    let page = browser.post(&path, &format!("{path}/token"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let token = page.shown_secret().expect("the new token is shown");
    assert_ne!(token, agent.token);
    assert!(page.html.contains("The previous token no longer works."));
    assert_eq!(
        app.agent_heartbeat(&agent.token, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.agent_heartbeat(&token, None).await.status(),
        StatusCode::OK
    );
    assert!(
        browser.get(&path).await.shown_secret().is_none(),
        "shown only once"
    );
}

#[tokio::test]
async fn a_form_without_the_sessions_csrf_token_changes_nothing() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app.agent_with_token(&fixture.board_id).await;
    let mut browser = Browser::signed_in(&app).await;
    let mut other = Browser::signed_in(&app).await;
    let other_sessions_token = other.get("/").await.csrf();
    for (path, fields) in [
        (format!("/agents/{}/token", agent.id), vec![]),
        (format!("/agents/{}/delete", agent.id), vec![]),
        (format!("/agents/{}/provision", agent.id), vec![]),
        ("/gateways".to_owned(), vec![("name", "g")]),
        (
            format!("/gateways/{}", fixture.gateway_id),
            vec![("name", "renamed")],
        ),
        (format!("/gateways/{}/delete", fixture.gateway_id), vec![]),
        ("/boards".to_owned(), vec![("name", "b")]),
        (
            format!("/boards/{}/edit", fixture.board_id),
            vec![("name", "renamed")],
        ),
        (
            format!("/boards/{}/agents", fixture.board_id),
            vec![("name", "sneaky")],
        ),
        (
            format!("/boards/{}/enrollment-tokens", fixture.board_id),
            vec![],
        ),
    ] {
        let mut forged = vec![("csrf_token", other_sessions_token.clone())];
        forged.extend(fields.into_iter().map(|(k, v)| (k, v.to_owned())));
        let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post_raw(&path, &forged).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        let missing = browser.post_raw(&path, &[]).await;
        assert_eq!(missing.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        app.agent_heartbeat(&agent.token, None).await.status(),
        StatusCode::OK
    );
    let gateways = expect_success(app.list_gateways("").await).await;
    assert_eq!(gateways["total"], 1);
    assert_ne!(gateways["items"][0]["name"], "renamed");
    let board = expect_success(app.get_board(&fixture.board_id).await).await;
    assert_ne!(board["name"], "renamed");
    let agents = expect_success(app.list_agents("").await).await;
    assert_eq!(agents["total"], 1, "no agent was created");
    let tokens = expect_success(app.list_enrollment_tokens(&fixture.board_id).await).await;
    assert_eq!(tokens["total"], 0);
}

#[tokio::test]
async fn a_form_posted_after_the_session_expired_goes_to_sign_in_and_back_to_its_page() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let board = format!("/boards/{}", fixture.board_id);
    let response = client
        .post(format!("{}{board}/agents", app.address))
        .header(REFERER, format!("{}{board}", app.address))
        .form(&[("csrf_token", "stale"), ("name", "late")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[LOCATION].to_str().unwrap(),
        format!("/sign-in?next={board}")
    );
    let agents = expect_success(app.list_agents("").await).await;
    assert_eq!(agents["total"], 0, "nothing was saved");
}

#[tokio::test]
async fn deleting_an_agent_asks_first_then_removes_it() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app.agent_with_token(&fixture.board_id).await;
    let mut browser = Browser::signed_in(&app).await;
    let confirm = browser.get(&format!("/agents/{}/delete", agent.id)).await;
    assert!(confirm.html.contains("cannot be undone"));
    let done = browser
        .post(
            &format!("/agents/{}/delete", agent.id),
            &format!("/agents/{}/delete", agent.id),
            &[],
        )
        .await;
    assert_eq!(done.location, Some(format!("/boards/{}", fixture.board_id)));
    assert_eq!(
        app.get_agent(&agent.id).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn creating_a_gateway_marks_every_invalid_field_and_saves_nothing() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::signed_in(&app).await;
    let page = browser
        .post(
            "/gateways",
            "/gateways",
            &[("name", " "), ("url", "http://x"), ("token", "secret")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        page.field_error("name").as_deref(),
        Some("name is required")
    );
    assert!(page.field_error("url").unwrap().contains("ws://"));
    assert!(
        page.html.contains("value=\"http://x\""),
        "entered values are kept"
    );
    assert!(!page.html.contains("secret"), "the token is never echoed");
    let page = browser
        .post(
            "/gateways",
            "/gateways",
            &[("name", "gw"), ("url", "ws://127.0.0.1:1")],
        )
        .await;
    assert!(
        page.field_error("workspace_root")
            .unwrap()
            .contains("required for a managed gateway")
    );
    let gateways = expect_success(app.list_gateways("").await).await;
    assert_eq!(gateways["total"], 0);
}

#[tokio::test]
async fn gateways_are_created_and_edited_with_a_write_only_token() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::signed_in(&app).await;
    let created = browser
        .post(
            "/gateways",
            "/gateways",
            &[
                ("name", "Main"),
                ("url", "ws://127.0.0.1:9"),
                ("workspace_root", "/srv/ws"),
                ("token", "gw-secret"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER);
    let path = created.location.unwrap();
    let edit = browser.get(&path).await;
    assert!(
        edit.html.contains("Not connected"),
        "the gateway at an address nobody listens on is shown as not connected"
    );
    assert!(edit.html.contains("A token is stored"));
    assert!(!edit.html.contains("gw-secret"));
    let saved = browser
        .post(
            &path,
            &path,
            &[
                ("name", "Renamed"),
                ("url", "ws://127.0.0.1:9"),
                ("workspace_root", "/srv/ws"),
                ("token", ""),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);
    let id = path.trim_start_matches("/gateways/");
    let gateway = expect_success(app.get_gateway(id).await).await;
    assert_eq!(gateway["name"], "Renamed");
    assert_eq!(
        gateway["has_token"], true,
        "a blank token field keeps the token"
    );
    let removed = browser
        .post(
            &path,
            &path,
            &[("name", "Renamed"), ("url", ""), ("remove_token", "on")],
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    let gateway = expect_success(app.get_gateway(id).await).await;
    assert_eq!(gateway["has_token"], false);
    assert_eq!(gateway["url"], "");
    let list = browser.get("/gateways").await;
    assert!(list.html.contains("its agents only send heartbeats"));
    let invalid = browser
        .post(&path, &path, &[("name", ""), ("url", "ftp://x")])
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.field_error("name").is_some() && invalid.field_error("url").is_some());
    let unchanged = expect_success(app.get_gateway(id).await).await;
    assert_eq!(unchanged["name"], "Renamed", "nothing half-saved");
}

#[tokio::test]
async fn creating_a_board_marks_every_invalid_field_and_saves_nothing() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let mut browser = Browser::signed_in(&app).await;
    let page = browser
        .post(
            "/boards",
            "/boards",
            &[
                ("name", ""),
                ("slug", "Not A Slug"),
                ("description", "d"),
                ("gateway_id", ""),
                ("max_agents", "many"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["name", "slug", "gateway_id", "max_agents"] {
        assert!(
            page.field_error(field).is_some(),
            "{field} is marked: {}",
            page.html
        );
    }
    assert!(page.field_error("description").is_none());
    let boards = expect_success(app.list_boards("").await).await;
    assert_eq!(boards["total"], 1);

    let slug = unique("board");
    let created = browser
        .post(
            "/boards",
            "/boards",
            &[
                ("name", "Ops"),
                ("slug", &slug),
                ("description", "ops work"),
                ("gateway_id", &fixture.gateway_id),
                ("max_agents", ""),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.html);
    let duplicate = browser
        .post(
            "/boards",
            "/boards",
            &[
                ("name", "Ops 2"),
                ("slug", &slug),
                ("description", "d"),
                ("gateway_id", &fixture.gateway_id),
            ],
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        duplicate
            .field_error("slug")
            .unwrap()
            .contains("already exists")
    );
    let board_page = browser.get(created.location.as_deref().unwrap()).await;
    assert_eq!(board_page.status, StatusCode::OK);
    assert!(board_page.html.contains("<h1>Ops</h1>"));
    assert!(browser.get("/boards").await.html.contains(&slug));
}

#[tokio::test]
async fn enrollment_tokens_are_issued_once_listed_and_revoked() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let mut browser = Browser::signed_in(&app).await;
    let board = format!("/boards/{}", fixture.board_id);
    let invalid = browser
        .post(
            &board,
            &format!("{board}/enrollment-tokens"),
            &[("expires_in_seconds", "5"), ("max_uses", "0")],
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.field_error("expires_in_seconds").is_some());
    assert!(
        invalid
            .field_error("max_uses")
            .unwrap()
            .contains("at least 1")
    );
    assert!(invalid.shown_secret().is_none());

    let issued = browser
        .post(
            &board,
            &format!("{board}/enrollment-tokens"),
            &[("expires_in_seconds", "3600"), ("max_uses", "2")],
        )
        .await;
    assert_eq!(issued.status, StatusCode::OK);
    let token = issued.shown_secret().expect("the token is shown once");
    assert!(token.starts_with("mce_"));
    assert!(issued.html.contains("0 of 2"));
    let listed = expect_success(app.list_enrollment_tokens(&fixture.board_id).await).await;
    let token_id = id_of(&listed["items"][0]);
    let enrolled = app
        .heartbeat_by_name(
            Auth::Agent(&token),
            &json!({"name": unique("new"), "status": "healthy"}),
        )
        .await;
    assert_eq!(enrolled.status(), StatusCode::OK);

    let revoked = browser
        .post(
            &board,
            &format!("{board}/enrollment-tokens/{token_id}/revoke"),
            &[],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    let after = browser.get(&board).await;
    assert!(after.html.contains("enrollment token has been revoked"));
    assert!(after.shown_secret().is_none());
    let refused = app
        .heartbeat_by_name(Auth::Agent(&token), &json!({"name": unique("late")}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn re_provisioning_from_the_agent_page_queues_a_job_and_tells_its_state_in_words() {
    let gw = FakeGateway::start(FakeGatewayOptions::new(GatewayGeneration::V4)).await;
    let app = spawn_provisioning_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    let mut browser = Browser::signed_in(&app).await;
    let path = format!("/agents/{id}");
    let before = browser.get(&path).await;
    assert!(
        before.html.contains("Creating it on its gateway succeeded"),
        "{}",
        before.html
    );
    assert!(
        before
            .html
            .contains(&format!("action=\"{path}/provision\""))
    );

    let posted = browser.post(&path, &format!("{path}/provision"), &[]).await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.html);
    let target = posted.location.expect("back to the agent's page");
    assert!(
        target.starts_with(&format!("{path}?reprovisioned=")),
        "{target}"
    );
    let queued = browser.get(&target).await;
    assert_eq!(queued.status, StatusCode::OK);
    assert!(
        queued
            .html
            .contains("Re-provisioning queued: an update job"),
        "{}",
        queued.html
    );
    assert!(queued.html.contains("role=\"status\""));
    let jobs = settled_jobs(&app, &id, 2).await;
    assert_eq!(jobs[1]["action"], "update");
    assert!(
        target.ends_with(&format!("={}", jobs[1]["id"])),
        "the notice names the job queued"
    );
    browser.get(&target).await;
    assert_eq!(
        provision_jobs(&app, &id).await.len(),
        2,
        "reloading the page queues nothing"
    );
    let after = browser.get(&path).await;
    assert!(
        after.html.contains("Updating it on its gateway succeeded"),
        "{}",
        after.html
    );
}

#[tokio::test]
async fn a_failing_provisioning_job_is_told_in_words_and_re_provisioning_an_unmanaged_agent_is_refused()
 {
    let app = spawn_provisioning_app().await;
    let (_, board_id) = managed_board(&app, "ws://127.0.0.1:1", None).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    eventually("the first attempt to fail", || async {
        provision_jobs(&app, &id).await[0]["attempts"] != 0
    })
    .await;
    let mut browser = Browser::signed_in(&app).await;
    let page = browser.get(&format!("/agents/{id}")).await;
    assert!(
        page.html
            .contains("Creating it on its gateway is being retried"),
        "{}",
        page.html
    );
    assert!(page.html.contains("Last error:"));

    let unmanaged = app.unmanaged_board().await;
    let agent = app.agent_with_token(&unmanaged.board_id).await;
    let path = format!("/agents/{}", agent.id);
    let refused = browser.post(&path, &format!("{path}/provision"), &[]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.html.contains("role=\"alert\""));
    assert!(
        refused.html.contains("Not re-provisioned: agent") && refused.html.contains("unmanaged"),
        "{}",
        refused.html
    );
    assert!(provision_jobs(&app, &agent.id).await.is_empty());
}

#[tokio::test]
async fn deleting_a_gateway_asks_first_and_is_refused_while_boards_use_it() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let mut browser = Browser::signed_in(&app).await;
    let edit = browser
        .get(&format!("/gateways/{}", fixture.gateway_id))
        .await;
    assert!(
        edit.html
            .contains(&format!("/gateways/{}/delete", fixture.gateway_id))
    );
    let path = format!("/gateways/{}/delete", fixture.gateway_id);
    let confirm = browser.get(&path).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.html.contains("cannot be undone"));
    assert!(
        confirm.html.contains("These boards use the gateway")
            && confirm
                .html
                .contains(&format!("href=\"/boards/{}\"", fixture.board_id)),
        "the boards in the way are listed"
    );
    let refused = browser.post(&path, &path, &[]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.html.contains("still has boards"),
        "{}",
        refused.html
    );
    assert_eq!(
        app.get_gateway(&fixture.gateway_id).await.status(),
        StatusCode::OK
    );

    let spare = expect_success(
        app.create_gateway(&json!({"name": "Spare", "url": ""}))
            .await,
    )
    .await;
    let spare = id_of(&spare);
    let path = format!("/gateways/{spare}/delete");
    let deleted = browser.post(&path, &path, &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(deleted.location.as_deref(), Some("/gateways"));
    assert_eq!(
        app.get_gateway(&spare).await.status(),
        StatusCode::NOT_FOUND
    );
    let missing = browser.get(&path).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn editing_a_board_marks_every_invalid_field_and_saves_nothing() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let other = app.unmanaged_board().await;
    let other_slug = expect_success(app.get_board(&other.board_id).await).await["slug"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut browser = Browser::signed_in(&app).await;
    let board_page = browser.get(&format!("/boards/{}", fixture.board_id)).await;
    assert!(
        board_page
            .html
            .contains(&format!("/boards/{}/edit", fixture.board_id))
    );
    let path = format!("/boards/{}/edit", fixture.board_id);
    let form = browser.get(&path).await;
    assert_eq!(form.status, StatusCode::OK);
    let stored = expect_success(app.get_board(&fixture.board_id).await).await;
    assert!(
        form.html
            .contains(&format!("value=\"{}\"", stored["slug"].as_str().unwrap()))
    );
    assert!(
        form.html.contains("value=\"100\""),
        "the agent limit is shown"
    );

    let invalid = browser
        .post(
            &path,
            &path,
            &[
                ("name", " "),
                ("slug", "Not A Slug"),
                ("description", "changed"),
                ("gateway_id", &fixture.gateway_id),
                ("max_agents", "lots"),
            ],
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["name", "slug", "max_agents"] {
        assert!(
            invalid.field_error(field).is_some(),
            "{field}: {}",
            invalid.html
        );
    }
    assert!(
        invalid.html.contains("value=\"changed\""),
        "entered values are kept"
    );
    let unchanged = expect_success(app.get_board(&fixture.board_id).await).await;
    assert_eq!(unchanged, stored, "nothing half-saved");

    let taken = browser
        .post(
            &path,
            &path,
            &[
                ("name", "Ops"),
                ("slug", &other_slug),
                ("description", "d"),
                ("gateway_id", &fixture.gateway_id),
            ],
        )
        .await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        taken
            .field_error("slug")
            .unwrap()
            .contains("already exists")
    );

    let saved = browser
        .post(
            &path,
            &path,
            &[
                ("name", "Ops"),
                ("slug", "ops-renamed"),
                ("description", "Operations"),
                ("gateway_id", &fixture.gateway_id),
                ("max_agents", ""),
                ("only_lead_can_change_status", "on"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
    assert_eq!(saved.location, Some(format!("{path}?saved=1")));
    let board = expect_success(app.get_board(&fixture.board_id).await).await;
    assert_eq!(board["name"], "Ops");
    assert_eq!(board["slug"], "ops-renamed");
    assert_eq!(board["max_agents"], 0, "blank is no limit");
    assert_eq!(board["only_lead_can_change_status"], true);
    let confirmation = browser.get(&format!("{path}?saved=1")).await;
    assert!(confirmation.html.contains("settings are saved"));
}

#[tokio::test]
async fn creating_an_agent_on_the_board_page_marks_invalid_fields_and_shows_its_token_once() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let mut browser = Browser::signed_in(&app).await;
    let board = format!("/boards/{}", fixture.board_id);
    let create = format!("{board}/agents");
    let page = browser.get(&board).await;
    assert!(page.html.contains(&format!("action=\"{create}\"")));

    let invalid = browser
        .post(
            &board,
            &create,
            &[
                ("name", " "),
                ("interval_seconds", "often"),
                ("missing_tolerance", ""),
            ],
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.field_error("name").is_some(), "{}", invalid.html);
    assert!(
        invalid
            .field_error("interval_seconds")
            .unwrap()
            .contains("whole number")
    );
    assert!(
        invalid.html.contains("value=\"often\""),
        "entered values are kept"
    );
    let too_short = browser
        .post(
            &board,
            &create,
            &[
                ("name", "Scout"),
                ("interval_seconds", "60"),
                ("missing_tolerance", "30"),
            ],
        )
        .await;
    assert!(
        too_short
            .field_error("missing_tolerance")
            .unwrap()
            .contains("at least interval_seconds"),
        "{}",
        too_short.html
    );
    let agents = expect_success(app.list_agents("").await).await;
    assert_eq!(agents["total"], 0, "nothing was saved");

    let created = browser
        .post(
            &board,
            &create,
            &[
                ("name", "Scout"),
                ("interval_seconds", "30"),
                ("missing_tolerance", "90"),
                ("is_board_lead", "on"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.html);
    assert!(created.html.contains("Agent Scout was created"));
    assert!(
        created
            .html
            .contains("Give it to the agent: its heartbeat sends it as X-Agent-Token.")
            && !created.html.contains("previous token"),
        "a new agent had no previous token"
    );
    let token = created
        .shown_secret()
        .expect("the agent's token is shown once");
    assert_eq!(
        app.agent_heartbeat(&token, None).await.status(),
        StatusCode::OK
    );
    let agents = expect_success(app.list_agents("").await).await;
    let agent = &agents["items"][0];
    assert_eq!(agent["name"], "Scout");
    assert_eq!(agent["is_board_lead"], true);
    assert_eq!(agent["heartbeat_config"]["interval_seconds"], 30);
    assert_eq!(agent["heartbeat_config"]["missing_tolerance"], 90);
    assert!(
        browser
            .get(&format!("/agents/{}", id_of(agent)))
            .await
            .shown_secret()
            .is_none(),
        "shown only once"
    );

    let duplicate = browser.post(&board, &create, &[("name", "SCOUT")]).await;
    assert_eq!(duplicate.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        duplicate
            .field_error("name")
            .unwrap()
            .contains("already exists")
    );
}

#[tokio::test]
async fn the_activity_page_lists_events_newest_first() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app.agent_with_token(&fixture.board_id).await;
    app.report_status(&agent, "healthy").await;
    let mut browser = Browser::signed_in(&app).await;
    let page = browser.get("/activity").await;
    assert_eq!(page.status, StatusCode::OK);
    let created = page
        .html
        .find("was created")
        .expect("the creation is listed");
    let first_beat = page
        .html
        .find("sent its first heartbeat")
        .expect("the transition is listed");
    assert!(first_beat < created, "newest first");
    assert!(page.html.contains("/api/v1/activity/stream?last_event_id="));
}

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy_and_assets_are_embedded() {
    let app = TestApp::spawn().await;
    let response = app
        .request(Method::GET, "/sign-in", Auth::None)
        .send()
        .await
        .unwrap();
    let policy = response.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    for (path, kind) in [
        ("/assets/app.css", "text/css"),
        ("/assets/app.js", "text/javascript"),
    ] {
        let asset = app
            .request(Method::GET, path, Auth::None)
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), StatusCode::OK);
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(asset.text().await.unwrap().len() > 1000);
    }
}

#[tokio::test]
async fn the_live_views_listen_to_every_event_type_and_can_show_every_status() {
    let app = TestApp::spawn().await;
    let script = app
        .request(Method::GET, "/assets/app.js", Auth::None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // An `EventSource` only hears the event types it names: a missing one would leave a
    // row `updating` after its job ended, or the feed without the job's progress.
    for event_type in mc_domain::activity::EventType::ALL {
        let name = format!("\"{}\"", event_type.as_str());
        assert!(script.contains(&name), "app.js does not listen to {name}");
    }
    for status in mc_domain::agent::AgentStatus::ALL {
        let label = format!("{}: \"", status.as_str());
        assert!(
            script.contains(&label),
            "app.js has no icon or label for {status:?}"
        );
    }
}
