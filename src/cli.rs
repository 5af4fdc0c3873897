//! The command line: `brownout serve`, and client commands that talk to a running server
//! through the same HTTP API every other client uses.

use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tracing::info;

use crate::control::{Control, NewProxy, ProxyInput, api};

#[derive(Parser, Debug)]
#[command(
    name = "brownout",
    version,
    about = "Fault-injection proxy for agents and the MCP servers they call"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: the control API and every proxy it creates.
    Serve(ServeArgs),
    /// Speak MCP over stdio to the agent and relay to a server command run as a child,
    /// applying faults to whole JSON-RPC messages. Exits with the server's exit code.
    Stdio(StdioArgs),
    /// See brownout at work with nothing to set up: `brownout stdio` between a real MCP
    /// client and brownout's own MCP server with four faults (what the client saw, and the
    /// history), then short runs of the built-in suites against brownout's own server (and
    /// vm-crash on a namespaced guest, as root), ending with where their reports are.
    /// Exits 1 if a fault did not do what it says or a suite's check did not hold.
    #[cfg(feature = "rmcp")]
    Demo {
        /// Where the suites' results go (default brownout-results/demo).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a scenario, a built-in suite by name or a file: a workload of real MCP calls
    /// through brownout's proxies, a fault timeline, checks with thresholds. Writes
    /// results.json, junit.xml, history.jsonl and events.jsonl; exits 0 when every check
    /// held, 1 when one did not, 2 when the scenario could not run.
    #[cfg(feature = "rmcp")]
    Run {
        /// A built-in suite (see `brownout suites`) or a scenario file.
        scenario: String,
        /// The seed for every random decision; the file's, or a random one, otherwise.
        #[arg(long)]
        seed: Option<u64>,
        /// Where the results go (default: brownout-results/<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The long run the plan asks for, as the file's [full] table says, instead of the
        /// short one.
        #[arg(long)]
        full: bool,
    },
    /// List the built-in suites.
    #[cfg(feature = "rmcp")]
    Suites,
    /// Run brownout's own MCP server: tools write_file, read_file, echo, sleep and allocate
    /// on files under --root, over stdio (or Streamable HTTP with --http).
    #[cfg(feature = "rmcp")]
    McpServer {
        /// The directory whose files the tools read and write.
        #[arg(long)]
        root: PathBuf,
        /// Serve Streamable HTTP on this address (host:port) instead of stdio.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// List proxies.
    #[command(visible_alias = "ls", alias = "l", alias = "li")]
    List(ClientArgs),
    /// Show one proxy and its toxics.
    #[command(alias = "i", alias = "ins")]
    Inspect {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a proxy.
    #[command(alias = "c", alias = "new")]
    Create {
        name: String,
        /// Address to listen on, host:port (port 0 picks one).
        #[arg(long, short = 'l')]
        listen: String,
        /// Address to forward to, host:port.
        #[arg(long, short = 'u')]
        upstream: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a disabled proxy, or disable an enabled one.
    #[command(alias = "tog")]
    Toggle {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a proxy.
    #[command(alias = "d")]
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add, update or remove toxics.
    #[command(subcommand, alias = "t")]
    Toxic(ToxicCommand),
    /// Run MCP servers in guests (namespaces or QEMU microVMs) and crash, pause or restart
    /// them.
    #[command(subcommand, alias = "g")]
    Guest(GuestCommand),
}

#[derive(Subcommand, Debug)]
pub enum GuestCommand {
    /// Start a guest and wait until its server answers.
    Spawn {
        name: String,
        /// namespace (a process in namespaces of its own, fast), qemu (a microVM) or process
        /// (a plain process on the host, no root).
        #[arg(long, short = 'b', default_value = "namespace")]
        backend: String,
        /// Memory limit in MiB (qemu: guest RAM, default 128).
        #[arg(long)]
        memory: Option<u64>,
        /// CPU: a share of one core (namespace) or vCPUs (qemu).
        #[arg(long)]
        cpus: Option<f64>,
        /// Most processes at once (namespace).
        #[arg(long)]
        pids: Option<u64>,
        /// Guest image directory (qemu; default: the one scripts/guest-image.sh built).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Host directory the server keeps its files in (default: a fresh temp dir).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Make this proxy's upstream the guest's server.
        #[arg(long)]
        proxy: Option<String>,
        /// Port the server listens on inside the guest.
        #[arg(long)]
        port: Option<u16>,
        /// How long to wait for the server, in milliseconds.
        #[arg(long)]
        ready_timeout: Option<u64>,
        /// Return once the machine runs, without waiting for its server.
        #[arg(long)]
        no_wait: bool,
        /// The server to run (namespace), after `--`; `{data}` and `{port}` are replaced.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List guests.
    #[command(visible_alias = "ls")]
    List(ClientArgs),
    /// Show one guest: state, address, timings, last exit and leak report.
    Inspect {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// kill (SIGKILL), stop (graceful), pause, resume, restart, start (without waiting for
    /// it to serve), unplug (pull its network cable), plug, or signal a guest's server.
    #[command(name = "do")]
    Action {
        /// kill, stop, pause, resume, restart, start, unplug, plug, sigterm, sigint, sighup,
        /// sigquit, sigusr1, sigusr2, sigkill, or term-then-SIGNAL (during shutdown).
        action: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Kill a guest, remove everything it holds and print the leak report.
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8474)]
    pub port: u16,
    /// A JSON list of proxies to create at start, as `POST /populate` takes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed for every random decision (toxicity, jitter, slicer sizes), to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write every message that HTTP-mode proxies see (direction, method, id, timing, the
    /// faults that hit it) to this file as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// HTTP-mode proxies close a client connection that has not sent a request's headers
    /// within this (a request's head is read up to about 64 KiB; larger ones are answered 431).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct StdioArgs {
    /// A toxic as `POST /proxies/{p}/toxics` takes it (JSON); repeat for more. For example
    /// '{"type":"mcp","stream":"downstream","attributes":{"method":"tools/call","action":"drop"}}'.
    #[arg(long = "toxic", value_name = "JSON")]
    pub toxics: Vec<String>,
    /// A JSON list of toxics.
    #[arg(long = "toxics", value_name = "FILE")]
    pub toxics_file: Option<PathBuf>,
    /// Seed for every random decision, to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write every message (direction, method, id, timing, the faults that hit it) to this
    /// file as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Also serve the control API here (host:port; port 0 picks one), with this relay as the
    /// proxy named `stdio`, so its toxics can be changed while it runs and `/events`
    /// followed. The API's address is printed on stderr: stdout is the agent's.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// The server command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// URL of the brownout (or Toxiproxy) API.
    #[arg(long, env = "BROWNOUT_URL", default_value = "http://127.0.0.1:8474")]
    pub url: String,
    /// Print the API's JSON instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ToxicCommand {
    /// Add a toxic to a proxy.
    #[command(alias = "a")]
    Add {
        proxy: String,
        #[arg(long = "type", short = 't')]
        kind: String,
        #[arg(long = "toxicName", short = 'n')]
        name: Option<String>,
        /// upstream, downstream (the default) or both.
        #[arg(long, short = 's', conflicts_with_all = ["upstream", "downstream"])]
        stream: Option<String>,
        /// Same as --stream upstream (toxiproxy-cli's flag).
        #[arg(long, short = 'u', conflicts_with = "downstream")]
        upstream: bool,
        /// Same as --stream downstream (toxiproxy-cli's flag).
        #[arg(long, short = 'd')]
        downstream: bool,
        #[arg(long, alias = "tox")]
        toxicity: Option<f64>,
        /// An attribute, key=value; repeat for more.
        #[arg(long = "attribute", short = 'a', value_parser = parse_attr)]
        attributes: Vec<(String, Value)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a toxic's attributes or toxicity.
    #[command(alias = "u")]
    Update {
        proxy: String,
        #[arg(long = "toxicName", short = 'n')]
        name: String,
        #[arg(long, alias = "tox")]
        toxicity: Option<f64>,
        #[arg(long = "attribute", short = 'a', value_parser = parse_attr)]
        attributes: Vec<(String, Value)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a toxic.
    #[command(visible_alias = "rm", alias = "r", alias = "delete", alias = "d")]
    Remove {
        proxy: String,
        #[arg(long = "toxicName", short = 'n')]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_attr(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("attribute {s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("attribute {s:?} has no key"));
    }
    // Numbers and true/false go as such; anything else as a string, for the server to judge.
    let v = match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => serde_json::from_str::<serde_json::Number>(v)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(v.to_owned())),
    };
    Ok((k.to_owned(), v))
}

/// Errors the CLI reports before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the API at {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("talking to the API at {url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
    #[error("API listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {source}")]
    Signal { source: std::io::Error },
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("{what}: {message}")]
    Toxic { what: String, message: String },
    #[error(transparent)]
    Stdio(#[from] crate::proxy::stdio::StdioError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Run one command to completion; returns the process's exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| 0),
        Command::Stdio(args) => stdio(args).await,
        #[cfg(feature = "rmcp")]
        Command::Demo { out } => {
            let exe = std::env::current_exe().map_err(anyhow::Error::from)?;
            let out = out.unwrap_or_else(|| PathBuf::from("brownout-results").join("demo"));
            let good = crate::scenarios::demo::run(&exe, &out).await?;
            Ok(if good { 0 } else { 1 })
        }
        #[cfg(feature = "rmcp")]
        Command::McpServer { root, http } => {
            crate::mcp::server::run(root, http.as_deref()).await?;
            Ok(0)
        }
        #[cfg(feature = "rmcp")]
        Command::Run {
            scenario,
            seed,
            out,
            full,
        } => run_scenario(&scenario, seed, out, full).await,
        #[cfg(feature = "rmcp")]
        Command::Suites => {
            for (name, what) in crate::scenarios::suites::list() {
                println!("{name:<12} {what}");
            }
            Ok(0)
        }
        other => client(other).await.map(|()| 0),
    }
}

/// `brownout run`: check the scenario, run it, print the summary; the exit code says how it
/// went (2 also for a file that cannot be used: nothing was started then).
#[cfg(feature = "rmcp")]
async fn run_scenario(
    what: &str,
    seed: Option<u64>,
    out: Option<PathBuf>,
    full: bool,
) -> Result<i32, CliError> {
    use crate::scenarios;
    let scenario = match scenarios::resolve(what, full) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let out = out.unwrap_or_else(|| PathBuf::from("brownout-results").join(&scenario.name));
    // A bar on a terminal; plain lines in logs (CI, or stderr piped), one every few seconds.
    use std::io::IsTerminal;
    let progress = if std::env::var_os("CI").is_none() && std::io::stderr().is_terminal() {
        scenarios::Progress::Bar
    } else {
        scenarios::Progress::Lines(std::time::Duration::from_secs(5))
    };
    eprintln!(
        "running {} against {} ({} steps, {} checks); results in {}",
        scenario.name,
        scenario.target.describe(),
        scenario.steps.len(),
        scenario.checks.len(),
        out.display()
    );
    let opts = scenarios::RunOptions {
        seed,
        out: out.clone(),
        progress,
    };
    let results = scenarios::run(&scenario, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("writing results to {}: {e}", out.display()))?;
    print!("{}", results.summary());
    println!("results: {}", out.join("results.json").display());
    Ok(results.verdict.exit_code())
}

async fn client(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Serve(_) | Command::Stdio(_) => unreachable!("not client commands"),
        #[cfg(feature = "rmcp")]
        Command::Demo { .. }
        | Command::McpServer { .. }
        | Command::Run { .. }
        | Command::Suites => {
            unreachable!("not client commands")
        }
        Command::Guest(cmd) => guest(cmd).await,
        Command::List(c) => {
            let v = Client::new(&c)?.call(Method::GET, "/proxies", None).await?;
            if c.json {
                return print_json(&v);
            }
            let mut rows: Vec<&Value> = v
                .as_object()
                .map(|m| m.values().collect())
                .unwrap_or_default();
            rows.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_owned());
            if rows.is_empty() {
                println!("no proxies");
                return Ok(());
            }
            println!(
                "{:<24} {:<22} {:<22} {:<8} toxics",
                "NAME", "LISTEN", "UPSTREAM", "ENABLED"
            );
            for p in rows {
                println!(
                    "{:<24} {:<22} {:<22} {:<8} {}",
                    text(&p["name"]),
                    text(&p["listen"]),
                    text(&p["upstream"]),
                    p["enabled"].as_bool().unwrap_or(false),
                    p["toxics"].as_array().map_or(0, Vec::len)
                );
            }
            Ok(())
        }
        Command::Inspect { name, client } => {
            let v = Client::new(&client)?
                .call(Method::GET, &format!("/proxies/{name}"), None)
                .await?;
            if client.json {
                return print_json(&v);
            }
            print_proxy(&v);
            Ok(())
        }
        Command::Create {
            name,
            listen,
            upstream,
            client,
        } => {
            let body = json!({"name": name, "listen": listen, "upstream": upstream});
            let v = Client::new(&client)?
                .call(Method::POST, "/proxies", Some(body))
                .await?;
            if client.json {
                return print_json(&v);
            }
            println!(
                "created proxy {} listening on {} for {}",
                text(&v["name"]),
                text(&v["listen"]),
                text(&v["upstream"])
            );
            Ok(())
        }
        Command::Toggle { name, client } => {
            let c = Client::new(&client)?;
            let path = format!("/proxies/{name}");
            let current = c.call(Method::GET, &path, None).await?;
            let enabled = !current["enabled"].as_bool().unwrap_or(false);
            let v = c
                .call(Method::PATCH, &path, Some(json!({ "enabled": enabled })))
                .await?;
            if client.json {
                return print_json(&v);
            }
            println!(
                "proxy {name} is now {}",
                if enabled { "enabled" } else { "disabled" }
            );
            Ok(())
        }
        Command::Delete { name, client } => {
            Client::new(&client)?
                .call(Method::DELETE, &format!("/proxies/{name}"), None)
                .await?;
            if client.json {
                return print_json(&json!({ "deleted": name }));
            }
            println!("deleted proxy {name}");
            Ok(())
        }
        Command::Toxic(t) => toxic(t).await,
    }
}

async fn toxic(cmd: ToxicCommand) -> Result<(), CliError> {
    match cmd {
        ToxicCommand::Add {
            proxy,
            kind,
            name,
            stream,
            upstream,
            downstream,
            toxicity,
            attributes,
            client,
        } => {
            let stream = match (upstream, downstream) {
                (true, _) => Some("upstream".to_owned()),
                (_, true) => Some("downstream".to_owned()),
                _ => stream,
            };
            let mut body = json!({"type": kind, "attributes": attributes.into_iter().collect::<serde_json::Map<_, _>>()});
            for (k, v) in [
                ("name", name.map(Value::from)),
                ("stream", stream.map(Value::from)),
                ("toxicity", toxicity.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let v = Client::new(&client)?
                .call(
                    Method::POST,
                    &format!("/proxies/{proxy}/toxics"),
                    Some(body),
                )
                .await?;
            if client.json {
                return print_json(&v);
            }
            println!("added toxic {} to proxy {proxy}", describe_toxic(&v));
            Ok(())
        }
        ToxicCommand::Update {
            proxy,
            name,
            toxicity,
            attributes,
            client,
        } => {
            if toxicity.is_none() && attributes.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give --toxicity or --attribute".into(),
                ));
            }
            let mut body =
                json!({"attributes": attributes.into_iter().collect::<serde_json::Map<_, _>>()});
            if let Some(t) = toxicity {
                body["toxicity"] = t.into();
            }
            let v = Client::new(&client)?
                .call(
                    Method::PATCH,
                    &format!("/proxies/{proxy}/toxics/{name}"),
                    Some(body),
                )
                .await?;
            if client.json {
                return print_json(&v);
            }
            println!("updated toxic {} on proxy {proxy}", describe_toxic(&v));
            Ok(())
        }
        ToxicCommand::Remove {
            proxy,
            name,
            client,
        } => {
            Client::new(&client)?
                .call(
                    Method::DELETE,
                    &format!("/proxies/{proxy}/toxics/{name}"),
                    None,
                )
                .await?;
            if client.json {
                return print_json(&json!({ "removed": name }));
            }
            println!("removed toxic {name} from proxy {proxy}");
            Ok(())
        }
    }
}

