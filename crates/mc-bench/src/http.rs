//! A minimal keep-alive HTTP/1.1 client connection on hyper's low-level API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response with its body read in full.
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body as (lossy) text, cut to a length fit for an error message.
    pub fn body_snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &s[..end])
        } else {
            s.into_owned()
        }
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.body_snippet()))
    }
}

/// One HTTP/1.1 keep-alive connection with at most one request in flight; reconnects lazily
/// after a failure.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    /// A connection to `addr`, opened on first use. Every request is bounded by `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            host: host_header(addr),
            sender: None,
            timeout,
        }
    }

    /// Opens the TCP connection now (when not open yet).
    pub async fn connect(&mut self) -> Result<()> {
        if self.sender.is_none() {
            self.sender = Some(
                tokio::time::timeout(self.timeout, handshake(self.addr))
                    .await
                    .map_err(|_| anyhow!("connect to {} timed out", self.addr))??,
            );
        }
        Ok(())
    }

    /// The `Host` header value for this connection.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends `req` and reads the whole response. On any transport error or timeout the
    /// connection is dropped and the next call reconnects.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("request timed out after {timeout:?}"))
            }
        }
    }

    async fn send_inner(&mut self, req: Request<Full<Bytes>>) -> Result<Response> {
        if self.sender.is_none() {
            self.sender = Some(handshake(self.addr).await?);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        sender.ready().await.context("connection closed")?;
        let resp = sender.send_request(req).await.context("request failed")?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .context("reading response body")?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a JSON request with extra headers.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &HeaderValue)],
        body: &serde_json::Value,
    ) -> Result<Response> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            b = b.header(*k, (*v).clone());
        }
        let req = b.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        self.send(req).await
    }
}

/// Opens a TCP connection (no Nagle) and runs the HTTP/1.1 handshake; the connection driver
/// runs on its own task.
pub async fn handshake(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `Host` header for `addr`.
pub fn host_header(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"))
}
