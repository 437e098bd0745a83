//! A small server-sent events reader for the stream tests: it reads the response body as
//! it arrives and splits it into messages and comments, as a browser's `EventSource`
//! would.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Auth, TestApp};

/// How long [`EventStream::next`] waits for a message before the test fails.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(10);

/// One SSE message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The `id:` field (the activity event id).
    pub id: Option<i64>,
    /// The `event:` field.
    pub event: String,
    /// The `data:` field, parsed as JSON when it is JSON.
    pub data: Value,
}

/// One thing read from a stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A message.
    Message(Message),
    /// A comment line (keep-alive), without the leading colon.
    Comment(String),
}

/// An open event stream.
pub struct EventStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    /// Opens `path` with the given credentials and optional `Last-Event-ID`; panics unless
    /// the server answers 200 with `text/event-stream`.
    pub async fn open(
        app: &TestApp,
        path: &str,
        auth: Auth<'_>,
        last_event_id: Option<i64>,
    ) -> Self {
        let mut request = app.request(Method::GET, path, auth);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("the stream request is sent");
        assert_eq!(response.status(), StatusCode::OK, "opening {path}");
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type of {path}: {content_type}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the server closed the stream.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = parse_block(&block) {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout(MESSAGE_DEADLINE, self.body.next())
                .await
                .expect("the stream sends something within 10 s")?;
            let chunk = chunk.expect("the stream body reads");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next message (skipping comments); panics when the stream ends first.
    pub async fn next(&mut self) -> Message {
        loop {
            match self.next_frame().await {
                Some(Frame::Message(message)) => return message,
                Some(Frame::Comment(_)) => {}
                None => panic!("the stream ended while a message was expected"),
            }
        }
    }

    /// The next message about `agent_id` of type `event`, skipping others.
    pub async fn next_of(&mut self, event: &str, agent_id: &str) -> Message {
        loop {
            let message = self.next().await;
            let about = message.data["agent_id"]
                .as_str()
                .or(message.data["event"]["agent_id"].as_str());
            if message.event == event && about == Some(agent_id) {
                return message;
            }
        }
    }

    /// Whether a message arrives within `wait` (comments do not count).
    pub async fn message_within(&mut self, wait: Duration) -> Option<Message> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }
}

/// The messages of a whole SSE body (comments left out).
pub fn parse_messages(body: &str) -> Vec<Message> {
    body.split("\n\n")
        .filter_map(|block| match parse_block(block) {
            Some(Frame::Message(message)) => Some(message),
            _ => None,
        })
        .collect()
}

fn parse_block(block: &str) -> Option<Frame> {
    let mut id = None;
    let mut event = String::from("message");
    let mut data = Vec::new();
    let mut comment = None;
    for line in block.lines() {
        if let Some(text) = line.strip_prefix(':') {
            comment = Some(text.trim().to_owned());
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.parse().ok(),
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
    }
    if data.is_empty() {
        return comment.map(Frame::Comment);
    }
    let data = data.join("\n");
    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
    Some(Frame::Message(Message { id, event, data }))
}