async fn guest(cmd: GuestCommand) -> Result<(), CliError> {
    let (client, v) = match cmd {
        GuestCommand::Spawn {
            name,
            backend,
            memory,
            cpus,
            pids,
            image,
            data,
            proxy,
            port,
            ready_timeout,
            no_wait,
            command,
            client,
        } => {
            let mut spec = json!({ "name": name, "backend": backend });
            let fields = [
                ("memory_mib", memory.map(Value::from)),
                ("cpus", cpus.map(Value::from)),
                ("pids", pids.map(Value::from)),
                ("image", image.map(|p| Value::from(p.to_string_lossy()))),
                ("data_dir", data.map(|p| Value::from(p.to_string_lossy()))),
                ("proxy", proxy.map(Value::from)),
                ("port", port.map(Value::from)),
                ("ready_timeout_ms", ready_timeout.map(Value::from)),
                (
                    "command",
                    (!command.is_empty()).then(|| Value::from(command)),
                ),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    spec[k] = v;
                }
            }
            let path = if no_wait {
                "/guests?wait=false"
            } else {
                "/guests"
            };
            let v = Client::new(&client)?
                .call(Method::POST, path, Some(spec))
                .await?;
            (client, v)
        }
        GuestCommand::List(client) => {
            let v = Client::new(&client)?
                .call(Method::GET, "/guests", None)
                .await?;
            if !client.json {
                for g in v.as_array().cloned().unwrap_or_default() {
                    println!(
                        "{}\t{}\t{}\t{}",
                        text(&g["name"]),
                        text(&g["backend"]),
                        text(&g["state"]),
                        text(&g["upstream"])
                    );
                }
                return Ok(());
            }
            (client, v)
        }
        GuestCommand::Inspect { name, client } => {
            let v = Client::new(&client)?
                .call(Method::GET, &format!("/guests/{name}"), None)
                .await?;
            (client, v)
        }
        GuestCommand::Action {
            action,
            name,
            client,
        } => {
            let v = Client::new(&client)?
                .call(Method::POST, &format!("/guests/{name}/{action}"), None)
                .await?;
            (client, v)
        }
        GuestCommand::Delete { name, client } => {
            let v = Client::new(&client)?
                .call(Method::DELETE, &format!("/guests/{name}"), None)
                .await?;
            if !client.json {
                let clean = v["clean"].as_bool().unwrap_or(false);
                println!(
                    "deleted guest {name}: {}",
                    if clean {
                        "nothing left behind".to_owned()
                    } else {
                        format!("left behind: {}", v["leftovers"])
                    }
                );
                return Ok(());
            }
            (client, v)
        }
    };
    if client.json {
        return print_json(&v);
    }
    print_guest(&v);
    Ok(())
}

