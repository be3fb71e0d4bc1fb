//! Courier's internal contracts: the queue record envelope and the gRPC services
//! between tiers, generated from `proto/*.proto` at build time.
//!
//! Tiers never import each other; they share these types instead, so what crosses a
//! process boundary is always written down in a `.proto` file. Every client and
//! server of those services is built here ([`logic_client`], [`connect_client`],
//! [`logic_server`], [`connect_server`]) so that two rules hold on every hop:
//!
//! - **One message size limit** ([`MAX_GRPC_MESSAGE_BYTES`]) for encoding and
//!   decoding alike, far above what a batch may carry ([`BATCH_BYTES`]): a push
//!   batch or history page is cut by bytes before it is sent, so a batch that
//!   fits the rules always fits the transport (tonic's default decode limit is
//!   4 MiB, and 512 frames of a 4,000-byte body of control characters, escaped
//!   to 24 KB each, used to exceed it and be dropped).
//! - **Callers prove they belong** ([`InternalAuth`]): with a shared secret
//!   configured, a call without it is refused as UNAUTHENTICATED before it
//!   reaches the service, so nobody who can reach an internal port can forge a
//!   push or wipe presence.

#![allow(missing_docs, unreachable_pub, clippy::all)]

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub mod balance;

/// The record envelope written to the queue topics.
pub mod record {
    tonic::include_proto!("courier.record.v1");

    /// The envelope version this build writes.
    pub const RECORD_VERSION: u32 = 2;
}

/// The logic tier's service.
pub mod logic {
    tonic::include_proto!("courier.logic.v1");
}

/// The connect tier's push service.
pub mod connect {
    tonic::include_proto!("courier.connect.v1");
}

/// The largest gRPC message any tier encodes or decodes.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What one push call or one history page carries at most, in frame bytes;
/// well below [`MAX_GRPC_MESSAGE_BYTES`] so the envelope always fits.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Most session tokens one `CheckSessions` call may ask about; a connect node
/// splits its connections' tokens into calls of this size.
pub const MAX_TOKENS_PER_SESSION_CHECK: usize = 1_000;

/// The metadata key carrying the internal secret.
pub const SECRET_HEADER: &str = "x-courier-internal-secret";

/// How tiers prove themselves to each other: a shared secret sent with every
/// call, and optionally mutual TLS. Without either, internal calls are open (a
/// single trusted host, or tests).
#[derive(Clone, Default)]
pub struct InternalAuth {
    secret: Option<Arc<str>>,
    tls: Option<InternalTls>,
    /// Called for every refused call (the server side counts them).
    on_refused: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for InternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        f.debug_struct("InternalAuth").field("secret", &self.secret.is_some()).field("tls", &self.tls).finish()
    }
}

/// Mutual TLS between tiers: every tier presents its certificate (valid for
/// `domain`) and trusts only certificates signed by `ca`, as a server and as a
/// client, so a caller without such a certificate cannot even connect.
#[derive(Clone)]
pub struct InternalTls {
    identity: tonic::transport::Identity,
    ca: tonic::transport::Certificate,
    domain: String,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTls").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl InternalTls {
    /// From PEM: this tier's certificate chain and key, the CA every tier's
    /// certificate is signed by, and the name the certificates are valid for.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8], domain: &str) -> Self {
        Self {
            identity: tonic::transport::Identity::from_pem(cert, key),
            ca: tonic::transport::Certificate::from_pem(ca),
            domain: domain.to_owned(),
        }
    }

    fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    fn client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(self.domain.clone())
    }
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSecret;

impl std::fmt::Display for InvalidSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the internal secret must be 16 to 256 visible ASCII characters")
    }
}

impl std::error::Error for InvalidSecret {}

impl InternalAuth {
    /// No secret, no TLS: every internal call is let through.
    pub fn open() -> Self {
        Self::default()
    }

    /// `secret`, which must be 16–256 visible ASCII characters (it travels as
    /// gRPC metadata).
    pub fn new(secret: &str) -> Result<Self, InvalidSecret> {
        let visible = secret.bytes().all(|b| b.is_ascii_graphic());
        if !(16..=256).contains(&secret.len()) || !visible {
            return Err(InvalidSecret);
        }
        Ok(Self { secret: Some(secret.into()), ..Self::default() })
    }

