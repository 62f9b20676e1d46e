//! The operator commands (`soma nodes`, `ps`, `info`, `state`, `trace`, `send`, `call`, `kill`,
//! `groups`, `spawn`, `tree`): clients of a node's admin HTTP API (`docs/admin-api.md`). Any
//! node answers for the whole cluster, so one URL is enough.
//!
//! Where the API is: `--url`, else `SOMA_ADMIN_URL`, else `http://127.0.0.1:7180` (what a
//! node with no configuration serves, and what the docker-compose cluster publishes). The
//! token: `--token`, else `SOMA_ADMIN_TOKEN`, else the first line of `.soma/admin-token` in the
//! working directory if there is one (the compose cluster's token file), else none.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use hyper::Method;
use serde_json::{json, Value};
use soma::admin::client::AdminClient;

use super::parse_duration;

/// The token file the compose cluster writes (relative to the working directory).
pub const TOKEN_FILE: &str = ".soma/admin-token";

/// Where the admin API is and how to talk to it.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ApiArgs {
    /// The admin API of any node of the cluster.
    #[arg(long, env = "SOMA_ADMIN_URL", default_value = "http://127.0.0.1:7180")]
    pub url: String,
    /// The admin token [default: SOMA_ADMIN_TOKEN, else .soma/admin-token if present].
    #[arg(long, env = "SOMA_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long to wait for an answer (e.g. 500ms, 10s).
    #[arg(id = "http_timeout", long = "http-timeout", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The client for `args` (reads the token file if needed).
pub fn api(args: &ApiArgs) -> anyhow::Result<AdminClient> {
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None if Path::new(TOKEN_FILE).is_file() => {
            Some(super::config::read_token_file(Path::new(TOKEN_FILE)).map_err(|e| anyhow!(e))?)
        }
        None => None,
    };
    Ok(AdminClient::new(&args.url, token, args.timeout)?)
}

/// A PID as the URL path segment (brackets dropped: `a.1.2`).
pub fn pid_path(pid: &str) -> anyhow::Result<String> {
    soma::admin::client::pid_path(pid).with_context(|| format!("{pid:?} is not a PID"))
}

/// Parses a command-line JSON argument; a bare word that is not JSON is taken as a string,
/// so `soma send PID hello` works as `soma send PID '"hello"'`.
pub fn json_arg(text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(_) if !text.trim_start().starts_with(['{', '[', '"']) => Ok(Value::String(text.to_owned())),
        Err(e) => Err(anyhow!("{text:?} is not JSON: {e}")),
    }
}

/// Renders rows as aligned columns under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "-".into(),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// `soma nodes`.
pub fn render_nodes(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let load = n.pointer("/load/processes").map_or_else(|| "-".into(), Value::to_string);
                    vec![
                        s(n, "name"),
                        s(n, "role"),
                        s(n, "providers"),
                        s(n, "status"),
                        load,
                        s(n, "addr"),
                        s(n, "creation"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["NAME", "ROLE", "PROVIDERS", "STATUS", "PROCS", "ADDR", "CREATION"], &rows)
}

/// `soma ps`.
pub fn render_ps(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("processes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![s(p, "pid"), s(p, "label"), s(p, "behaviour"), s(p, "mailbox"), s(p, "status"), s(p, "name")]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = table(&["PID", "LABEL", "BEHAVIOUR", "MAILBOX", "STATUS", "NAME"], &rows);
    for u in v.get("unreachable").and_then(Value::as_array).into_iter().flatten() {
        out.push_str(&format!("\n(node {} did not answer: {})", s(u, "node"), s(u, "error")));
    }
    out
}

/// `soma groups`.
pub fn render_groups(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let n = g.get("members").and_then(Value::as_array).map_or(0, Vec::len);
                    vec![s(g, "name"), n.to_string(), s(g, "members")]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["GROUP", "SIZE", "MEMBERS"], &rows)
}

/// `soma sup list`.
pub fn render_sups(v: &Value) -> String {
    let mut out = Vec::new();
    for sup in v.get("supervisors").and_then(Value::as_array).into_iter().flatten() {
        out.push(format!("{} ({}, {})", s(sup, "name"), s(sup, "strategy"), s(sup, "status")));
        let rows: Vec<Vec<String>> = sup
            .get("children")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let status = match c.get("pending").and_then(Value::as_str) {
                    Some(why) => format!("pending ({why})"),
                    None => s(c, "status"),
                };
                vec![
                    format!("  {}", s(c, "id")),
                    s(c, "behaviour"),
                    status,
                    s(c, "node"),
                    s(c, "provider"),
                    s(c, "pid"),
                    s(c, "generation"),
                ]
            })
            .collect();
        out.push(table(&["  CHILD", "BEHAVIOUR", "STATUS", "NODE", "PROVIDER", "PID", "GEN"], &rows));
    }
    if out.is_empty() {
        out.push("no cluster supervisors".into());
    }
    out.join("\n")
}

