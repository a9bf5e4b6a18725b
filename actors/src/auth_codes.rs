//! JT/T 808 authentication codes, kept durably per device.
//!
//! A terminal registers once (0x0100), keeps the code the platform issued (0x8100) in its
//! flash, and from then on only authenticates (0x0102) with it, across reconnects and hub
//! restarts. A code is written before the 0x8100 that hands it out is sent.
//!
//! Single-node mode keeps the codes in the node's redb database (table `jt808_auth_codes`,
//! IMEI -> code). Cluster mode keeps them in the shared Redis (string key `authcode:{imei}`,
//! see `cluster::redis::Keys`), because a terminal registered at one node may authenticate at
//! any other; there a code is as durable as that Redis's persistence makes it. Whatever the
//! store, one piece of code compares a presented code with the stored one and turns the
//! outcome into an [`AuthVerdict`], so both modes decide alike.

use std::sync::Arc;

use deadpool_redis::redis::AsyncCommands;
use deadpool_redis::Pool;
use iothub::channel::AuthVerdict;
use iothub::imei::Imei;
use redb::{ReadableDatabase, TableDefinition};

use crate::cluster::redis::Keys;
use crate::cluster::redis::{report_failure, RedisCause};
use crate::storage::{Storage, StoreError};

pub(crate) const AUTH_CODES: TableDefinition<&str, &str> = TableDefinition::new("jt808_auth_codes");

/// Longest code stored: JT/T 808 codes travel in one 0x8100 body; longer ones are refused.
pub const MAX_CODE_LEN: usize = 256;

/// Cheap clonable handle to the stored authentication codes of either mode.
#[derive(Clone)]
pub struct AuthCodes {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(Arc<Storage>),
    Redis { pool: Pool, keys: Keys },
}

impl AuthCodes {
    /// The codes inside the node's embedded database (single-node mode).
    pub fn open(storage: Arc<Storage>) -> AuthCodes {
        AuthCodes {
            backend: Backend::Embedded(storage),
        }
    }

    /// The codes in the cluster's shared Redis (cluster mode).
    pub fn redis(pool: Pool, keys: Keys) -> AuthCodes {
        AuthCodes {
            backend: Backend::Redis { pool, keys },
        }
    }

    /// Stores (or replaces) the code of a device; durable when it returns `Ok`.
    pub async fn store(&self, imei: Imei, code: String) -> Result<(), StoreError> {
        if code.len() > MAX_CODE_LEN {
            return Err(StoreError(format!(
                "authentication code of {} bytes exceeds {MAX_CODE_LEN}",
                code.len()
            )));
        }
        match &self.backend {
            Backend::Embedded(storage) => {
                let storage = storage.clone();
                blocking(move || {
                    storage.observe((|| -> Result<(), StoreError> {
                        let txn = storage.db()?.begin_write()?;
                        {
                            let mut table = txn.open_table(AUTH_CODES)?;
                            table.insert(imei.as_str(), code.as_str())?;
                        }
                        txn.commit()?;
                        Ok(())
                    })())
                })
                .await
            }
            Backend::Redis { pool, keys } => {
                let stored: Result<(), RedisCause> = async {
                    let mut conn = pool.get().await?;
                    let () = conn.set(keys.auth_code(imei), code).await?;
                    Ok(())
                }
                .await;
                stored.map_err(|e| StoreError(report_failure("auth_store", e)))
            }
        }
    }

