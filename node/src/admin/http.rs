//! The admin HTTP JSON API (axum), served by every node; reference in `docs/admin-api.md`.
//!
//! Every route is under `/v1`. Any node answers for any PID or node of the cluster: it routes
//! through [`Admin`] (see the module docs of [`admin`](super)). Errors are
//! `{"error": {"kind": KIND, "message": TEXT}}` with the status of [`AdminError::status`].
//!
//! ## Authentication (G9)
//!
//! With a token configured, every request must carry `Authorization: Bearer TOKEN` (compared
//! in constant time) or gets `401`. [`AdminServer::start`] refuses to serve without a token on
//! anything but a loopback address.
//!
//! ## Limits (G8)
//!
//! Request bodies ≤ [`MAX_BODY`]; at most [`MAX_IN_FLIGHT`] requests at once (more get `503`);
//! at most [`MAX_STREAMS`] trace streams at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cluster_proto::PidParts;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::{Admin, AdminError, AdminOp, Placement, MAX_JSON, MAX_PEEK, MAX_TRACE_READ};

/// Largest request body.
pub const MAX_BODY: usize = MAX_JSON + (64 << 10);
/// Most requests served at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Most trace streams open at once.
pub const MAX_STREAMS: usize = 64;
/// How long one poll of a trace stream waits for events on the node holding the process.
pub const STREAM_WAIT_MS: u64 = 1000;
/// Default timeout of `call` and `state` when the request gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Why the admin API did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminServeError {
    /// No token, and the address is reachable from other hosts.
    #[error("the admin API on {0} needs a token (it is not a loopback address)")]
    TokenRequired(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

struct Shared {
    admin: Admin,
    token: Option<String>,
    in_flight: Semaphore,
    streams: AtomicUsize,
}

/// A running admin API. Dropping it does not stop it; [`AdminServer::stop`] does.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves the API for `admin` (must run inside a tokio runtime).
    pub async fn start(admin: Admin, addr: SocketAddr, token: Option<String>) -> Result<AdminServer, AdminServeError> {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(AdminServeError::TokenRequired(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| AdminServeError::Bind(addr, e))?;
        let bound = listener.local_addr().map_err(|e| AdminServeError::Bind(addr, e))?;
        let shared =
            Arc::new(Shared { admin, token, in_flight: Semaphore::new(MAX_IN_FLIGHT), streams: AtomicUsize::new(0) });
        let app = router(shared);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = served.await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        tracing::info!(addr = %bound, "admin API up");
        Ok(AdminServer { addr: bound, stop: Some(tx), task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish (trace streams are cut).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Open trace streams would hold graceful shutdown forever: give it a moment, then stop.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{node}/status", get(node_status))
        .route("/v1/processes", get(processes))
        .route("/v1/processes/{pid}", get(info))
        .route("/v1/processes/{pid}/state", get(state))
        .route("/v1/processes/{pid}/mailbox", get(mailbox))
        .route("/v1/processes/{pid}/trace", put(trace_switch).get(trace_read))
        .route("/v1/processes/{pid}/trace/stream", get(trace_stream))
        .route("/v1/processes/{pid}/send", post(send))
        .route("/v1/processes/{pid}/call", post(call))
        .route("/v1/processes/{pid}/kill", post(kill))
        .route("/v1/processes/{pid}/stop", post(stop))
        .route("/v1/processes/{pid}/suspend", post(suspend))
        .route("/v1/processes/{pid}/resume", post(resume))
        .route("/v1/groups", get(groups))
        .route("/v1/tree", get(tree))
        .route("/v1/spawn", post(spawn))
        .route("/v1/raft", get(raft_status))
        .route("/v1/sups", get(sup_list).post(sup_create))
        .route("/v1/sups/{sup}", axum::routing::delete(sup_remove))
        .route("/v1/sups/{sup}/children", post(sup_add))
        .route("/v1/sups/{sup}/children/{child}", axum::routing::delete(sup_remove_child))
        .route("/v1/nodes/{node}/providers/{provider}", put(provider_status))
        .route("/v1/raft/voters", post(raft_add))
        .route("/v1/raft/voters/{node}", axum::routing::delete(raft_remove))
        .fallback(|| async { ApiError(AdminError::BadRequest("no such route (see docs/admin-api.md)".into())) })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Token check and the in-flight bound, before any handler.
async fn guard(State(s): State<Arc<Shared>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let body = json!({"error": {"kind": "unauthorized", "message": "missing or wrong admin token"}});
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    let Ok(_permit) = s.in_flight.try_acquire() else {
        return ApiError(AdminError::Busy(format!("more than {MAX_IN_FLIGHT} requests in progress"))).into_response();
    };
    next.run(req).await
}

/// Equality that takes as long whatever the first difference (no timing oracle on the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// An [`AdminError`] as an HTTP response.
struct ApiError(AdminError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({"error": {"kind": self.0.kind(), "message": self.0.to_string()}}))).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        ApiError(e)
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn pid(text: &str) -> Result<PidParts, ApiError> {
    text.parse::<PidParts>().map_err(|e| ApiError(AdminError::BadRequest(format!("{text:?} is not a PID: {e}"))))
}

async fn health(State(s): State<Arc<Shared>>) -> Json<Value> {
    let id = s.admin.node().id();
    Json(json!({"ok": true, "node": &*id.name(), "creation": id.creation()}))
}

#[derive(Deserialize)]
struct ViaQuery {
    /// Ask this node for its view instead.
    via: Option<String>,
}

/// The members, as this node sees them (or as node `via` sees them: each node decides from
/// its own failure detector, so views can differ for a moment).
async fn nodes(State(s): State<Arc<Shared>>, Query(q): Query<ViaQuery>) -> ApiResult {
    match q.via {
        Some(n) => Ok(Json(s.admin.on_node(&n, AdminOp::Members).await?)),
        None => Ok(Json(s.admin.nodes())),
    }
}

async fn node_status(State(s): State<Arc<Shared>>, Path(node): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_node(&node, AdminOp::Status).await?))
}

#[derive(Deserialize)]
struct NodeQuery {
    node: Option<String>,
}

async fn processes(State(s): State<Arc<Shared>>, Query(q): Query<NodeQuery>) -> ApiResult {
    match q.node {
        Some(n) => {
            let list = s.admin.on_node(&n, AdminOp::Ps).await?;
            Ok(Json(json!({"processes": list, "unreachable": []})))
        }
        None => Ok(Json(s.admin.ps_all().await)),
    }
}

async fn tree(State(s): State<Arc<Shared>>, Query(q): Query<NodeQuery>) -> ApiResult {
    let mut out = match q.node {
        Some(n) => {
            let t = s.admin.on_node(&n, AdminOp::Tree).await?;
            json!({"nodes": [{"node": n, "tree": t}]})
        }
        None => s.admin.tree_all().await,
    };
    // The cluster supervisors (committed state, from the Raft leader), if there is a leader.
    let cluster = match s.admin.raft_leader().await {
        Ok(l) => s.admin.on_node(&l, AdminOp::SupList).await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("cluster".into(), cluster);
    }
    Ok(Json(out))
}

async fn info(State(s): State<Arc<Shared>>, Path(p): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, AdminOp::Info).await?))
}

