//! `mock-upstream --listen 127.0.0.1:PORT` (default 127.0.0.1:9100): serve the
//! mock OpenAI/Anthropic API, with `GET /__mock/requests`, `POST /__mock/clear`
//! and `GET /__mock/health` control endpoints.

use std::net::SocketAddr;
use std::process::ExitCode;

use mock_upstream::{MockState, router, serve};

const USAGE: &str = "usage: mock-upstream [--listen ADDR]   (default 127.0.0.1:9100)";

fn parse_args() -> Result<SocketAddr, String> {
    let mut listen = String::from("127.0.0.1:9100");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            listen = v.to_owned();
        } else if arg == "-h" || arg == "--help" {
            return Err(String::new());
        } else {
            return Err(format!("unknown argument: {arg}"));
        }
    }
    listen
        .parse()
        .map_err(|e| format!("invalid --listen address {listen:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("mock-upstream: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!("mock-upstream listening on http://{local}");
    let app = router(MockState::new());
    tokio::select! {
        _ = serve(listener, app) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}