    /// The stored code of a device, if any.
    pub async fn get(&self, imei: Imei) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Embedded(storage) => {
                let storage = storage.clone();
                blocking(move || {
                    storage.observe((|| -> Result<Option<String>, StoreError> {
                        let txn = storage.db()?.begin_read()?;
                        let table = txn.open_table(AUTH_CODES)?;
                        Ok(table.get(imei.as_str())?.map(|v| v.value().to_string()))
                    })())
                })
                .await
            }
            Backend::Redis { pool, keys } => {
                let code: Result<Option<String>, RedisCause> = async {
                    let mut conn = pool.get().await?;
                    Ok(conn.get(keys.auth_code(imei)).await?)
                }
                .await;
                code.map_err(|e| StoreError(report_failure("auth_get", e)))
            }
        }
    }

    /// Compares a presented code with the stored one, in constant time.
    pub async fn verify(&self, imei: Imei, presented: &str) -> AuthVerdict {
        match self.get(imei).await {
            Ok(Some(stored)) => {
                use subtle::ConstantTimeEq;
                if bool::from(stored.as_bytes().ct_eq(presented.as_bytes())) {
                    AuthVerdict::Match
                } else {
                    AuthVerdict::Mismatch
                }
            }
            Ok(None) => AuthVerdict::Unknown,
            Err(e) => {
                tracing::warn!(%imei, error = %e, "authentication code store unreadable");
                AuthVerdict::Unavailable
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    //! The behaviour the JT/T 808 channel relies on, on both backends, plus what only the
    //! shared Redis of cluster mode has to offer: a code issued at one node verifies at another.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::redis::testing;
    use crate::config::StorageConfig;

    fn open(dir: &std::path::Path) -> AuthCodes {
        let config = StorageConfig {
            data_dir: dir.to_path_buf(),
            retention: std::time::Duration::from_secs(3600),
            commit_interval: std::time::Duration::ZERO,
        };
        AuthCodes::open(Storage::open(&config).expect("open storage"))
    }

    fn imei() -> Imei {
        Imei::parse("869247060001762").expect("valid imei")
    }

    async fn unknown_device_has_no_code(codes: &AuthCodes) {
        assert_eq!(codes.get(imei()).await.expect("get"), None);
        assert_eq!(codes.verify(imei(), "ABC").await, AuthVerdict::Unknown);
    }

    async fn stored_code_matches_only_itself(codes: &AuthCodes) {
        codes
            .store(imei(), "0123456789ABCDEF".into())
            .await
            .expect("store");
        assert_eq!(
            codes.verify(imei(), "0123456789ABCDEF").await,
            AuthVerdict::Match
        );
        assert_eq!(
            codes.verify(imei(), "0123456789ABCDEE").await,
            AuthVerdict::Mismatch
        );
        // A new registration replaces the code; the old one no longer matches.
        codes.store(imei(), "NEWCODE".into()).await.expect("store");
        assert_eq!(codes.verify(imei(), "NEWCODE").await, AuthVerdict::Match);
        assert_eq!(
            codes.verify(imei(), "0123456789ABCDEF").await,
            AuthVerdict::Mismatch
        );
    }

    async fn oversized_code_is_refused(codes: &AuthCodes) {
        assert!(codes
            .store(imei(), "X".repeat(MAX_CODE_LEN + 1))
            .await
            .is_err());
        assert_eq!(codes.get(imei()).await.expect("get"), None);
        codes
            .store(imei(), "X".repeat(MAX_CODE_LEN))
            .await
            .expect("a code of the longest length is stored");
    }

    #[tokio::test]
    async fn embedded_unknown_device_has_no_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        unknown_device_has_no_code(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_stored_code_matches_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        stored_code_matches_only_itself(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_oversized_code_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        oversized_code_is_refused(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn code_survives_reopening_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        open(dir.path())
            .store(imei(), "CODE1".into())
            .await
            .expect("store");
        let reopened = open(dir.path());
        assert_eq!(
            reopened.get(imei()).await.expect("get"),
            Some("CODE1".to_string())
        );
    }

    #[tokio::test]
    async fn redis_unknown_device_has_no_code() {
        let redis = testing::redis().await;
        unknown_device_has_no_code(&AuthCodes::redis(redis.pool.clone(), redis.keys.clone())).await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn redis_stored_code_matches_only_itself() {
        let redis = testing::redis().await;
        stored_code_matches_only_itself(&AuthCodes::redis(redis.pool.clone(), redis.keys.clone()))
            .await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn redis_oversized_code_is_refused() {
        let redis = testing::redis().await;
        oversized_code_is_refused(&AuthCodes::redis(redis.pool.clone(), redis.keys.clone())).await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn code_stored_at_one_node_verifies_at_another() {
        let redis = testing::redis().await;
        let (pool, keys) = redis.other_node();
        let registered_at = AuthCodes::redis(redis.pool.clone(), redis.keys.clone());
        let authenticates_at = AuthCodes::redis(pool, keys);
        registered_at
            .store(imei(), "C0DE".into())
            .await
            .expect("store");
        assert_eq!(
            authenticates_at.verify(imei(), "C0DE").await,
            AuthVerdict::Match
        );
        assert_eq!(
            authenticates_at.verify(imei(), "C0DF").await,
            AuthVerdict::Mismatch
        );
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_store_error_naming_redis() {
        let counts = testing::RedisErrorCounts::default();
        let _recorder = metrics::set_default_local_recorder(&counts);
        let (pool, keys) = testing::unreachable();
        let codes = AuthCodes::redis(pool, keys);
        let started = Instant::now();
        for message in [
            codes.store(imei(), "C0DE".into()).await.err(),
            codes.get(imei()).await.err(),
        ] {
            let StoreError(message) = message.expect("a Redis that cannot be reached fails");
            assert!(
                message.starts_with("redis: ") && message.contains("refused"),
                "message must name Redis and the cause: {message}"
            );
        }
        // The channel is told the store is unavailable, not that the device is unknown.
        assert_eq!(codes.verify(imei(), "C0DE").await, AuthVerdict::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failing took {:?}",
            started.elapsed()
        );
        // store, get, and the get inside verify.
        assert_eq!(counts.get("auth_store"), 1);
        assert_eq!(counts.get("auth_get"), 2);
    }
}