#[derive(Deserialize)]
struct TimeoutQuery {
    timeout_ms: Option<u64>,
}

async fn state(State(s): State<Arc<Shared>>, Path(p): Path<String>, Query(q): Query<TimeoutQuery>) -> ApiResult {
    let ms = q.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    Ok(Json(s.admin.on_pid(&pid(&p)?, |t| AdminOp::State(t, ms)).await?))
}

#[derive(Deserialize)]
struct MaxQuery {
    max: Option<u32>,
}

async fn mailbox(State(s): State<Arc<Shared>>, Path(p): Path<String>, Query(q): Query<MaxQuery>) -> ApiResult {
    let max = q.max.unwrap_or(100).min(MAX_PEEK as u32);
    Ok(Json(s.admin.on_pid(&pid(&p)?, |t| AdminOp::Peek(t, max)).await?))
}

#[derive(Deserialize)]
struct TraceSwitch {
    on: bool,
}

async fn trace_switch(State(s): State<Arc<Shared>>, Path(p): Path<String>, Json(b): Json<TraceSwitch>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, |t| AdminOp::Trace(t, b.on)).await?))
}

#[derive(Deserialize)]
struct TraceQuery {
    after: Option<u64>,
    max: Option<u32>,
}

async fn trace_read(State(s): State<Arc<Shared>>, Path(p): Path<String>, Query(q): Query<TraceQuery>) -> ApiResult {
    let (after, max) = (q.after.unwrap_or(0), q.max.unwrap_or(MAX_TRACE_READ as u32));
    Ok(Json(s.admin.on_pid(&pid(&p)?, |t| AdminOp::TraceRead(t, after, max)).await?))
}

