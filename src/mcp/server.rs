//! brownout's own MCP server: a small, real MCP server (rmcp) whose tools read and write
//! files under one directory, so what survived a fault can be checked. `brownout
//! mcp-server` and `brownout-mcp-server` run it; the tests, the guests and `brownout demo`
//! use it.
//!
//! Without an HTTP address it speaks stdio. With one, it serves Streamable HTTP there (any
//! path) and prints `brownout-mcp-server listening on ADDR` to stderr once it accepts.

use std::path::{Component, Path, PathBuf};

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct WriteFile {
    /// Path under the server's root.
    path: String,
    content: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct ReadFile {
    /// Path under the server's root.
    path: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Sleep {
    /// How long to wait before answering, in milliseconds (at most 600000).
    ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Allocate {
    /// MiB to allocate, touch and keep until the server exits (at most 4096).
    mib: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Echo {
    text: String,
}

#[derive(Debug, Clone)]
struct Files {
    root: PathBuf,
    /// What `allocate` keeps.
    held: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

impl Files {
    /// Write `content` to `path` (after what is there, with `append`), synced; its length.
    async fn put(&self, path: &str, content: String, append: bool) -> Result<usize, ErrorData> {
        let full = self.resolve(path)?;
        let len = content.len();
        blocking(path, move || {
            use std::io::Write;
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .append(append)
                .truncate(!append)
                .open(&full)?;
            file.write_all(content.as_bytes())?;
            file.sync_all()
        })
        .await?;
        Ok(len)
    }

    /// A path under the root; anything that would leave it is refused.
    fn resolve(&self, path: &str) -> Result<PathBuf, ErrorData> {
        let p = Path::new(path);
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(ErrorData::invalid_params(
                format!("{path:?} is not a plain relative path"),
                None,
            ));
        }
        Ok(self.root.join(p))
    }
}

#[tool_router]
impl Files {
    #[tool(
        description = "Write a file under the server's root, replacing it; synced before the reply"
    )]
    async fn write_file(
        &self,
        Parameters(WriteFile { path, content }): Parameters<WriteFile>,
    ) -> Result<String, ErrorData> {
        let len = self.put(&path, content, false).await?;
        Ok(format!("wrote {len} bytes to {path}"))
    }

    #[tool(
        description = "Append to a file under the server's root, making it if need be; synced before the reply"
    )]
    async fn append_file(
        &self,
        Parameters(WriteFile { path, content }): Parameters<WriteFile>,
    ) -> Result<String, ErrorData> {
        let len = self.put(&path, content, true).await?;
        Ok(format!("appended {len} bytes to {path}"))
    }

    #[tool(description = "Read a file under the server's root")]
    async fn read_file(
        &self,
        Parameters(ReadFile { path }): Parameters<ReadFile>,
    ) -> Result<String, ErrorData> {
        let full = self.resolve(&path)?;
        blocking(&path, move || std::fs::read_to_string(full)).await
    }

    #[tool(description = "Wait, then answer: a call that is still running when a fault hits")]
    async fn sleep(&self, Parameters(Sleep { ms }): Parameters<Sleep>) -> String {
        let ms = ms.min(600_000);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "Allocate memory and keep it: a server that runs out of memory on demand")]
    fn allocate(&self, Parameters(Allocate { mib }): Parameters<Allocate>) -> String {
        let mib = mib.min(4096);
        // Every page written, so the memory is really used (and counted against limits).
        let block = vec![0x5a_u8; (mib as usize) << 20];
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.push(block);
        let total: usize = held.iter().map(Vec::len).sum();
        format!("holding {} MiB", total >> 20)
    }

    #[tool(description = "Return the text unchanged")]
    fn echo(&self, Parameters(Echo { text }): Parameters<Echo>) -> String {
        text
    }
}

/// File work off the runtime's threads; errors name the path.
async fn blocking<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ErrorData> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        .map_err(|e| ErrorData::internal_error(format!("{path}: {e}"), None))
}

#[tool_handler]
impl ServerHandler for Files {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Reads and writes files under one directory.")
    }
}

/// Serve the tools on files under `root`: over stdio, or Streamable HTTP on `http`. Returns
/// when the client goes away (stdio) or on SIGTERM.
pub async fn run(root: PathBuf, http: Option<&str>) -> anyhow::Result<()> {
    anyhow::ensure!(root.is_dir(), "--root {}: not a directory", root.display());
    let server = Files {
        root,
        held: Default::default(),
        tool_router: Files::tool_router(),
    };
    // SIGTERM ends the server cleanly; as PID 1 of a guest's namespace it would otherwise
    // ignore it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let serve = async {
        match http {
            Some(addr) => serve_http(server, addr).await,
            None => {
                let running = server.serve(rmcp::transport::stdio()).await?;
                running.waiting().await?;
                Ok(())
            }
        }
    };
    tokio::select! {
        r = serve => r,
        _ = term.recv() => Ok(()),
    }
}

async fn serve_http(server: Files, addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--http {addr}: {e}"))?;
    eprintln!(
        "brownout-mcp-server listening on {}",
        listener.local_addr()?
    );
    serve_on(server, listener, std::future::pending()).await?;
    Ok(())
}

/// Serve the tools on files under `root` over Streamable HTTP on `listener`, in this
/// process, until `shutdown` completes; then every connection is closed. The scenario
/// runner's embedded target.
pub async fn serve_http_on(
    root: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let server = Files {
        root,
        held: Default::default(),
        tool_router: Files::tool_router(),
    };
    serve_on(server, listener, shutdown).await
}

/// Streamable HTTP with sessions. Any Host is accepted: in a guest the server
/// is reached through a proxy or a forwarded port, under an address it cannot know.
async fn serve_on(
    server: Files,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::{rt::TokioIo, service::TowerToHyperService};
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors (or memory) for now: the connection waits in the
            // backlog until some close, and the server keeps serving the ones it has.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) || e.kind() == std::io::ErrorKind::ConnectionAborted =>
            {
                eprintln!("brownout-mcp-server: accept: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        // Finished connections are reaped as new ones come, so the set stays small.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
