//! code-interpreter: a stateful, sandboxed Python execution API.
//!
//! The binary has two jobs: `serve` runs the HTTP gateway that hands each user
//! their own IPython kernel in a rootless Podman container, and `token` prints
//! the API token that clients must send as `X-Auth-Token`. `healthcheck` is the
//! gateway container's health check (its image has no curl). `bench` measures
//! a running gateway (see docs/benchmarks.md); it is built with the `bench`
//! feature (on by default), which the installed gateway leaves out. `mcp` is a
//! Model Context Protocol server on stdio that forwards to a running gateway's
//! `/mcp`, for desktop clients that launch their tools as commands.

mod api;
mod auth;
#[cfg(feature = "bench")]
mod bench;
mod capacity;
mod config;
mod front;
mod host;
mod kernel;
mod mcp;
mod metrics;
mod net_guard;
mod pool;
mod random;
mod server;
mod sessions;
mod shutdown;
mod state;
mod transfer;
mod worker;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

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
    /// An MCP server on stdin/stdout that forwards to a running gateway's /mcp
    /// (for desktop clients that launch tools as commands).
    Mcp(mcp::stdio::Args),
    /// Exit 0 if the gateway at the configured address answers `GET /health` with 200.
    Healthcheck,
    /// Measure a gateway under the original's workload (and a jupyter_client baseline).
    #[cfg(feature = "bench")]
    Bench(Box<bench::BenchArgs>),
    /// Not in this build (see `NO_BENCH`).
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `bench` answers in a gateway built without the `bench` feature.
#[cfg(not(feature = "bench"))]
const NO_BENCH: &str = "this code-interpreter was built without the benchmark \
    (--no-default-features, as installed); build it with `cargo build --release` \
    and run target/release/code-interpreter bench, or use scripts/bench.sh";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The stdio MCP server needs no configuration: it talks to a gateway by URL.
    if let Command::Mcp(args) = cli.command {
        return mcp::stdio::run(args);
    }
    let config = config::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Token => {
            println!("{}", auth::Token::load_or_create(&config)?.reveal());
            Ok(())
        }
        Command::Healthcheck => healthcheck(config.server.listen),
        Command::Mcp(_) => unreachable!("handled above"),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(*args, || {
            Ok(auth::Token::load_or_create(&config)?.reveal().to_string())
        }),
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => anyhow::bail!(NO_BENCH),
        Command::Serve => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        // rmcp logs every MCP message at info.
                        .unwrap_or_else(|_| "info,rmcp=warn".into()),
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

/// GETs `/health` of the gateway listening on `listen` (a wildcard address
/// means this host) over a plain `TcpStream` and checks for status 200.
fn healthcheck(listen: SocketAddr) -> anyhow::Result<()> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server may answer and close as soon as it has the request.
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    let status_line = status_line.trim_end();
    anyhow::ensure!(
        status_line.split(' ').nth(1) == Some("200"),
        "http://{addr}/health answered {status_line:?}"
    );
    println!("healthy: http://{addr}/health");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A one-shot server on a free loopback port answering with `status_line`.
    fn serve_once(status_line: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /health HTTP/1.1\r\n"));
            write!(conn, "{status_line}\r\ncontent-length: 0\r\n\r\n").unwrap();
        });
        addr
    }

    #[test]
    fn healthcheck_accepts_200_only() {
        assert!(healthcheck(serve_once("HTTP/1.1 200 OK")).is_ok());
        assert!(healthcheck(serve_once("HTTP/1.1 503 Service Unavailable")).is_err());
    }

    #[test]
    fn healthcheck_maps_wildcard_to_loopback_and_fails_when_nothing_listens() {
        let port = serve_once("HTTP/1.1 200 OK").port();
        assert!(healthcheck(SocketAddr::from(([0, 0, 0, 0], port))).is_ok());
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(healthcheck(closed).is_err());
    }
}
