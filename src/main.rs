//! code-interpreter: a stateful, sandboxed Python execution API.
//!
//! The binary has two jobs: `serve` runs the HTTP gateway that hands each user
//! their own IPython kernel in a rootless Podman container, and `token` prints
//! the API token that clients must send as `X-Auth-Token`.

mod api;
mod auth;
mod config;
mod host;
mod kernel;
mod metrics;
mod pool;
mod random;
mod server;
mod sessions;
mod state;
mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "code-interpreter", version, about)]
struct Cli {
    /// Path of the configuration file (TOML). Built-in defaults apply when absent.
    #[arg(long, global = true, env = "CODE_INTERPRETER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP gateway.
    Serve,
    /// Print the API token (creating it on first use).
    Token,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Token => {
            println!("{}", auth::Token::load_or_create(&config)?.reveal());
            Ok(())
        }
        Command::Serve => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(server::run(config))
        }
    }
}
