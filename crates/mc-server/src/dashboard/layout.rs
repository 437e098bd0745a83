//! The page shell (navigation, sign-out, assets) and the small pieces every page shares:
//! status badges (icon and word, never colour alone) and "N s ago" times.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use mc_domain::agent::AgentStatus;
use mc_domain::time::Timestamp;

use super::assets;
use super::forms::csrf_field;
use super::session::Session;

/// The top-level sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The fleet overview.
    Fleet,
    /// Boards and enrollment tokens.
    Boards,
    /// Gateways.
    Gateways,
    /// The activity feed.
    Activity,
    /// None (sign-in, errors).
    None,
}

/// A full page for a signed-in operator.
pub fn page(title: &str, section: Section, session: &Session, body: Markup) -> Response {
    let nav = [
        (Section::Fleet, "/", "Fleet"),
        (Section::Boards, "/boards", "Boards"),
        (Section::Gateways, "/gateways", "Gateways"),
        (Section::Activity, "/activity", "Activity"),
    ];
    let markup = shell(
        title,
        html! {
            header class="top" {
                a class="brand" href="/" { "Mission Control" }
                nav aria-label="Main" {
                    ul {
                        @for (s, href, label) in nav {
                            li { a href=(href) aria-current=[(s == section).then_some("page")] { (label) } }
                        }
                    }
                }
                form class="sign-out" method="post" action="/sign-out" {
                    (csrf_field(session.csrf_token()))
                    button type="submit" class="link" { "Sign out" }
                }
            }
            main id="main" { (body) }
        },
    );
    Html(markup.into_string()).into_response()
}

/// The document around any page body.
pub fn shell(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Mission Control" }
                link rel="stylesheet" href=(assets::STYLESHEET_URL);
                script src=(assets::SCRIPT_URL) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                (body)
            }
        }
    }
}

/// A page for a failed request.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    let title = status.canonical_reason().unwrap_or("Error");
    Html(
        shell(
            title,
            html! {
                main id="main" class="narrow" {
                    h1 { (title) }
                    p role="alert" { (message) }
                    p { a href="/" { "Back to the fleet" } }
                }
            },
        )
        .into_string(),
    )
}

/// The icon of a status (shape differs per status, so colour is never the only cue).
pub const fn status_icon(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Healthy => "●",
        AgentStatus::Degraded => "▲",
        AgentStatus::Offline => "✕",
        AgentStatus::Provisioning => "◌",
        AgentStatus::Updating => "↻",
        AgentStatus::Deleting => "⌫",
    }
}

/// The word for a status.
pub const fn status_label(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Healthy => "Healthy",
        AgentStatus::Degraded => "Degraded",
        AgentStatus::Offline => "Offline",
        AgentStatus::Provisioning => "Provisioning",
        AgentStatus::Updating => "Updating",
        AgentStatus::Deleting => "Deleting",
    }
}

/// A status badge: icon and word, coloured by status.
pub fn status_badge(status: AgentStatus) -> Markup {
    html! {
        span class={ "badge status-" (status.as_str()) } {
            i aria-hidden="true" { (status_icon(status)) } " " span { (status_label(status)) }
        }
    }
}

/// "12 s ago", "5 min ago", "3 h ago", "2 d ago".
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let seconds = (now.as_millis() - then.as_millis()).max(0) / 1000;
    match seconds {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// The last-seen time in a fleet row: ticking like [`live_ago`], without the absolute
/// time attributes (the fleet lists thousands of rows; the agent page has them).
pub fn row_ago(then: Option<Timestamp>, now: Timestamp) -> Markup {
    match then {
        Some(then) => html! { time class="ago" data-ts=(then.as_millis()) { (ago(then, now)) } },
        None => html! { time class="ago" data-ts="" { "never" } },
    }
}

/// The last-seen time that the script keeps ticking ("12 s ago"), or "never".
pub fn live_ago(then: Option<Timestamp>, now: Timestamp) -> Markup {
    match then {
        Some(then) => html! {
            time class="ago" datetime=(then.to_rfc3339()) data-ts=(then.as_millis()) title=(then.to_rfc3339()) { (ago(then, now)) }
        },
        None => html! { time class="ago" data-ts="" { "never" } },
    }
}

/// An absolute time in UTC.
pub fn utc(at: Timestamp) -> Markup {
    let text = at.to_datetime().format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) { (text) } }
}

/// The outcome of an action, shown at the top of the page it lands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// It was done; announced politely.
    Done(String),
    /// It was refused, with the reason; announced at once.
    Refused(String),
}

impl maud::Render for Notice {
    fn render(&self) -> Markup {
        match self {
            Self::Done(text) => {
                html! { p class="notice" role="status" { strong { "Done. " } (text) } }
            }
            Self::Refused(text) => {
                html! { p class="form-errors" role="alert" { strong { "Refused. " } (text) } }
            }
        }
    }
}

/// A secret shown exactly once, with a copy button.
pub fn shown_once(label: &str, secret: &str, advice: &str) -> Markup {
    html! {
        section class="secret" aria-labelledby="secret-title" {
            h2 id="secret-title" { (label) }
            p { (advice) " It is shown only this once." }
            div class="secret-row" {
                label class="visually-hidden" for="secret-value" { (label) }
                input id="secret-value" type="text" readonly value=(secret) data-secret;
                button type="button" data-copy="#secret-value" { "Copy" }
            }
            p class="hint" role="status" data-copy-status {}
        }
    }
}

/// JSON embedded for the script (`<script type="application/json">`), safe inside HTML.
pub fn json_data(id: &str, value: &serde_json::Value) -> Markup {
    let text = value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    html! { script type="application/json" id=(id) { (PreEscaped(text)) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        let now = Timestamp::from_millis(10_000_000_000);
        assert_eq!(ago(now.plus_seconds(-12), now), "12 s ago");
        assert_eq!(ago(now.plus_seconds(-125), now), "2 min ago");
        assert_eq!(ago(now.plus_seconds(-7300), now), "2 h ago");
        assert_eq!(ago(now.plus_seconds(-200_000), now), "2 d ago");
        assert_eq!(ago(now.plus_seconds(5), now), "0 s ago");
    }

    #[test]
    fn embedded_json_cannot_close_its_script_element() {
        let html = json_data("x", &serde_json::json!({"name": "</script><b>"})).into_string();
        assert!(!html.contains("</script><b>"));
        assert!(html.contains("\\u003c/script\\u003e"));
    }
}