/// `soma raft status`.
pub fn render_raft(v: &Value) -> String {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for n in v.get("nodes").and_then(Value::as_array).into_iter().flatten() {
        match n.get("status") {
            Some(st) => rows.push(vec![
                s(n, "node"),
                s(st, "state"),
                s(st, "term"),
                s(st, "leader"),
                s(st, "voters"),
                s(st, "last_applied"),
                s(st, "elections"),
            ]),
            None => errors.push(format!("(node {} did not answer: {})", s(n, "node"), s(n, "error"))),
        }
    }
    let mut out = table(&["NODE", "STATE", "TERM", "LEADER", "VOTERS", "APPLIED", "ELECTIONS"], &rows);
    for e in errors {
        out.push('\n');
        out.push_str(&e);
    }
    out
}

/// `soma tree`.
pub fn render_tree(v: &Value) -> String {
    fn walk(out: &mut Vec<String>, n: &Value, depth: usize) {
        out.push(format!(
            "{}{} {} [{}] {}",
            "  ".repeat(depth),
            s(n, "pid"),
            s(n, "label"),
            s(n, "behaviour"),
            s(n, "status")
        ));
        for c in n.get("children").and_then(Value::as_array).into_iter().flatten() {
            walk(out, c, depth + 1);
        }
    }
    let mut out = Vec::new();
    if let Some(c) = v.get("cluster").filter(|c| !c.is_null()) {
        out.push("cluster supervisors (Raft)".to_owned());
        out.push(render_sups(c));
    }
    for node in v.get("nodes").and_then(Value::as_array).into_iter().flatten() {
        out.push(format!("node {}", s(node, "node")));
        if let Some(e) = node.get("error") {
            out.push(format!("  (did not answer: {})", e.as_str().unwrap_or("?")));
        }
        for t in node.get("tree").and_then(Value::as_array).into_iter().flatten() {
            walk(&mut out, t, 1);
        }
    }
    out.join("\n")
}

/// `soma trace`: switches tracing on, prints events until the process exits or Ctrl-C, then
/// switches it off again (if it was off before).
pub async fn trace(api: &AdminClient, pid: &str, json_out: bool) -> anyhow::Result<()> {
    let p = pid_path(pid)?;
    let info = api.call(Method::GET, &format!("/v1/processes/{p}"), None).await?;
    let was_on = info.get("traced").and_then(Value::as_bool).unwrap_or(false);
    eprintln!("tracing {pid} (Ctrl-C to stop)");
    let print = |e: Value| {
        if json_out {
            println!("{e}");
        } else if let Some(end) = e.get("end") {
            println!("-- trace ended: {}", end.as_str().unwrap_or("?"));
        } else {
            let at = e.get("at_ns").and_then(Value::as_u64).unwrap_or(0);
            let corr = e.get("corr").filter(|c| !c.is_null()).map(|c| format!(" corr={}", c.as_str().unwrap_or("?")));
            println!(
                "{:>12.6}s #{:<6} {:<12} {}{} {}",
                at as f64 / 1e9,
                s(&e, "seq"),
                s(&e, "kind"),
                e.get("peer")
                    .filter(|p| !p.is_null())
                    .map_or(String::new(), |p| format!("peer={} ", p.as_str().unwrap_or("?"))),
                corr.unwrap_or_default(),
                e.get("payload").map_or(String::new(), Value::to_string)
            );
        }
        true
    };
    let streamed = {
        let path = format!("/v1/processes/{p}/trace/stream?on=true");
        let long = api.with_timeout(Duration::from_secs(3600 * 24));
        tokio::select! {
            r = long.stream(&path, print) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    };
    if !was_on {
        // Best effort: the process may have exited.
        let _ = api.call(Method::PUT, &format!("/v1/processes/{p}/trace"), Some(&json!({"on": false}))).await;
    }
    Ok(streamed?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arguments_accept_bare_words() {
        assert_eq!(json_arg("hello").expect("json"), json!("hello"));
        assert_eq!(json_arg("12").expect("json"), json!(12));
        assert_eq!(json_arg("{\"a\":1}").expect("json"), json!({"a": 1}));
        assert!(json_arg("{broken").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\nz    w");
    }

    #[test]
    fn renderings_show_every_row() {
        let nodes = json!([{"name": "hot-1", "role": "hot", "providers": [], "status": "up",
                            "load": {"processes": 3}, "addr": "10.0.0.2:7100", "creation": 5}]);
        let out = render_nodes(&nodes);
        assert!(out.contains("hot-1") && out.contains("10.0.0.2:7100"), "{out}");
        let ps = json!({"processes": [{"pid": "<a.1.2>", "behaviour": "demo.echo", "mailbox": 0, "status": "waiting"}],
                        "unreachable": [{"node": "b", "error": "gone"}]});
        let out = render_ps(&ps);
        assert!(out.contains("<a.1.2>") && out.contains("node b did not answer"), "{out}");
    }
}