    /// A fresh random secret (for one process that runs every tier).
    pub fn random() -> Self {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(64);
        for _ in 0..4 {
            let _ = write!(text, "{:016x}", rand::random::<u64>());
        }
        Self { secret: Some(text.into()), ..Self::default() }
    }

    /// The same, over mutual TLS.
    pub fn with_tls(mut self, tls: InternalTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same, calling `counter` for every call it refuses.
    pub fn counting_refusals(mut self, counter: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(counter));
        self
    }

    /// Whether `presented` is the secret, in time independent of where they differ.
    fn admits(&self, presented: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq as _;
        match (&self.secret, presented) {
            (None, _) => true,
            (Some(secret), Some(presented)) => bool::from(secret.as_bytes().ct_eq(presented)),
            (Some(_), None) => false,
        }
    }

    /// A server for internal services: over TLS when configured.
    pub fn server(&self) -> Result<tonic::transport::Server, tonic::transport::Error> {
        let builder = tonic::transport::Server::builder();
        match &self.tls {
            Some(tls) => builder.tls_config(tls.server()),
            None => Ok(builder),
        }
    }
}

/// Adds the secret to every outgoing call.
#[derive(Clone, Debug)]
pub struct AddSecret(Option<MetadataValue<Ascii>>);

impl Interceptor for AddSecret {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(SECRET_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// Refuses incoming calls without the secret.
#[derive(Clone, Debug)]
pub struct CheckSecret(InternalAuth);

impl Interceptor for CheckSecret {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes());
        if self.0.admits(presented) {
            return Ok(request);
        }
        if let Some(count) = &self.0.on_refused {
            count();
        }
        Err(tonic::Status::unauthenticated("internal call without the cluster's secret"))
    }
}

fn add_secret(secret: &InternalAuth) -> AddSecret {
    // `new` admits only visible ASCII, which is valid metadata.
    AddSecret(secret.secret.as_deref().and_then(|s| MetadataValue::try_from(s).ok()))
}

/// A client of logic's service.
pub type LogicClient = logic::logic_client::LogicClient<InterceptedService<balance::Bounded, AddSecret>>;
/// A client of connect's push service.
pub type ConnectClient = connect::connect_client::ConnectClient<InterceptedService<Channel, AddSecret>>;
/// logic's service as served.
pub type LogicServer<T> = InterceptedService<logic::logic_server::LogicServer<T>, CheckSecret>;
/// connect's push service as served.
pub type ConnectServer<T> = InterceptedService<connect::connect_server::ConnectServer<T>, CheckSecret>;

