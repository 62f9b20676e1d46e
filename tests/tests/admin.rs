//! The admin HTTP API end to end, in one process on loopback: three distributed nodes (real
//! QUIC + mTLS, gossip membership), the API served by one of them over real HTTP, and every
//! operation addressed to processes on the *other* nodes — so each one is routed over the
//! authenticated transport (G9) and answered by the node that holds the process.

use std::time::Duration;

use serde_json::{json, Value};
use soma::admin::client::{pid_path, AdminClient, ClientError};
use soma::admin::http::{AdminServeError, AdminServer};
use soma::admin::Admin;
use soma::membership::{Membership, MembershipConfig, Role, Seed};
use soma::Node;
use soma_tests::cluster::TestCa;
use soma_tests::{eventually, within};

const TOKEN: &str = "test-token-0123456789";

struct Cluster {
    nodes: Vec<Node>,
    members: Vec<Membership>,
    server: AdminServer,
    api: AdminClient,
}

fn seed_of(node: &Node) -> Seed {
    Seed { name: node.id().name().to_string(), host: node.local_addr().expect("distributed").to_string() }
}

/// `hot-1` (hot, serves the API), `cold-a` (openai), `cold-b` (anthropic, local).
async fn cluster(ca: &TestCa) -> Cluster {
    let specs: [(&str, Role, &[&str]); 3] = [
        ("hot-1", Role::Hot, &[]),
        ("cold-a", Role::Cold, &["openai"]),
        ("cold-b", Role::Cold, &["anthropic", "local"]),
    ];
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    for (i, (name, role, providers)) in specs.iter().enumerate() {
        let node = ca.node(name, 1);
        soma::demo::register(&node).expect("demo behaviours");
        let seeds = if i == 0 { vec![] } else { vec![seed_of(&nodes[0])] };
        let cfg = MembershipConfig {
            role: *role,
            providers: providers.iter().map(|p| p.to_string()).collect(),
            seeds,
            ..MembershipConfig::default()
        };
        members.push(within("join", Membership::join(&node, cfg)).await.expect("join"));
        nodes.push(node);
    }
    for m in &members {
        eventually("membership converged", || m.len() == 3).await;
    }
    let admin = Admin::new(nodes[0].clone(), Some(members[0].clone()));
    for (n, m) in nodes.iter().zip(&members).skip(1) {
        // The other nodes serve routed operations (as `soma node` sets up on every node).
        let _ = Admin::new(n.clone(), Some(m.clone()));
    }
    let server =
        AdminServer::start(admin, "127.0.0.1:0".parse().expect("addr"), Some(TOKEN.into())).await.expect("admin API");
    let url = format!("http://{}", server.local_addr());
    let api = AdminClient::new(&url, Some(TOKEN.into()), Duration::from_secs(10)).expect("client");
    Cluster { nodes, members, server, api }
}

