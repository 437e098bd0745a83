//! End to end in a real headless Chromium, driven over the W3C WebDriver protocol by
//! chromedriver: sign in, watch an agent turn offline live when its tolerance passes and
//! come back on its next heartbeat (no reload), rotate a token, issue and revoke an
//! enrollment token, create an agent at phone width. Screenshots go to
//! `target/e2e-artifacts/`.
//!
//! Needs `chromium` and `chromium-driver` (Debian); `scripts/test` and `.ci/run` install
//! them. `MC_CHROMEDRIVER` and `MC_CHROMIUM` override the binaries' paths.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, expect_success, id_of};

/// The W3C WebDriver element key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long the browser checks wait before failing.
const BROWSER_DEADLINE: Duration = Duration::from_secs(20);

/// A chromedriver process started by this test, killed by its PID when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> Self {
        let binary = std::env::var("MC_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        // chromedriver needs an explicit port: take a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}); install Debian's chromium and chromium-driver (scripts/test does)")
            });
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        loop {
            let ready = client
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < BROWSER_DEADLINE,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("chromedriver is stopped");
    }
}

/// One browser session.
struct Browser {
    client: reqwest::Client,
    session: String,
    artifacts: PathBuf,
}

impl Browser {
    async fn open(driver: &ChromeDriver) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let chromium = std::env::var("MC_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let response: Value = client
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session starts: {response}"))
            .to_owned();
        let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
            |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            PathBuf::from,
        );
        let artifacts = target.join("e2e-artifacts");
        std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
        Self {
            client: client.clone(),
            session: format!("{}/session/{session}", driver.url),
            artifacts,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "WebDriver {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn run(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .expect("an element id")
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Waits until `script` (a function body) returns `true`.
    async fn wait_until(&self, what: &str, script: &str) {
        let started = Instant::now();
        loop {
            if self.run(script).await == Value::Bool(true) {
                return;
            }
            if started.elapsed() > BROWSER_DEADLINE {
                self.screenshot("failure").await;
                panic!("{what} did not happen within {BROWSER_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("valid base64");
        std::fs::write(self.artifacts.join(format!("{name}.png")), png).expect("a screenshot file");
    }

    async fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn close(self) {
        self.command(reqwest::Method::DELETE, "", None).await;
    }
}

#[tokio::test]
async fn an_operator_watches_the_fleet_live_and_manages_tokens_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let fixture = app.unmanaged_board().await;
    let agent = app
        .agent_with_config(
            &fixture.board_id,
            Some(json!({"interval_seconds": 1, "missing_tolerance": 3})),
        )
        .await;
    app.report_status(&agent, "healthy").await;
    let driver = ChromeDriver::start().await;
    let browser = Browser::open(&driver).await;

    // Sign in: the fleet asks for it, then comes back.
    browser.goto(&format!("{}/", app.address)).await;
    browser
        .wait_until(
            "the sign-in page",
            "return location.pathname === '/sign-in';",
        )
        .await;
    browser.screenshot("01-sign-in").await;
    browser.type_into("#field-token", &app.admin_token).await;
    browser
        .click("form[action='/sign-in'] button[type=submit]")
        .await;
    browser
        .wait_until(
            "the fleet after signing in",
            &format!(
                "return location.pathname === '/' && !!document.getElementById('agent-{}');",
                agent.id
            ),
        )
        .await;
    browser
        .wait_until(
            "the live connection",
            "var s = document.querySelector('[data-live-status]'); return !!s && s.getAttribute('data-state') === 'live';",
        )
        .await;

    // Healthy now; the page is never reloaded from here on.
    app.report_status(&agent, "healthy").await;
    let healthy = format!(
        "var row = document.getElementById('agent-{}'); return !!row && row.getAttribute('data-status') === 'healthy';",
        agent.id
    );
    browser
        .wait_until("the agent shown healthy", &healthy)
        .await;
    browser
        .run("window.__notReloaded = true; return true;")
        .await;
    browser.screenshot("02-fleet-healthy").await;

    // Silent past its tolerance: offline on screen, without a reload.
    let offline_check = format!(
        "var row = document.getElementById('agent-{}'); return !!row && row.getAttribute('data-status') === 'offline' \
         && row.querySelector('.badge span').textContent === 'Offline' && window.__notReloaded === true \
         && document.querySelector('[data-count=\"offline\"]').textContent === '1';",
        agent.id
    );
    browser
        .wait_until("the agent turning offline live", &offline_check)
        .await;
    browser.screenshot("03-fleet-offline").await;

    // Its next heartbeat brings it back.
    app.report_status(&agent, "healthy").await;
    let back_check = format!(
        "var row = document.getElementById('agent-{}'); return !!row && row.getAttribute('data-status') === 'healthy' \
         && window.__notReloaded === true && document.querySelector('[data-count=\"offline\"]').textContent === '0' \
         && /s ago$/.test(row.querySelector('time.ago').textContent);",
        agent.id
    );
    browser
        .wait_until("the agent coming back live", &back_check)
        .await;
    browser.screenshot("04-fleet-back").await;

    // A new agent appears as a new row, counted, still without a reload.
    let newcomer = app.agent_with_token(&fixture.board_id).await;
    let appeared = format!(
        "var row = document.getElementById('agent-{}'); return !!row && row.textContent.indexOf('{}') !== -1 \
         && row.getAttribute('data-status') === 'provisioning' && window.__notReloaded === true \
         && document.querySelector('[data-count=\"total\"]').textContent === '2';",
        newcomer.id, newcomer.name
    );
    browser
        .wait_until("a new agent appearing live", &appeared)
        .await;
    browser.resize(390, 844).await;
    browser.screenshot("05-fleet-phone-width").await;
    browser.resize(1280, 900).await;

    // Rotate the agent's token: shown once; the old one stops working.
    browser
        .goto(&format!("{}/agents/{}", app.address, agent.id))
        .await;
    browser
        .click("form[action$='/token'] button[type=submit]")
        .await;
    browser
        .wait_until(
            "the new token",
            "return !!document.getElementById('secret-value');",
        )
        .await;
    browser.click("[data-copy]").await;
    let token = browser
        .run("return document.getElementById('secret-value').value;")
        .await;
    let token = token.as_str().expect("a token").to_owned();
    browser.screenshot("06-token-rotated").await;
    assert_eq!(
        app.agent_heartbeat(&agent.token, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.agent_heartbeat(&token, None).await.status(),
        StatusCode::OK
    );

    // Issue an enrollment token with a use limit, then revoke it.
    browser
        .goto(&format!("{}/boards/{}", app.address, fixture.board_id))
        .await;
    browser.type_into("#field-max_uses", "3").await;
    browser
        .click("form[action$='/enrollment-tokens'] button[type=submit]")
        .await;
    browser
        .wait_until(
            "the enrollment token",
            "return !!document.getElementById('secret-value');",
        )
        .await;
    let enrollment = browser
        .run("return document.getElementById('secret-value').value;")
        .await;
    assert!(enrollment.as_str().unwrap().starts_with("mce_"));
    browser.screenshot("07-enrollment-issued").await;
    let listed = expect_success(app.list_enrollment_tokens(&fixture.board_id).await).await;
    assert_eq!(listed["items"][0]["max_uses"], 3);
    let token_id = id_of(&listed["items"][0]);
    browser
        .click(&format!("#token-{token_id} button[type=submit]"))
        .await;
    browser
        .wait_until(
            "the revoked state",
            &format!("var row = document.getElementById('token-{token_id}'); return !!row && row.textContent.indexOf('revoked') !== -1 && !document.getElementById('secret-value');"),
        )
        .await;
    browser.screenshot("08-enrollment-revoked").await;
    let listed = expect_success(app.list_enrollment_tokens(&fixture.board_id).await).await;
    assert!(listed["items"][0]["revoked_at"].is_string());

    // Create an agent from the board page at phone width: its token is shown once.
    browser.resize(390, 844).await;
    browser.type_into("#field-name", "Phone Scout").await;
    browser
        .click("form[action$='/agents'] button[type=submit]")
        .await;
    browser
        .wait_until(
            "the new agent's page with its token",
            "return !!document.getElementById('secret-value') && document.querySelector('h1').textContent === 'Phone Scout';",
        )
        .await;
    browser.screenshot("09-agent-created-phone-width").await;
    let created = browser
        .run("return document.getElementById('secret-value').value;")
        .await;
    assert_eq!(
        app.agent_heartbeat(created.as_str().expect("a token"), None)
            .await
            .status(),
        StatusCode::OK
    );

    browser.close().await;
    driver.stop().await;
}
