//! brownout-mcp-server: a small, real MCP server (rmcp, over stdio) whose tools read and
//! write files under one directory, so a test can check what survived a fault. Used by
//! brownout's tests; handy for trying brownout out.
//!
//! Usage: brownout-mcp-server --root DIR

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
struct Echo {
    text: String,
}

#[derive(Debug, Clone)]
struct Files {
    root: PathBuf,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

impl Files {
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
        let full = self.resolve(&path)?;
        let len = content.len();
        blocking(&path, move || {
            use std::io::Write;
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::File::create(&full)?;
            file.write_all(content.as_bytes())?;
            file.sync_all()
        })
        .await?;
        Ok(format!("wrote {len} bytes to {path}"))
    }

    #[tool(description = "Read a file under the server's root")]
    async fn read_file(
        &self,
        Parameters(ReadFile { path }): Parameters<ReadFile>,
    ) -> Result<String, ErrorData> {
        let full = self.resolve(&path)?;
        blocking(&path, move || std::fs::read_to_string(full)).await
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = match args.iter().position(|a| a == "--root") {
        Some(i) => PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--root needs a directory"))?,
        ),
        None => anyhow::bail!("usage: brownout-mcp-server --root DIR"),
    };
    anyhow::ensure!(root.is_dir(), "--root {}: not a directory", root.display());
    let server = Files {
        root,
        tool_router: Files::tool_router(),
    };
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