/// A body fed from a channel of lines.
struct Lines(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Lines {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    /// Switch tracing on (after subscribing, so no event between is missed).
    on: Option<bool>,
}

/// Streams the trace as newline-delimited JSON events from now on, until the process exits
/// (its `exited` event, then a last line `{"end": "exited"}`) or the client goes away. With
/// `?on=true` tracing is switched on once the stream is set up.
async fn trace_stream(
    State(s): State<Arc<Shared>>,
    Path(p): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let pid = pid(&p)?;
    if s.streams.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
        s.streams.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError(AdminError::Busy(format!("more than {MAX_STREAMS} trace streams open"))));
    }
    let opened = s.admin.on_pid(&pid, |t| AdminOp::TraceOpen(t, q.on.unwrap_or(false))).await;
    let sub = match opened.map(|v| v.get("sub").and_then(Value::as_u64)) {
        Ok(Some(sub)) => sub,
        Ok(None) => {
            s.streams.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError(AdminError::Failed("odd answer to a trace subscription".into())));
        }
        Err(e) => {
            s.streams.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError(e));
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let shared = Arc::clone(&s);
    tokio::spawn(async move {
        let node = pid.node.clone();
        loop {
            let next = shared.admin.on_node(&node, AdminOp::TraceNext(sub, MAX_TRACE_READ as u32, STREAM_WAIT_MS));
            let read = tokio::select! {
                r = next => r,
                _ = tx.closed() => break,
            };
            let (events, end) = match read {
                Ok(v) => {
                    let events = v.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
                    let end = v.get("end").and_then(Value::as_bool).unwrap_or(false);
                    (events, end.then(|| "exited".to_owned()))
                }
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let mut chunk = Vec::new();
            for e in &events {
                chunk.extend_from_slice(e.to_string().as_bytes());
                chunk.push(b'\n');
            }
            if let Some(reason) = &end {
                chunk.extend_from_slice(json!({"end": reason}).to_string().as_bytes());
                chunk.push(b'\n');
            }
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                break;
            }
            if end.is_some() {
                break;
            }
        }
        let _ = shared.admin.on_node(&node, AdminOp::TraceClose(sub)).await;
        shared.streams.fetch_sub(1, Ordering::AcqRel);
    });
    let body = Body::from_stream(Lines(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Deserialize)]
struct SendBody {
    msg: Value,
    corr: Option<u64>,
}

async fn send(State(s): State<Arc<Shared>>, Path(p): Path<String>, Json(b): Json<SendBody>) -> ApiResult {
    let text = b.msg.to_string();
    Ok(Json(s.admin.on_pid(&pid(&p)?, |t| AdminOp::Send(t, text, b.corr)).await?))
}

#[derive(Deserialize)]
struct CallBody {
    msg: Value,
    timeout_ms: Option<u64>,
    corr: Option<u64>,
}

async fn call(State(s): State<Arc<Shared>>, Path(p): Path<String>, Json(b): Json<CallBody>) -> ApiResult {
    let text = b.msg.to_string();
    let ms = b.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    let reply = s.admin.on_pid(&pid(&p)?, |t| AdminOp::Call(t, text, ms, b.corr)).await?;
    Ok(Json(json!({ "reply": reply })))
}

async fn kill(State(s): State<Arc<Shared>>, Path(p): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, AdminOp::Kill).await?))
}

async fn stop(State(s): State<Arc<Shared>>, Path(p): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, AdminOp::Stop).await?))
}

async fn suspend(State(s): State<Arc<Shared>>, Path(p): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, AdminOp::Suspend).await?))
}

async fn resume(State(s): State<Arc<Shared>>, Path(p): Path<String>) -> ApiResult {
    Ok(Json(s.admin.on_pid(&pid(&p)?, AdminOp::Resume).await?))
}

async fn groups(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(s.admin.groups())
}

#[derive(Deserialize)]
struct SpawnBody {
    behaviour: String,
    #[serde(default)]
    args: Value,
    #[serde(flatten)]
    placement: Placement,
    label: Option<String>,
}

async fn spawn(State(s): State<Arc<Shared>>, Json(b): Json<SpawnBody>) -> ApiResult {
    let args = b.args.to_string();
    Ok(Json(s.admin.spawn(&b.behaviour, &args, &b.placement, b.label).await?))
}

