//! Internal calls over mutual TLS with the shared secret: only a caller with a
//! certificate of the cluster's CA connects, and only one that also presents
//! the secret is served. A real gRPC server on loopback.

use std::time::Duration;

use courier_proto::connect::connect_server::Connect;
use courier_proto::connect::{PushReply, PushRequest};
use courier_proto::{InternalAuth, InternalTls};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// A push service that answers how many frames it got.
struct Counter;

#[tonic::async_trait]
impl Connect for Counter {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        Ok(Response::new(PushReply { queued: request.into_inner().deliveries.len() as u64, closed: 0 }))
    }
}

fn tls(pki: &courier_testkit::Pki) -> InternalTls {
    InternalTls::from_pem(pki.cert.as_bytes(), pki.key.as_bytes(), pki.ca.as_bytes(), "courier-internal")
}

async fn serve(auth: &InternalAuth, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let mut server = auth.server().expect("a TLS server");
    tokio::spawn(server.add_service(courier_proto::connect_server(Counter, auth)).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        stop.clone().cancelled_owned(),
    ));
    addr
}

async fn call(addr: &str, auth: &InternalAuth) -> Result<u64, Status> {
    let channel = courier_proto::lazy_channel(addr, Duration::from_secs(5), auth).expect("channel");
    let request = PushRequest { deliveries: vec![Default::default(); 2], revoked_tokens: Vec::new() };
    Ok(courier_proto::connect_client(channel, auth).push(request).await?.into_inner().queued)
}

#[tokio::test]
async fn only_tiers_with_the_cas_certificate_and_the_secret_are_served() {
    let stop = CancellationToken::new();
    let pki = courier_testkit::Pki::new("courier-internal");
    let secret = "a-secret-shared-by-every-tier";
    let cluster = InternalAuth::new(secret).expect("secret").with_tls(tls(&pki));
    let addr = serve(&cluster, &stop).await;

    assert_eq!(call(&addr, &cluster).await.expect("a tier of the cluster is served"), 2);

    let plain = InternalAuth::new(secret).expect("secret");
    assert!(call(&addr, &plain).await.is_err(), "plain text is not spoken");
    let stranger =
        InternalAuth::new(secret).expect("secret").with_tls(tls(&courier_testkit::Pki::new("courier-internal")));
    assert!(call(&addr, &stranger).await.is_err(), "a certificate of another CA cannot connect");
    let no_secret = InternalAuth::open().with_tls(tls(&pki));
    let refused = call(&addr, &no_secret).await.expect_err("the secret is still required");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    stop.cancel();
}