fn print_guest(g: &Value) {
    println!("name:      {}", text(&g["name"]));
    println!("backend:   {}", text(&g["backend"]));
    println!("state:     {}", text(&g["state"]));
    println!("upstream:  {}", text(&g["upstream"]));
    println!("data:      {}", text(&g["data_dir"]));
    let t = &g["timings"];
    println!(
        "timings:   spawn {:.1} ms, ready {:.1} ms{}",
        t["spawn_ms"].as_f64().unwrap_or(0.0),
        t["ready_ms"].as_f64().unwrap_or(0.0),
        t["cleanup_ms"]
            .as_f64()
            .map(|c| format!(", cleanup {c:.1} ms"))
            .unwrap_or_default()
    );
    if !g["exit"].is_null() {
        println!("exit:      {}", g["exit"]);
    }
    if !g["report"].is_null() {
        println!(
            "leaks:     {}",
            if g["report"]["clean"] == true {
                "none".to_owned()
            } else {
                g["report"]["leftovers"].to_string()
            }
        );
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn describe_toxic(t: &Value) -> String {
    let attrs = t["attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{} (type {}, stream {}, toxicity {}{}{})",
        text(&t["name"]),
        text(&t["type"]),
        text(&t["stream"]),
        t["toxicity"],
        if attrs.is_empty() { "" } else { ", " },
        attrs
    )
}

fn print_proxy(p: &Value) {
    println!("name:     {}", text(&p["name"]));
    println!("listen:   {}", text(&p["listen"]));
    println!("upstream: {}", text(&p["upstream"]));
    println!("enabled:  {}", p["enabled"].as_bool().unwrap_or(false));
    let toxics = p["toxics"].as_array().cloned().unwrap_or_default();
    if toxics.is_empty() {
        println!("toxics:   none");
    } else {
        println!("toxics:");
        for t in &toxics {
            println!("  {}", describe_toxic(t));
        }
    }
}

fn print_json(v: &Value) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
    Ok(())
}

/// A minimal HTTP/1 client for the API.
struct Client {
    url: String,
    authority: String,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Client, CliError> {
        // TOXIPROXY_URL is honoured too, so scripts written for Toxiproxy keep working.
        let url =
            if args.url == "http://127.0.0.1:8474" && std::env::var_os("BROWNOUT_URL").is_none() {
                std::env::var("TOXIPROXY_URL").unwrap_or_else(|_| args.url.clone())
            } else {
                args.url.clone()
            };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| CliError::Usage(format!("--url {url:?} must start with http://")))?;
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(CliError::Usage(format!(
                "--url {url:?} must be http://host:port"
            )));
        }
        Ok(Client { url, authority })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| CliError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let http = |source| CliError::Http {
            url: self.url.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header(
                "user-agent",
                concat!("brownout-cli/", env!("CARGO_PKG_VERSION")),
            )
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CliError::Usage(format!("bad request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text(&value));
        Err(CliError::Api {
            status: status.as_u16(),
            message: if status == StatusCode::NOT_FOUND && message.is_empty() {
                "not found".into()
            } else {
                message
            },
        })
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| CliError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let (events, writer) = event_file(args.events.as_deref())?;
    // Guests of a brownout that died without cleaning up (killed, or its machine lost).
    for found in crate::vm::resources::sweep() {
        tracing::warn!("removed leftovers of an earlier run: {found}");
    }
    let control = Control::spawn_with(crate::control::Options {
        seed,
        events,
        header_timeout: args.header_timeout,
    });
    if let Some(path) = &args.config {
        let proxies = load_config(path)?;
        let n = proxies.len();
        control.populate(proxies).await?;
        info!(config = %path.display(), proxies = n, "populated proxies from config");
    }
    let api_addr = listener.local_addr().map_err(|source| CliError::Listen {
        addr: addr.clone(),
        source,
    })?;
    let shutdown = shutdown_signal()?;
    info!(
        seed,
        "pass --seed {seed} to repeat this run's random decisions"
    );
    // A plain ready line on stdout, so scripts can start with --port 0 and read the address.
    println!(
        "brownout {} API on http://{api_addr} seed {seed}",
        env!("CARGO_PKG_VERSION")
    );
    api::serve(listener, control.clone(), shutdown).await;
    info!("shutting down");
    let _ = control.shutdown().await;
    drop(control);
    finish_events(writer).await;
    Ok(())
}

type EventWriter = tokio::task::JoinHandle<std::io::Result<()>>;

/// An event sink writing to `path`, if one is given.
fn event_file(
    path: Option<&std::path::Path>,
) -> Result<(Option<crate::proxy::events::EventSink>, Option<EventWriter>), CliError> {
    let Some(path) = path else {
        return Ok((None, None));
    };
    let (sink, writer) = crate::proxy::events::EventSink::default()
        .with_file(path)
        .map_err(|e| CliError::Toxic {
            what: format!("--events {}", path.display()),
            message: e.to_string(),
        })?;
    Ok((Some(sink), Some(writer)))
}

/// Wait until every event is written.
async fn finish_events(writer: Option<EventWriter>) {
    if let Some(writer) = writer
        && let Ok(Err(e)) = writer.await
    {
        tracing::warn!(error = %e, "writing events failed");
    }
}

/// Read a config file: a JSON list of proxies, validated as `/populate` validates.
pub fn load_config(path: &std::path::Path) -> Result<Vec<NewProxy>, CliError> {
    let err = |message: String| CliError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let list: Vec<ProxyInput> = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    list.into_iter()
        .enumerate()
        .map(|(i, p)| NewProxy::from_input(p, Some(i)).map_err(|e| err(e.to_string())))
        .collect()
}

/// Install the Ctrl-C and SIGTERM handlers now, so a signal that arrives right after the
/// ready line is handled; the returned future completes when one arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let handler = |source| CliError::Signal { source };
    let mut term = signal(SignalKind::terminate()).map_err(handler)?;
    let mut int = signal(SignalKind::interrupt()).map_err(handler)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

async fn stdio(args: StdioArgs) -> Result<i32, CliError> {
    let mut inputs = Vec::new();
    for (i, text) in args.toxics.iter().enumerate() {
        let what = format!("--toxic #{}", i + 1);
        let input = serde_json::from_str(text).map_err(|e| CliError::Toxic {
            what: what.clone(),
            message: e.to_string(),
        })?;
        inputs.push((what, input));
    }
    if let Some(path) = &args.toxics_file {
        let what = |i: usize| format!("{} toxic #{}", path.display(), i + 1);
        let text = std::fs::read_to_string(path).map_err(|e| CliError::Toxic {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        let list: Vec<crate::faults::ToxicInput> =
            serde_json::from_str(&text).map_err(|e| CliError::Toxic {
                what: path.display().to_string(),
                message: e.to_string(),
            })?;
        inputs.extend(list.into_iter().enumerate().map(|(i, t)| (what(i), t)));
    }
    let mut specs: Vec<crate::faults::ToxicSpec> = Vec::new();
    for (what, input) in inputs {
        let spec = crate::faults::ToxicSpec::from_input(input)
            .and_then(|s| {
                s.kind.check_transport(crate::faults::Transport::Stdio)?;
                Ok(s)
            })
            .map_err(|e| CliError::Toxic {
                what: what.clone(),
                message: e.to_string(),
            })?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(CliError::Toxic {
                what,
                message: format!("a toxic named {:?} is given twice", spec.name),
            });
        }
        specs.push(spec);
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    info!(
        seed,
        toxics = specs.len(),
        "stdio relay (pass --seed {seed} to repeat this run)"
    );
    let (events, writer) = event_file(args.events.as_deref())?;
    let command = args
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    // With --api the relay is a proxy of a control plane of its own; without, its toxics
    // are fixed and published once.
    let (toxics, stats, events, api) = match &args.api {
        None => {
            let (publish, toxics) = tokio::sync::watch::channel(specs.into());
            // The relay keeps its last value once the sender is gone.
            drop(publish);
            (toxics, Default::default(), events, None)
        }
        Some(addr) => {
            let control = Control::spawn_with_events(seed, events);
            let attached = control.attach("stdio", &command, specs).await?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| CliError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| CliError::Listen {
                addr: addr.clone(),
                source,
            })?;
            eprintln!(
                "brownout {} API on http://{local} seed {seed}",
                env!("CARGO_PKG_VERSION")
            );
            let stop = tokio_util::sync::CancellationToken::new();
            let server = tokio::spawn(api::serve(
                listener,
                control.clone(),
                stop.clone().cancelled_owned(),
            ));
            let sink = Some(control.event_sink());
            (
                attached.toxics,
                attached.stats,
                sink,
                Some((control, stop, server)),
            )
        }
    };
    let status = crate::proxy::stdio::run(
        &args.command,
        crate::proxy::stdio::StdioOptions {
            seed: crate::faults::derive_seed(seed, "stdio"),
            index: 0,
            toxics,
            stats,
            events,
            name: "stdio".into(),
        },
    )
    .await;
    if let Some((control, stop, server)) = api {
        stop.cancel();
        let _ = server.await;
        let _ = control.shutdown().await;
    }
    // Every event is written before brownout exits, whatever became of the relay.
    finish_events(writer).await;
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