fn pid_of(v: &Value) -> String {
    v.get("pid").and_then(Value::as_str).expect("a pid").to_owned()
}

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_spawn_by_provider_and_talk_to_a_remote_pid_through_any_node() {
    let ca = TestCa::new();
    let c = cluster(&ca).await;

    let nodes = c.api.get("/v1/nodes").await.expect("nodes");
    let mut seen: Vec<(String, String, Value)> = nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            (n["name"].as_str().unwrap().to_owned(), n["role"].as_str().unwrap().to_owned(), n["providers"].clone())
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("cold-a".to_owned(), "cold".to_owned(), json!(["openai"])),
            ("cold-b".to_owned(), "cold".to_owned(), json!(["anthropic", "local"])),
            ("hot-1".to_owned(), "hot".to_owned(), json!([])),
        ]
    );

    // Each node's own view, asked through hot-1.
    let via = c.api.get("/v1/nodes?via=cold-a").await.expect("cold-a's view");
    assert_eq!(via.as_array().map(Vec::len), Some(3));
    assert!(via.as_array().unwrap().iter().any(|n| n["name"] == "cold-a" && n["self"] == true));

    // Spawned by provider: only cold-b serves anthropic.
    let spawned = c
        .api
        .post("/v1/spawn", &json!({"behaviour": "demo.counter", "args": 5, "role": "cold", "providers": ["anthropic"], "label": "ctr"}))
        .await
        .expect("spawn");
    assert_eq!(spawned["node"], "cold-b");
    let pid = pid_of(&spawned);
    assert!(pid.starts_with("<cold-b."), "{pid}");
    let p = pid_path(&pid).expect("pid");

    // Send and call it through hot-1's API: routed to cold-b over QUIC.
    c.api.post(&format!("/v1/processes/{p}/send"), &json!({"msg": {"add": 4}})).await.expect("send");
    let r = c.api.post(&format!("/v1/processes/{p}/call"), &json!({"msg": "get"})).await.expect("call");
    assert_eq!(r["reply"], 9);
    let info = c.api.get(&format!("/v1/processes/{p}")).await.expect("info");
    assert_eq!((info["label"].as_str(), info["behaviour"].as_str()), (Some("ctr"), Some("demo.counter")));
    assert_eq!(info["received"], 2);
    let state = c.api.get(&format!("/v1/processes/{p}/state")).await.expect("state");
    assert_eq!(state, json!({"count": 9}));

    // It shows in the cluster-wide listing, with the echo agents of nobody (none spawned here).
    let ps = c.api.get("/v1/processes").await.expect("ps");
    assert_eq!(ps["unreachable"], json!([]));
    assert!(ps["processes"].as_array().unwrap().iter().any(|x| x["pid"] == pid.as_str()));
    let only_a = c.api.get("/v1/processes?node=cold-a").await.expect("ps cold-a");
    assert!(only_a["processes"].as_array().unwrap().iter().all(|x| x["node"] == "cold-a"));

    // A bad request is a 400 with the reason; a wrong message type is refused, not dropped.
    let bad = c.api.post(&format!("/v1/processes/{p}/call"), &json!({"msg": {"no": "such"}})).await.unwrap_err();
    assert_eq!(status(&bad), 400, "{bad}");

    // Kill, then it is gone everywhere.
    c.api.post(&format!("/v1/processes/{p}/kill"), &json!(null)).await.expect("kill");
    let node_b = c.nodes[2].clone();
    let target = pid.parse::<soma::Pid>().expect("pid");
    eventually("the killed process is gone", || !node_b.is_alive(target)).await;
    let gone = c.api.get(&format!("/v1/processes/{p}")).await.unwrap_err();
    assert_eq!(status(&gone), 404, "{gone}");

    // No node serves the provider: a clear 409, nothing spawned.
    let none = c.api.post("/v1/spawn", &json!({"behaviour": "demo.echo", "providers": ["mistral"]})).await.unwrap_err();
    assert_eq!(status(&none), 409, "{none}");
    // An unknown behaviour on a chosen node: 400.
    let unknown = c.api.post("/v1/spawn", &json!({"behaviour": "nope", "node": "cold-a"})).await.unwrap_err();
    assert_eq!(status(&unknown), 400, "{unknown}");
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_trace_streams_every_event_through_exit() {
    let ca = TestCa::new();
    let c = cluster(&ca).await;
    let spawned =
        c.api.post("/v1/spawn", &json!({"behaviour": "demo.counter", "node": "cold-a"})).await.expect("spawn");
    let pid = pid_of(&spawned);
    let p = pid_path(&pid).expect("pid");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let api = c.api.with_timeout(Duration::from_secs(30));
    let path = format!("/v1/processes/{p}/trace/stream?on=true");
    let streaming = tokio::spawn(async move { api.stream(&path, |v| tx.send(v).is_ok()).await });
    // Tracing is on once the stream is set up: wait for it, then act.
    eventually("tracing switched on", || c.nodes[1].info(pid.parse().expect("pid")).map(|i| i.traced).unwrap_or(false))
        .await;
    c.api.post(&format!("/v1/processes/{p}/send"), &json!({"msg": {"add": 2}})).await.expect("send");
    c.api.post(&format!("/v1/processes/{p}/call"), &json!({"msg": "get"})).await.expect("call");
    c.api.post(&format!("/v1/processes/{p}/kill"), &json!(null)).await.expect("kill");

    let mut kinds = Vec::new();
    loop {
        let v = within("a trace line", rx.recv()).await.expect("the stream ends with an end line");
        if let Some(end) = v.get("end") {
            assert_eq!(end, "exited");
            break;
        }
        kinds.push(v["kind"].as_str().expect("kind").to_owned());
    }
    assert_eq!(kinds, ["received", "state", "call_received", "replied", "exited"], "every event, in order");
    within("stream closes", streaming).await.expect("task").expect("stream");
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g9_the_api_needs_its_token_and_refuses_to_serve_exposed_without_one() {
    let ca = TestCa::new();
    let c = cluster(&ca).await;
    let url = format!("http://{}", c.server.local_addr());
    for token in [None, Some("wrong-token-0123456789".to_owned())] {
        let api = AdminClient::new(&url, token, Duration::from_secs(5)).expect("client");
        match api.get("/v1/nodes").await {
            Err(ClientError::Api { status: 401, kind, .. }) => assert_eq!(kind, "unauthorized"),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    let admin = Admin::new(c.nodes[0].clone(), Some(c.members[0].clone()));
    match AdminServer::start(admin, "0.0.0.0:0".parse().expect("addr"), None).await {
        Err(AdminServeError::TokenRequired(_)) => {}
        other => panic!("an exposed API without a token must not start: {other:?}"),
    }
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_g3_pids_of_lost_or_earlier_incarnations_answer_no_proc_or_unreachable() {
    let ca = TestCa::new();
    let c = cluster(&ca).await;
    let spawned = c.api.post("/v1/spawn", &json!({"behaviour": "demo.echo", "node": "cold-a"})).await.expect("spawn");
    let p = pid_path(&pid_of(&spawned)).expect("pid");
    // The same serial on an earlier incarnation of cold-a: never reaches the live process.
    let parts: Vec<&str> = p.split('.').collect();
    let old = format!("cold-a.0.{}", parts[2]);
    let e = c.api.get(&format!("/v1/processes/{old}")).await.unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    // A node that is not a member.
    let e = c.api.get("/v1/processes/nobody.1.1").await.unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    // A garbage PID.
    let e = c.api.get("/v1/processes/garbage").await.unwrap_err();
    assert_eq!(status(&e), 400, "{e}");

    // cold-a stops (its gossip first, then the node): once it is down, its PIDs answer 404
    // (not a member) or 502 (unreachable while it is still being declared down).
    c.members[1].stop().await;
    c.nodes[1].shutdown(Duration::from_secs(1)).await;
    eventually("cold-a is no longer a member", || c.members[0].member("cold-a").is_none()).await;
    let e = c.api.get(&format!("/v1/processes/{p}")).await.unwrap_err();
    assert!([404, 502].contains(&status(&e)), "{e}");
    let ps = c.api.get("/v1/processes").await.expect("ps");
    assert!(ps["processes"].as_array().unwrap().iter().all(|x| x["node"] != "cold-a"));
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_a_routed_call_fails_at_once_when_its_node_is_lost() {
    let ca = TestCa::new();
    let c = cluster(&ca).await;
    let spawned =
        c.api.post("/v1/spawn", &json!({"behaviour": "demo.counter", "node": "cold-a"})).await.expect("spawn");
    let p = pid_path(&pid_of(&spawned)).expect("pid");
    // Suspended, it cannot answer: the call below waits on cold-a.
    c.api.post(&format!("/v1/processes/{p}/suspend"), &json!(null)).await.expect("suspend");
    let api = c.api.with_timeout(Duration::from_secs(120));
    let path = format!("/v1/processes/{p}/call");
    let pending = tokio::spawn(async move { api.post(&path, &json!({"msg": "get", "timeout_ms": 60_000})).await });
    let target: soma::Pid = pid_of(&spawned).parse().expect("pid");
    eventually("the call is queued on cold-a", || {
        c.nodes[1].info(target).map(|i| i.mailbox_depth == 1).unwrap_or(false)
    })
    .await;
    // The connection hot-1 → cold-a ends (the process itself lives on, still suspended).
    assert!(c.nodes[0].disconnect("cold-a"));
    // Far sooner than the call's 60 s: the connection's end fails the routed request.
    let e = within("the routed call fails", pending).await.expect("task").unwrap_err();
    assert_eq!(status(&e), 502, "{e}");
    assert!(c.nodes[1].is_alive(target));
    c.server.stop().await;
}
