//! Password hashing with argon2id, bounded to one hash per core.
//!
//! A hash costs tens of milliseconds of CPU by design. Running it on the async
//! runtime's workers would stall every other request, and running unbounded many
//! at once would let a burst of logins starve the machine; so hashes run on the
//! blocking pool behind a semaphore with one permit per core.

use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;

/// A real hash of a password nobody knows, computed once and used when the user
/// does not exist, so "no such user" costs the same time as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(format!("{:?}", std::time::Instant::now()).as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Hashes and verifies passwords.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

/// Hashing failed (an internal error, never a wrong password).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    /// At most `concurrency` hashes at a time (0 means one per core).
    pub fn new(concurrency: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = if concurrency == 0 { cores } else { concurrency };
        Self { permits: Arc::new(Semaphore::new(permits)) }
    }

    /// An argon2id PHC string for `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|e| HashError(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await
        .map_err(|e| HashError(e.to_string()))?
    }

    /// Whether `password` matches `hash`; `None` for `hash` checks against a dummy
    /// so the time taken does not reveal whether the user exists.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|e| HashError(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
            let ok = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
            ok && known
        })
        .await
        .map_err(|e| HashError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let hasher = PasswordHasher::new(0);
        let a = hasher.hash("111111".into()).await.expect("hash");
        let b = hasher.hash("111111".into()).await.expect("hash");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(hasher.verify("111111".into(), Some(a.clone())).await.expect("verify"));
        assert!(!hasher.verify("111112".into(), Some(a)).await.expect("verify"));
        assert!(!hasher.verify("111111".into(), None).await.expect("verify"));
        assert!(!hasher.verify("x".into(), Some("not a phc string".into())).await.expect("verify"));
    }
}
