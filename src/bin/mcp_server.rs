//! brownout-mcp-server: brownout's own MCP server ([`brownout::mcp::server`]) as a program
//! of its own, for guests (built static) and for trying brownout out.
//!
//! Usage: brownout-mcp-server --root DIR [--http ADDR]
//!        brownout-mcp-server --hold-memory MIB
//!
//! `--hold-memory` is no server: it takes MIB MiB, writes every page, prints `holding MIB
//! MiB` and keeps it until killed: the memory pressure a scenario puts on a guest.

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
    if let Some(mib) = value("--hold-memory")? {
        let mib: usize = mib
            .parse()
            .map_err(|_| anyhow::anyhow!("--hold-memory: {mib:?} is not a number of MiB"))?;
        let held = vec![0x5a_u8; mib << 20];
        println!("holding {mib} MiB");
        std::hint::black_box(&held);
        loop {
            std::thread::park();
        }
    }
    let Some(root) = value("--root")? else {
        anyhow::bail!("usage: brownout-mcp-server --root DIR [--http ADDR]");
    };
    brownout::mcp::server::run(root.into(), value("--http")?.map(String::as_str)).await
}
