//! A TCP proxy a test can cut and mend, standing between a tier and a backend
//! (PostgreSQL, Redis) to make the backend unreachable without stopping the
//! shared service other tests use. Cut, it closes every connection it carries
//! and closes new ones as soon as they arrive; mended, it forwards again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Proxy {
    /// A proxy to `target` on a free loopback port, open or cut from the start.
    pub async fn start(target: SocketAddr, open: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (sender, state) = watch::channel(open);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*state.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, target, state.clone()));
            }
        });
        Self { addr, open: sender }
    }

    /// Cuts (false) or mends (true) the way to the backend.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut state: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = state.wait_for(|open| !open) => {}
    }
}
