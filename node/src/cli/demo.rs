//! The demo agent `soma node` runs (registered as `echo`), and whose types `soma send` and
//! `soma call` speak.

use soma::{Behaviour, Context, Error};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use soma::{Node, NodeConfig, SpawnOpts};

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
}
