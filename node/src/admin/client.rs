//! A client of the admin HTTP API (plain HTTP/1.1): what the `soma` operator commands and the
//! end-to-end tests use. One [`AdminClient`] talks to one node's API; that node routes.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Largest answer (or stream line) read (G8).
pub const MAX_ANSWER: usize = 64 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("the admin URL must be http://HOST:PORT, not {0:?}")]
    BadUrl(String),
    /// The API could not be reached.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer could not be read or is not JSON.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The API answered with an error.
    #[error("{message} ({status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error's `kind` (`no_proc`, `unauthorized` ...).
        kind: String,
        /// Its message.
        message: String,
    },
}

/// A client of one node's admin API. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").field("base", &self.base).field("token", &self.token.is_some()).finish()
    }
}

impl AdminClient {
    /// A client of the API at `url` (`http://HOST:PORT`), with an optional bearer token and a
    /// per-request timeout.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<AdminClient, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::BadUrl(url.to_owned()));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(AdminClient { client, base, token, timeout })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> AdminClient {
        AdminClient { timeout, ..self.clone() }
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        req.body(body).map_err(|e| ClientError::BadUrl(format!("{}{path}: {e}", self.base)))
    }

    /// One request; the answer's JSON, or the API's error.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let req = self.request(method, path, body)?;
        let fut = async {
            let resp =
                self.client.request(req).await.map_err(|e| ClientError::Connect(self.base.clone(), e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = read_all(resp.into_body()).await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::BadAnswer(format!("{status}, not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
            })?;
            if !(200..300).contains(&status) {
                return Err(api_error(status, &v));
            }
            Ok(v)
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// A streaming GET of JSON lines: calls `line` for each until the stream ends or `line`
    /// returns false. The timeout applies to the answer's head only.
    pub async fn stream(&self, path: &str, mut line: impl FnMut(Value) -> bool) -> Result<(), ClientError> {
        let req = self.request(Method::GET, path, None)?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|e| ClientError::Connect(self.base.clone(), e.to_string()))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            let bytes = read_all(body).await?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, &v));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::BadAnswer(e.to_string()))?;
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&l)
                    .map_err(|e| ClientError::BadAnswer(format!("a stream line is not JSON: {e}")))?;
                if !line(v) {
                    return Ok(());
                }
            }
            if buf.len() > MAX_ANSWER {
                return Err(ClientError::BadAnswer(format!("a stream line longer than {MAX_ANSWER} bytes")));
            }
        }
        Ok(())
    }
}

async fn read_all(body: hyper::body::Incoming) -> Result<Bytes, ClientError> {
    Ok(Limited::new(body, MAX_ANSWER).collect().await.map_err(|e| ClientError::BadAnswer(e.to_string()))?.to_bytes())
}

fn api_error(status: u16, v: &Value) -> ClientError {
    let field = |k: &str| v.pointer(&format!("/error/{k}")).and_then(Value::as_str).unwrap_or("?").to_owned();
    ClientError::Api { status, kind: field("kind"), message: field("message") }
}

/// A PID as a URL path segment (brackets dropped: `a.1.2`).
pub fn pid_path(pid: &str) -> Result<String, cluster_proto::PidParseError> {
    let p: cluster_proto::PidParts = pid.trim().parse()?;
    Ok(format!("{}.{}.{}", p.node, p.creation, p.serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_become_path_segments() {
        assert_eq!(pid_path("<a.17.3>").expect("pid"), "a.17.3");
        assert_eq!(pid_path("a.17.3").expect("pid"), "a.17.3");
        assert!(pid_path("nope").is_err());
    }

    #[test]
    fn only_http_urls() {
        assert!(AdminClient::new("https://x:1", None, Duration::from_secs(1)).is_err());
        assert!(AdminClient::new("http://", None, Duration::from_secs(1)).is_err());
        assert!(AdminClient::new("http://127.0.0.1:7180/", None, Duration::from_secs(1)).is_ok());
    }
}
