//! Helpers shared by Courier's tests.
//!
//! - [`service`]: where a production backend runs (set by `scripts/services`). A
//!   test whose service is absent says so on stderr instead of passing silently,
//!   and fails when `COURIER_REQUIRE_SERVICES=1` (as in CI), so a backend can
//!   never skip its tests unnoticed.
//! - [`tool`]: a program a test runs (`promtool`), found the same way.
//! - [`eventually`]: waits for a condition that becomes true through asynchronous
//!   work, polling it until a deadline, instead of sleeping a fixed time.
//! - [`unique`]: a number unique to this test run, to namespace shared services.
//! - [`Pki`]: a certificate authority and a certificate it signed, made on the
//!   spot, for tests of TLS between tiers.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The program `name` from `PATH` (such as `promtool`), or `None` (announced)
/// if it is not installed; like [`service`], a missing tool fails the run
/// when `COURIER_REQUIRE_SERVICES=1`.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var("COURIER_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{name} is not installed but COURIER_REQUIRE_SERVICES=1 (scripts/test installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}

/// The address in environment variable `var`, or `None` (announced) if unset.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("COURIER_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but COURIER_REQUIRE_SERVICES=1: start them with scripts/services up"
            );
            eprintln!("SKIPPED: {var} is not set (run scripts/services up and export its output)");
            None
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `patience`.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {patience:?} waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// A number unique to this test run and process (milliseconds plus pid), below
/// 10^12 so callers can scale it into ids. Two calls in one millisecond (tests
/// run in parallel threads) get different numbers: a call takes the next
/// millisecond's slot after the last one handed out.
pub fn unique() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let now = (ms % 1_000_000_000) * 1000 + u64::from(std::process::id() % 1000);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let previous = LAST.fetch_update(ordering, ordering, |last| Some(now.max(last + 1000))).unwrap_or(now);
    now.max(previous + 1000)
}

/// A throwaway certificate authority and one certificate it signed, in PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A new CA and a certificate for `domain`, valid for servers and clients
    /// alike (mutual TLS).
    pub fn new(domain: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
        let mut params = CertificateParams::new(vec![domain.to_owned()]).expect("certificate parameters");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("certificate");
        Self { ca: ca.pem(), cert: cert.pem(), key: key.serialize_pem() }
    }
}
