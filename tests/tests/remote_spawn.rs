//! Remote spawn over real QUIC + mTLS on loopback: behaviours registered by name, spawned on
//! another node with typed or JSON arguments, linked before `init`, and clear errors.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use soma::control::SpawnRefused;
use soma::dist::spawn::{RemoteSpawnError, RemoteSpawnOpts};
use soma::{Behaviour, Context, Error};
use soma_tests::cluster::{mesh, TestCa};
use soma_tests::relay::Relay;
use soma_tests::*;

/// A worker pinned to a model.
struct Worker {
    model: String,
    handled: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerArgs {
    model: String,
    #[serde(default)]
    fail_init: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum WorkerMsg {
    Work,
    Crash,
}

impl Behaviour for Worker {
    type Args = WorkerArgs;
    type Msg = WorkerMsg;
    type Call = ();
    type Reply = (String, u64);

    fn name() -> &'static str {
        "test.worker"
    }

    async fn init(_: &mut Context<Self>, args: WorkerArgs) -> Result<Self, Error> {
        if args.fail_init {
            return Err("no API key".into());
        }
        Ok(Worker { model: args.model, handled: 0 })
    }

    async fn handle(&mut self, _: &mut Context<Self>, msg: WorkerMsg) -> Result<(), Error> {
        match msg {
            WorkerMsg::Work => {
                self.handled += 1;
                Ok(())
            }
            WorkerMsg::Crash => Err("worker crashed".into()),
        }
    }

    async fn handle_call(&mut self, _: &mut Context<Self>, _: ()) -> Result<(String, u64), Error> {
        Ok((self.model.clone(), self.handled))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_a_registered_behaviour_on_another_node_with_typed_or_json_args() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    b.register_behaviour::<Worker>().expect("register");
    assert_eq!(b.behaviours(), vec!["test.worker".to_owned()]);
    let args = WorkerArgs { model: "gpt".into(), fail_init: false };
    let opts = RemoteSpawnOpts { label: Some("w-1".into()), ..RemoteSpawnOpts::default() };
    let pid = within("spawn", a.spawn_on::<Worker>("b", &args, opts)).await.expect("spawned");
    assert_eq!(pid.node(), b.id(), "a PID of b's incarnation");
    let info = b.info(pid).expect("alive on b");
    assert_eq!((info.label.as_deref(), info.behaviour.as_str()), (Some("w-1"), "test.worker"));
    let w = a.pid_ref::<Worker>(pid);
    w.send(WorkerMsg::Work).expect("send");
    assert_eq!(within("call", w.call((), CALL)).await, Ok(("gpt".into(), 1)));
    // JSON arguments (the CLI's and the admin API's way), with a default field left out.
    let pid = within("spawn json", a.spawn_on_json("b", "test.worker", r#"{"model":"claude"}"#, Default::default()))
        .await
        .expect("spawned");
    assert_eq!(within("call", a.pid_ref::<Worker>(pid).call((), CALL)).await, Ok(("claude".into(), 0)));
    // Spawning on this node by its own name works too (if registered here).
    a.register_behaviour::<Worker>().expect("register on a");
    let here = within("spawn here", a.spawn_on::<Worker>("a", &args, Default::default())).await.expect("spawned");
    assert_eq!(here.node(), a.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_spawn_errors_are_clear() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    b.register_behaviour::<Worker>().expect("register");
    let unknown = a.spawn_on_json("b", "nope", "{}", Default::default()).await;
    assert_eq!(unknown, Err(RemoteSpawnError::Refused(SpawnRefused::UnknownBehaviour("nope".into()))));
    match a.spawn_on_json("b", "test.worker", r#"{"modle":"x"}"#, Default::default()).await {
        Err(RemoteSpawnError::Refused(SpawnRefused::BadArgs { behaviour, error })) => {
            assert_eq!(behaviour, "test.worker");
            assert!(error.contains("model"), "{error}");
        }
        other => panic!("expected bad args, got {other:?}"),
    }
    let failing = WorkerArgs { model: "x".into(), fail_init: true };
    match a.spawn_on::<Worker>("b", &failing, Default::default()).await {
        Err(RemoteSpawnError::Refused(SpawnRefused::Init(reason))) => assert_crashed_with(&reason, "no API key"),
        other => panic!("expected an init failure, got {other:?}"),
    }
    // A node nobody knows the address of.
    let c = ca.node("c", 1);
    c.register_behaviour::<Worker>().expect("register");
    let args = WorkerArgs { model: "x".into(), fail_init: false };
    assert_eq!(
        within("spawn on unknown", a.spawn_on::<Worker>("c", &args, Default::default())).await,
        Err(RemoteSpawnError::NoConnection("c".into()))
    );
    assert_eq!(b.dist_stats().expect("stats").protocol_errors, 0);
}

/// A spawn the node does not answer times out; one waiting when the connection is lost fails at
/// once with `NoConnection`, long before its own timeout (G3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_an_unanswered_spawn_times_out_and_one_waiting_on_a_lost_connection_fails_at_once() {
    let ca = TestCa::new();
    // A silent connection stays up for a minute: only the test decides when it is lost.
    let patient = |name: &str| soma::DistConfig { idle_timeout: Duration::from_secs(60), ..ca.config(name) };
    let (a, b) = (ca.node_with("a", 1, patient("a")), ca.node_with("b", 1, patient("b")));
    b.register_behaviour::<Worker>().expect("register");
    let relay = Relay::start(b.local_addr().expect("distributed")).await;
    // Only a knows where b is (through the relay), so the relay carries it all.
    a.add_peer("b", relay.addr());
    let args = WorkerArgs { model: "x".into(), fail_init: false };
    within("spawn through the relay", a.spawn_on::<Worker>("b", &args, Default::default())).await.expect("spawned");
    relay.cut();
    let short = Duration::from_millis(100);
    let opts = RemoteSpawnOpts { timeout: short, ..RemoteSpawnOpts::default() };
    assert_eq!(
        within("the short spawn", a.spawn_on::<Worker>("b", &args, opts)).await,
        Err(RemoteSpawnError::Timeout("b".into(), short))
    );
    assert_eq!(a.dist_stats().expect("stats").rpc_pending, 0, "a timed-out request is forgotten");
    // Its own timeout is a minute; `within` allows 5 s. It waits on the (silent) connection
    // until that connection is dropped.
    let opts = RemoteSpawnOpts { timeout: Duration::from_secs(60), ..RemoteSpawnOpts::default() };
    let waiting = tokio::spawn({
        let (a, args) = (a.clone(), args.clone());
        async move { a.spawn_on::<Worker>("b", &args, opts).await }
    });
    eventually("the spawn is waiting", || a.dist_stats().is_some_and(|s| s.rpc_pending == 1)).await;
    assert!(a.disconnect("b"), "a was connected to b");
    assert_eq!(
        within("the waiting spawn failing", waiting).await.expect("task"),
        Err(RemoteSpawnError::NoConnection("b".into()))
    );
    assert_eq!(a.dist_stats().expect("stats").rpc_pending, 0);
    assert_eq!(b.dist_stats().expect("stats").protocol_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_remote_spawn_propagates_the_childs_crash_and_its_init_failure() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    b.register_behaviour::<Worker>().expect("register");
    let (tx, mut events) = Events::new();
    let parent = probe(&a, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let opts = RemoteSpawnOpts { link: Some(parent.pid()), ..RemoteSpawnOpts::default() };
    let args = WorkerArgs { model: "x".into(), fail_init: false };
    let child = within("spawn", a.spawn_on::<Worker>("b", &args, opts.clone())).await.expect("spawned");
    assert_eq!(b.info(child).expect("alive").links, vec![parent.pid()]);
    a.pid_ref::<Worker>(child).send(WorkerMsg::Crash).expect("send");
    match events.next().await {
        Event::Exit { pid, from, reason } => {
            assert_eq!((pid, from), (parent.pid(), child));
            assert_crashed_with(&reason, "worker crashed");
        }
        e => panic!("unexpected {e:?}"),
    }
    // Linked before init: an init failure reaches the parent as an exit signal too.
    let failing = WorkerArgs { model: "x".into(), fail_init: true };
    let r = within("spawn", a.spawn_on::<Worker>("b", &failing, opts)).await;
    assert!(matches!(r, Err(RemoteSpawnError::Refused(SpawnRefused::Init(_)))), "{r:?}");
    match events.next().await {
        Event::Exit { pid, reason, .. } => {
            assert_eq!(pid, parent.pid());
            assert_crashed_with(&reason, "no API key");
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_by_constraint_picks_a_matching_member() {
    use soma::membership::{Constraint, Membership, MembershipConfig, PlacedSpawnError, Role, Seed};
    let ca = TestCa::new();
    let (a, b, c) = (ca.node("a", 1), ca.node("b", 1), ca.node("c", 1));
    for n in [&a, &b, &c] {
        n.register_behaviour::<Worker>().expect("register");
    }
    let seed = Seed { name: "a".into(), host: a.local_addr().expect("addr").to_string() };
    let cfg = |role, providers: &[&str], seeds: Vec<Seed>| MembershipConfig {
        role,
        providers: providers.iter().map(|p| p.to_string()).collect(),
        seeds,
        ..MembershipConfig::default()
    };
    let ma = within("join", Membership::join(&a, cfg(Role::Hot, &[], vec![]))).await.expect("join");
    let _mb =
        within("join", Membership::join(&b, cfg(Role::Cold, &["openai"], vec![seed.clone()]))).await.expect("join");
    let _mc =
        within("join", Membership::join(&c, cfg(Role::Cold, &["anthropic", "local"], vec![seed]))).await.expect("join");
    eventually("a sees three members", || ma.len() == 3).await;
    let args = WorkerArgs { model: "claude".into(), fail_init: false };
    let by_provider = Constraint { providers: vec!["anthropic".into()], ..Default::default() };
    let pid = within("spawn", ma.spawn::<Worker>(&by_provider, &args, Default::default())).await.expect("spawned");
    assert_eq!(pid.node(), c.id());
    let fallback = Constraint { providers: vec!["mistral".into(), "openai".into()], ..Default::default() };
    let pid = within("spawn", ma.spawn::<Worker>(&fallback, &args, Default::default())).await.expect("spawned");
    assert_eq!(pid.node(), b.id(), "the next provider in preference order");
    let hot = Constraint { role: Some(Role::Hot), ..Default::default() };
    let pid = within("spawn", ma.spawn_json(&hot, "test.worker", r#"{"model":"m"}"#, Default::default()))
        .await
        .expect("spawned");
    assert_eq!(pid.node(), a.id());
    let impossible = Constraint { role: Some(Role::Hot), providers: vec!["openai".into()], ..Default::default() };
    match ma.spawn::<Worker>(&impossible, &args, Default::default()).await {
        Err(PlacedSpawnError::NoMatch(e)) => {
            assert_eq!(e.to_string(), "no member matches role=hot, provider in [openai]")
        }
        other => panic!("expected no match, got {other:?}"),
    }
}
