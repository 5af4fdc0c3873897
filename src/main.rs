use std::process::ExitCode;

use brownout::cli::{self, Cli, Command};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // In stdio mode stderr is the agent's, and the demo speaks for itself: say only what
    // matters unless asked for more.
    let level = match cli.command {
        Command::Stdio(_) => "warn",
        #[cfg(feature = "rmcp")]
        Command::McpServer { .. } => "warn",
        // The history records every failed call and step; the proxies' and the MCP
        // client's own logs of them would bury the progress lines (and the demo's).
        #[cfg(feature = "rmcp")]
        Command::Run { .. } | Command::Demo { .. } => "error,rmcp=off",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
