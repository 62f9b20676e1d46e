//! The demo behaviours every `soma node` registers (so they can be spawned by name from the CLI
//! with no code): `demo.echo` (one runs on every node, registered as `echo`) and
//! `demo.counter`. [`register`] registers both on a node.

use crate::{Behaviour, Context, Error};

/// Registers the demo behaviours on a distributed node.
pub fn register(node: &crate::Node) -> Result<(), crate::dist::spawn::RegisterError> {
    node.register_behaviour::<DemoEcho>()?;
    node.register_behaviour::<DemoCounter>()
}

/// The name the demo agent is registered under.
pub const ECHO_NAME: &str = "echo";

/// The demo agent: logs every message and call it gets (with its PID, label and the sender's
/// PID) and counts them; answers a call `text` with `echo: text (#n)`.
#[derive(Debug, Default)]
pub struct DemoEcho {
    /// Messages and calls handled so far.
    count: u64,
}

impl Behaviour for DemoEcho {
    type Args = ();
    type Msg = String;
    type Call = String;
    type Reply = String;

    fn name() -> &'static str {
        "demo.echo"
    }

    async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
        Ok(DemoEcho::default())
    }

    async fn handle(&mut self, ctx: &mut Context<Self>, text: String) -> Result<(), Error> {
        self.count += 1;
        tracing::info!(
            pid = %ctx.pid(),
            label = ctx.label().as_deref().unwrap_or("-"),
            from = %sender(ctx),
            n = self.count,
            text = %text,
            "message received"
        );
        Ok(())
    }

    async fn handle_call(&mut self, ctx: &mut Context<Self>, text: String) -> Result<String, Error> {
        self.count += 1;
        tracing::info!(
            pid = %ctx.pid(),
            label = ctx.label().as_deref().unwrap_or("-"),
            from = %sender(ctx),
            n = self.count,
            text = %text,
            "call received"
        );
        Ok(reply_to(&text, self.count))
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "count": self.count }))
    }
}

/// The reply to the `n`th message or call, a call with `text`.
pub fn reply_to(text: &str, n: u64) -> String {
    format!("echo: {text} (#{n})")
}

fn sender(ctx: &Context<DemoEcho>) -> String {
    ctx.sender().map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// A counter agent: `{"add": N}` messages add to it; calls `"get"` answer the count, `"reset"`
/// sets it to zero and answers the old count. Its arguments are the starting count (JSON
/// number, or `null` for 0).
#[derive(Debug, Default)]
pub struct DemoCounter {
    count: i64,
}

/// A message to [`DemoCounter`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterMsg {
    /// Adds this much.
    Add(i64),
}

/// A request to [`DemoCounter`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterCall {
    /// The count.
    Get,
    /// Zero it; answers the old count.
    Reset,
}

impl Behaviour for DemoCounter {
    type Args = Option<i64>;
    type Msg = CounterMsg;
    type Call = CounterCall;
    type Reply = i64;

    fn name() -> &'static str {
        "demo.counter"
    }

    async fn init(_: &mut Context<Self>, start: Option<i64>) -> Result<Self, Error> {
        Ok(DemoCounter { count: start.unwrap_or(0) })
    }

    async fn handle(&mut self, _: &mut Context<Self>, msg: CounterMsg) -> Result<(), Error> {
        match msg {
            CounterMsg::Add(n) => self.count = self.count.saturating_add(n),
        }
        Ok(())
    }

    async fn handle_call(&mut self, _: &mut Context<Self>, req: CounterCall) -> Result<i64, Error> {
        Ok(match req {
            CounterCall::Get => self.count,
            CounterCall::Reset => std::mem::take(&mut self.count),
        })
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "count": self.count }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Node, NodeConfig, SpawnOpts};

    use super::*;

    #[tokio::test]
    async fn echo_counts_messages_and_calls() {
        let node = Node::start(NodeConfig::named("demo-test")).expect("node");
        let echo = node.spawn::<DemoEcho>((), SpawnOpts::labeled("echo")).expect("spawn");
        echo.send("hi".into()).expect("send");
        let r = echo.call("hello".into(), Duration::from_secs(5)).await.expect("call");
        assert_eq!(r, "echo: hello (#2)");
        node.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn counter_adds_gets_and_resets() {
        let node = Node::start(NodeConfig::named("demo-counter-test")).expect("node");
        let c = node.spawn::<DemoCounter>(Some(5), SpawnOpts::labeled("c")).expect("spawn");
        c.send(CounterMsg::Add(3)).expect("send");
        assert_eq!(c.call(CounterCall::Get, Duration::from_secs(5)).await.expect("get"), 8);
        assert_eq!(c.call(CounterCall::Reset, Duration::from_secs(5)).await.expect("reset"), 8);
        assert_eq!(c.call(CounterCall::Get, Duration::from_secs(5)).await.expect("get"), 0);
        let j = node.call_json(c.pid(), serde_json::json!("get"), None, Duration::from_secs(5)).await.expect("json");
        assert_eq!(j, serde_json::json!(0));
        node.send_json(c.pid(), serde_json::json!({"add": 2}), None).expect("json send");
        assert_eq!(c.call(CounterCall::Get, Duration::from_secs(5)).await.expect("get"), 2);
        node.shutdown(Duration::from_secs(1)).await;
    }
}
