//! Courier's internal contracts: the queue record envelope and the gRPC services
//! between tiers, generated from `proto/*.proto` at build time.
//!
//! Tiers never import each other; they share these types instead, so what crosses a
//! process boundary is always written down in a `.proto` file.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// The record envelope written to the queue topics.
pub mod record {
    tonic::include_proto!("courier.record.v1");

    /// The envelope version this build writes.
    pub const RECORD_VERSION: u32 = 1;
}

/// The logic tier's service.
pub mod logic {
    tonic::include_proto!("courier.logic.v1");
}

/// The connect tier's push service.
pub mod connect {
    tonic::include_proto!("courier.connect.v1");
}

/// A gRPC channel to `host:port` that connects on first use and reconnects after
/// failures, so a tier can start before the tier it calls; `timeout` bounds both
/// connecting and each call.
pub fn lazy_channel(
    addr: &str,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .timeout(timeout)
        .connect_lazy())
}