/// A client of logic over `channel`; `timeout` bounds each call, including
/// the time it waits for an instance.
pub fn logic_client(channel: Channel, timeout: std::time::Duration, secret: &InternalAuth) -> LogicClient {
    let channel = balance::Bounded::new(channel, timeout);
    logic::logic_client::LogicClient::with_interceptor(channel, add_secret(secret))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

/// A client of the logic tier at `addr` (`host:port`), connecting on first
/// use; `timeout` bounds each call. An address that is not one is an error
/// now rather than at the first call.
pub fn logic_at(addr: &str, timeout: std::time::Duration, secret: &InternalAuth) -> Result<LogicClient, BadAddress> {
    // Each call's deadline is the client's (see `logic_client`), not the channel's.
    let endpoint = endpoint(addr, timeout, secret).map_err(|_| BadAddress(addr.to_owned()))?;
    Ok(logic_client(endpoint.connect_lazy(), timeout, secret))
}

/// A client of every logic instance in `instances` (a discovery watch),
/// balancing calls over them and following the set as it changes.
pub fn logic_over(
    instances: tokio::sync::watch::Receiver<courier_discovery::Instances>,
    timeout: std::time::Duration,
    secret: &InternalAuth,
) -> LogicClient {
    logic_client(balance::balanced_channel(instances, timeout, secret), timeout, secret)
}

/// An internal address that cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host:port address")]
pub struct BadAddress(pub String);

pub fn connect_client(channel: Channel, secret: &InternalAuth) -> ConnectClient {
    connect::connect_client::ConnectClient::with_interceptor(channel, add_secret(secret))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

pub fn logic_server<T: logic::logic_server::Logic>(service: T, secret: &InternalAuth) -> LogicServer<T> {
    let server = logic::logic_server::LogicServer::new(service)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    InterceptedService::new(server, CheckSecret(secret.clone()))
}

pub fn connect_server<T: connect::connect_server::Connect>(service: T, secret: &InternalAuth) -> ConnectServer<T> {
    let server = connect::connect_server::ConnectServer::new(service)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    InterceptedService::new(server, CheckSecret(secret.clone()))
}

/// A gRPC channel to `host:port` that connects on first use and reconnects after
/// failures, so a tier can start before the tier it calls; `timeout` bounds both
/// connecting and each call. Over TLS when `auth` has it.
pub fn lazy_channel(
    addr: &str,
    timeout: std::time::Duration,
    auth: &InternalAuth,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(endpoint(addr, timeout, auth)?.timeout(timeout).connect_lazy())
}

/// How an internal service at `addr` is dialled: over TLS when `auth` has
/// it, connecting within `timeout` (at most 5 s); calls are not bounded here.
fn endpoint(
    addr: &str,
    timeout: std::time::Duration,
    auth: &InternalAuth,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let scheme = if auth.tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)));
    if let Some(tls) = &auth.tls {
        endpoint = endpoint.tls_config(tls.client())?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records already in Kafka topics are read by every later build: the
    /// field numbers and enum codes of `record.proto` are pinned by bytes,
    /// not by a round trip through the same generated code.
    #[test]
    fn records_keep_their_field_numbers_and_codes() {
        use prost::Message as _;
        use record::{MessageKind, MessageRecord};
        assert_eq!((MessageKind::Unspecified as i32, MessageKind::Room as i32, MessageKind::Private as i32), (0, 1, 2));
        let record = MessageRecord {
            version: 2,
            msg_id: 5,
            kind: MessageKind::Private as i32,
            room_id: 6,
            to_user_id: 7,
            from_user_id: 8,
            admitted_ms: 9,
            sender_copy: true,
            admitted_us: 10,
            ..MessageRecord::default()
        };
        // (field << 3 | varint), value: version 1, msg_id 2, kind 3, room_id 4,
        // to_user_id 5, from_user_id 7, admitted_ms 10, sender_copy 12, admitted_us 13.
        let expected = [0x08, 2, 0x10, 5, 0x18, 2, 0x20, 6, 0x28, 7, 0x38, 8, 0x50, 9, 0x60, 1, 0x68, 10];
        assert_eq!(record.encode_to_vec(), expected);
        let text = MessageRecord {
            to_user_name: "b".into(),
            from_user_name: "a".into(),
            body: "x".into(),
            client_msg_id: "c".into(),
            ..MessageRecord::default()
        };
        // (field << 3 | length-delimited), length, bytes: to_user_name 6,
        // from_user_name 8, body 9, client_msg_id 11.
        assert_eq!(text.encode_to_vec(), [0x32, 1, b'b', 0x42, 1, b'a', 0x4a, 1, b'x', 0x5a, 1, b'c']);
    }

    #[test]
    fn secrets_are_checked_whole_and_never_printed() {
        assert!(InternalAuth::new("short").is_err());
        assert!(InternalAuth::new("with a space in it here").is_err());
        let secret = InternalAuth::new("0123456789abcdef").expect("valid");
        assert!(secret.admits(Some(b"0123456789abcdef")));
        assert!(!secret.admits(Some(b"0123456789abcdeF")));
        assert!(!secret.admits(Some(b"0123456789abcde")));
        assert!(!secret.admits(None));
        assert!(InternalAuth::open().admits(None));
        assert!(!format!("{secret:?}").contains("0123"));
        let (a, b) = (InternalAuth::random(), InternalAuth::random());
        assert!(a.secret.is_some() && a.secret != b.secret);
        assert!(InternalAuth::new(a.secret.as_deref().unwrap_or_default()).is_ok(), "a random secret is valid");
    }
}
