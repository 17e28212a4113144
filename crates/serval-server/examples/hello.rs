//! The HTTP ceiling for `bench/load.sh`: the same axum + tokio stack as `serval serve`, answering
//! every POST with a small fixed JSON body (no parsing, no model).
//!
//! ```sh
//! cargo run --release -p serval-server --example hello -- --host 127.0.0.1 --port 8080
//! ```
//!
//! Prints `hello listening http=<addr>` once bound; port 0 picks a free port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;

/// Roughly what Serval answers for one `breast_cancer_lr` instance (label + two probabilities).
const BODY: &str =
    r#"{"predictions":[{"key":"0","label":1,"probabilities":[0.0123456789,0.987654321]}]}"#;

/// Reads the whole request body (as a real handler must) and answers the fixed JSON.
async fn predict(body: Bytes) -> impl IntoResponse {
    std::hint::black_box(body.len());
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

fn parse_args() -> Result<SocketAddr, String> {
    let mut host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut port: u16 = 8080;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--host" => host = value()?.parse().map_err(|e| format!("--host: {e}"))?,
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "-h" | "--help" => {
                println!("usage: hello [--host ADDR] [--port PORT]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(SocketAddr::new(host, port))
}

fn main() -> std::process::ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("hello: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Same runtime shape as `serval serve`: multi-threaded, one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hello: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: std::io::Result<()> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("hello listening http={}", listener.local_addr()?);
        let app = Router::new()
            .route("/", post(predict))
            .fallback(post(predict));
        // No graceful shutdown: the benchmark stops it with SIGTERM, which ends it at once.
        axum::serve(listener, app).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
