//! The name registry.

use soma::{ExitReason, RegistryError, SpawnError, SpawnOpts};
use soma_tests::*;

/// register / whereis / registered / unregister, and the name in info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_whereis_unregister() {
    let node = start("t-reg-basic");
    let a = probe(&node, ProbeArgs::default());
    assert_eq!(node.whereis("alpha"), None);
    node.register("alpha", a.pid()).unwrap();
    assert_eq!(node.whereis("alpha"), Some(a.pid()));
    assert_eq!(node.registered(), vec![("alpha".to_owned(), a.pid())]);
    assert_eq!(node.info(a.pid()).unwrap().registered_name.as_deref(), Some("alpha"));
    // The name reaches the process.
    node.send(node.whereis("alpha").unwrap(), Cmd::Push(1)).unwrap();
    assert_eq!(ask(&a, Req::Log).await.log(), vec![1]);

    assert_eq!(node.unregister("alpha"), Some(a.pid()));
    assert_eq!(node.whereis("alpha"), None);
    assert_eq!(node.unregister("alpha"), None);
    assert_eq!(node.info(a.pid()).unwrap().registered_name, None);
    assert!(node.registered().is_empty());
    // Unregistered, it may take a (new) name again.
    node.register("alpha2", a.pid()).unwrap();
    assert_eq!(node.whereis("alpha2"), Some(a.pid()));
}

/// A name names one process: registering a taken name fails and leaves the owner in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_taken_name_fails() {
    let node = start("t-reg-taken");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    node.register("svc", a.pid()).unwrap();
    assert_eq!(node.register("svc", b.pid()), Err(RegistryError::NameTaken("svc".into())));
    assert_eq!(node.whereis("svc"), Some(a.pid()));
    assert_eq!(node.info(b.pid()).unwrap().registered_name, None);
}

/// A process has at most one name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_per_process() {
    let node = start("t-reg-one-name");
    let a = probe(&node, ProbeArgs::default());
    node.register("first", a.pid()).unwrap();
    assert_eq!(node.register("second", a.pid()), Err(RegistryError::AlreadyRegistered(a.pid(), "first".into())));
    assert_eq!(node.whereis("second"), None);
    // The same from inside the process (ctx.register).
    assert!(matches!(ask(&a, Req::Register("third".into())).await, Reply::Err(e) if e.contains("already registered")));
}

/// A process can register itself; the name disappears when it exits and can be reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_disappears_when_the_process_exits() {
    let node = start("t-reg-exit");
    let a = probe(&node, ProbeArgs::default());
    assert_eq!(ask(&a, Req::Register("worker".into())).await, Reply::Ok);
    assert_eq!(node.whereis("worker"), Some(a.pid()));
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Panic("bye".into())).unwrap();
    within("exit", exited).await;
    assert_eq!(node.whereis("worker"), None);
    assert!(node.registered().is_empty());
    let b = probe(&node, ProbeArgs::default());
    node.register("worker", b.pid()).unwrap();
    assert_eq!(node.whereis("worker"), Some(b.pid()));
}

/// Registering a dead PID, or an invalid name, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_dead_pid_or_bad_name_fails() {
    let node = start("t-reg-errors");
    let a = probe(&node, ProbeArgs::default());
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    within("exit", exited).await;
    assert_eq!(node.register("ghost", a.pid()), Err(RegistryError::NoProc(a.pid())));
    assert_eq!(node.whereis("ghost"), None);

    let b = probe(&node, ProbeArgs::default());
    assert_eq!(node.register("", b.pid()), Err(RegistryError::BadName(String::new())));
    let long = "x".repeat(256);
    assert_eq!(node.register(&long, b.pid()), Err(RegistryError::BadName(long.clone())));
    node.register(&"y".repeat(255), b.pid()).unwrap();
}

/// `SpawnOpts::register` names the process before its init; a taken name is a spawn error and
/// leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_opts_register_names_the_process() {
    let node = start("t-reg-spawn");
    let opts = SpawnOpts { register: Some("db".into()), ..SpawnOpts::labeled("db") };
    let a = node.spawn::<Probe>(ProbeArgs::default(), opts.clone()).unwrap();
    assert_eq!(node.whereis("db"), Some(a.pid()));
    assert_eq!(node.info(a.pid()).unwrap().registered_name.as_deref(), Some("db"));

    let count = node.process_count();
    let err = node.spawn::<Probe>(ProbeArgs::default(), opts).unwrap_err();
    assert_eq!(err, SpawnError::Register(RegistryError::NameTaken("db".into())));
    assert_eq!(node.process_count(), count);
    assert_eq!(node.processes(), vec![a.pid()]);
    assert_eq!(node.whereis("db"), Some(a.pid()));
}
