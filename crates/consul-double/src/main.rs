//! `consul-double`: the Consul test double as a process, for local clusters
//! (`COURIER_DISCOVERY=consul scripts/cluster up`) when no Consul agent exists.

use clap::Parser;

/// A stand-in for a Consul agent's HTTP API (the endpoints Courier uses).
#[derive(Debug, Parser)]
#[command(name = "consul-double")]
struct Args {
    /// Address to serve the HTTP API on.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: std::net::SocketAddr,
    /// Refuse requests that do not carry this ACL token.
    #[arg(long, env = "CONSUL_DOUBLE_TOKEN")]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let double = courier_consul_double::ConsulDouble::serve(listener, args.token)?;
    println!("consul double listening on http://{}", double.addr());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    double.stop().await;
    Ok(())
}