/// Every hot node's Raft status: `{"nodes": [{"node", "status"} | {"node", "error"}]}`.
async fn raft_status(State(s): State<Arc<Shared>>) -> Json<Value> {
    let mut out = Vec::new();
    for n in s.admin.node_names() {
        match s.admin.on_node(&n, AdminOp::RaftStatus).await {
            Ok(v) => out.push(json!({"node": n, "status": v})),
            Err(AdminError::BadRequest(_)) => {} // a cold node: no Raft
            Err(e) => out.push(json!({"node": n, "error": e.to_string()})),
        }
    }
    Json(json!({ "nodes": out }))
}

#[derive(Deserialize)]
struct VoterBody {
    node: String,
}

/// Adds a hot node to the Raft group (sent to the leader).
async fn raft_add(State(s): State<Arc<Shared>>, Json(b): Json<VoterBody>) -> ApiResult {
    let leader = s.admin.raft_leader().await?;
    Ok(Json(s.admin.on_node(&leader, AdminOp::RaftAdd(b.node)).await?))
}

/// Removes a node from the Raft group (sent to the leader).
async fn raft_remove(State(s): State<Arc<Shared>>, Path(node): Path<String>) -> ApiResult {
    let leader = s.admin.raft_leader().await?;
    Ok(Json(s.admin.on_node(&leader, AdminOp::RaftRemove(node)).await?))
}

async fn propose(s: &Shared, cmd: supervisor::cluster::Command) -> ApiResult {
    let leader = s.admin.raft_leader().await?;
    Ok(Json(s.admin.on_node(&leader, AdminOp::SupPropose(cmd)).await?))
}

/// The committed cluster supervisors, children, where each runs and its live status.
async fn sup_list(State(s): State<Arc<Shared>>) -> ApiResult {
    let leader = s.admin.raft_leader().await?;
    Ok(Json(s.admin.on_node(&leader, AdminOp::SupList).await?))
}

#[derive(Deserialize)]
struct SupBody {
    name: String,
    strategy: Option<String>,
    max_restarts: Option<u32>,
    period_ms: Option<u64>,
}

async fn sup_create(State(s): State<Arc<Shared>>, Json(b): Json<SupBody>) -> ApiResult {
    let strategy = match b.strategy.as_deref() {
        None => supervisor::Strategy::OneForOne,
        Some(t) => t.parse().map_err(|e| ApiError(AdminError::BadRequest(format!("strategy: {e}"))))?,
    };
    let d = supervisor::Intensity::default();
    let intensity =
        supervisor::Intensity::new(b.max_restarts.unwrap_or(d.max_restarts), b.period_ms.unwrap_or(d.period_ms));
    let spec = supervisor::cluster::SupSpec { name: b.name, strategy, intensity };
    propose(&s, supervisor::cluster::Command::CreateSupervisor(spec)).await
}

async fn sup_remove(State(s): State<Arc<Shared>>, Path(sup): Path<String>) -> ApiResult {
    propose(&s, supervisor::cluster::Command::RemoveSupervisor { sup }).await
}

#[derive(Deserialize)]
struct ChildBody {
    id: String,
    behaviour: String,
    #[serde(default)]
    args: Value,
    restart: Option<String>,
    role: Option<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    spread: bool,
    #[serde(default)]
    avoid: Vec<String>,
}

async fn sup_add(State(s): State<Arc<Shared>>, Path(sup): Path<String>, Json(b): Json<ChildBody>) -> ApiResult {
    let restart = match b.restart.as_deref() {
        None => supervisor::RestartType::Permanent,
        Some(t) => t.parse().map_err(|e| ApiError(AdminError::BadRequest(format!("restart: {e}"))))?,
    };
    let spec = supervisor::cluster::ChildSpec {
        id: b.id,
        behaviour: b.behaviour,
        args: b.args.to_string(),
        restart,
        placement: supervisor::cluster::PlacementSpec {
            role: b.role,
            providers: b.providers,
            spread: b.spread,
            avoid: b.avoid,
        },
    };
    propose(&s, supervisor::cluster::Command::AddChild { sup, spec }).await
}

async fn sup_remove_child(State(s): State<Arc<Shared>>, Path((sup, child)): Path<(String, String)>) -> ApiResult {
    propose(&s, supervisor::cluster::Command::RemoveChild { sup, child }).await
}

#[derive(Deserialize)]
struct ProviderBody {
    available: bool,
}

/// Marks a provider of a node available or not (until the provider layer sets it itself).
async fn provider_status(
    State(s): State<Arc<Shared>>,
    Path((node, provider)): Path<(String, String)>,
    Json(b): Json<ProviderBody>,
) -> ApiResult {
    Ok(Json(s.admin.on_node(&node, AdminOp::Provider(provider, b.available)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
