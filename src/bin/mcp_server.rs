//! brownout-mcp-server: brownout's own MCP server ([`brownout::mcp::server`]) as a program
//! of its own, for guests (built static) and for trying brownout out.
//!
//! Usage: brownout-mcp-server --root DIR [--http ADDR]

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| -> anyhow::Result<Option<&String>> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(Some(
                args.get(i + 1)
                    .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?,
            )),
            None => Ok(None),
        }
    };
    let Some(root) = value("--root")? else {
        anyhow::bail!("usage: brownout-mcp-server --root DIR [--http ADDR]");
    };
    brownout::mcp::server::run(root.into(), value("--http")?.map(String::as_str)).await
}
