//! A server-sent events client that notes when each event arrives.
//!
//! It runs on a thread of its own with its own single-threaded runtime: the load
//! generator's tasks keep the bench's worker threads busy, and an event read late because
//! the reader waited for a worker would count as server latency. Arrival is the wall-clock
//! time the chunk carrying the event was read from the socket (the server stamps its
//! events with the same clock: one machine).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::http::host_header;

/// One event as received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
    /// Arrival, in microseconds since the Unix epoch.
    pub arrived_us: i64,
}

/// Why the stream ended, when the server ended it.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// The bench closed it.
    Closed,
    /// The server ended the body (after a `lagged`, `shutdown` or `error` event, or not).
    ByServer,
    /// A transport error.
    Failed(String),
}

/// An open stream; events come out of [`Stream::events`].
pub struct Stream {
    /// Events in arrival order.
    pub events: mpsc::UnboundedReceiver<SseEvent>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<StreamEnd>>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Opens `GET path` on `addr` with `auth` and returns once the server answered 200.
pub async fn open(addr: SocketAddr, path: &str, auth: &HeaderValue) -> Result<Stream> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
    let path = path.to_owned();
    let auth = auth.clone();
    let thread = std::thread::Builder::new()
        .name("sse-client".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("cannot start the SSE runtime: {e}")));
                    return StreamEnd::Failed(e.to_string());
                }
            };
            rt.block_on(follow(addr, path, auth, events_tx, ready_tx, stop_rx))
        })
        .context("cannot start the SSE client thread")?;
    match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => bail!("the SSE client thread ended before the stream opened"),
        Err(_) => bail!("the event stream did not open within 30 s"),
    }
    Ok(Stream {
        events,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

impl Stream {
    /// Closes the stream and says how it ended.
    pub async fn close(mut self) -> StreamEnd {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_else(|| StreamEnd::Failed("the SSE client thread panicked".into())),
            None => StreamEnd::Closed,
        }
    }
}

async fn follow(
    addr: SocketAddr,
    path: String,
    auth: HeaderValue,
    events: mpsc::UnboundedSender<SseEvent>,
    ready: oneshot::Sender<Result<()>>,
    mut stop: oneshot::Receiver<()>,
) -> StreamEnd {
    let opened = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .header(HOST, host_header(addr))
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .header(AUTHORIZATION, auth)
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("GET {path}"))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            bail!(
                "GET {path}: HTTP {status} — {}",
                body.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            );
        }
        anyhow::Ok((sender, resp.into_body()))
    };
    let (_sender, mut body) = match opened.await {
        Ok(open) => {
            let _ = ready.send(Ok(()));
            open
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            return StreamEnd::Failed(msg);
        }
    };
    let mut parser = Parser::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = &mut stop => return StreamEnd::Closed,
        };
        match frame {
            None => return StreamEnd::ByServer,
            Some(Err(e)) => return StreamEnd::Failed(e.to_string()),
            Some(Ok(frame)) => {
                let arrived_us = now_us();
                if let Ok(data) = frame.into_data() {
                    for (event, data) in parser.push(&data) {
                        let _ = events.send(SseEvent {
                            event,
                            data,
                            arrived_us,
                        });
                    }
                }
            }
        }
    }
}

/// Splits a byte stream into events (`event:`/`data:` lines, blank-line terminated);
/// comments (keep-alives) and `id:` lines are skipped.
#[derive(Debug, Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Adds bytes and returns the events they completed, as (`event`, `data`).
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        // Mission Control ends lines with LF only (axum's SSE encoder). Bytes are kept
        // until a whole event is in, so a character split over two chunks stays whole.
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if event.is_empty() && data.is_empty() {
                continue;
            }
            if event.is_empty() {
                event = "message".to_owned();
            }
            out.push((event, data.join("\n")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_across_chunks_and_keep_alives_are_skipped() {
        let mut p = Parser::default();
        assert!(
            p.push(b": keep-alive\n\nid: 7\nevent: agent.off")
                .is_empty()
        );
        let got = p.push(b"line\ndata: {\"a\":1}\n\nevent: x\ndata: 1\ndata: 2\n\n");
        assert_eq!(
            got,
            vec![
                ("agent.offline".to_owned(), "{\"a\":1}".to_owned()),
                ("x".to_owned(), "1\n2".to_owned())
            ]
        );
        assert_eq!(
            p.push(b"data: plain\n\n"),
            vec![("message".to_owned(), "plain".to_owned())]
        );
    }
}
