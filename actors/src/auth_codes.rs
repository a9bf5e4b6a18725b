//! JT/T 808 authentication codes, kept durably per device.
//!
//! A terminal registers once (0x0100), keeps the code the platform issued (0x8100) in its
//! flash, and from then on only authenticates (0x0102) with it, across reconnects and hub
//! restarts. A code is written before the 0x8100 that hands it out is sent.
//!
//! Registration stores a code only if the terminal holds none, unless the caller allows a
//! replacement (the operator's `jt808_allow_reregistration`): the check and the write are
//! one transaction (redb) or one `SET NX` (Redis), so two registrations cannot both win.
//! A code issued and never used to authenticate is forgotten after the configured expiry
//! (a sweep of the table `jt808_auth_codes_unused` in redb, the key's TTL in Redis), so
//! registrations of terminals that never come back do not pile up; the first
//! authentication with a code keeps it for good.
//!
//! Single-node mode keeps the codes in the node's redb database (table `jt808_auth_codes`,
//! IMEI -> code). Cluster mode keeps them in the shared Redis (string key `authcode:{imei}`,
//! see `cluster::redis::Keys`), because a terminal registered at one node may authenticate at
//! any other; there a code is as durable as that Redis's persistence makes it. Whatever the
//! store, one piece of code compares a presented code with the stored one and turns the
//! outcome into an [`AuthVerdict`], so both modes decide alike.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::redis::Pool;
use deadpool_redis::redis::AsyncCommands;
use iothub::channel::AuthVerdict;
use iothub::imei::Imei;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::cluster::redis::Keys;
use crate::cluster::redis::{report_failure, RedisCause};
use crate::storage::{Storage, StoreError};

pub(crate) const AUTH_CODES: TableDefinition<&str, &str> = TableDefinition::new("jt808_auth_codes");
/// Codes issued and not yet used to authenticate: IMEI -> when, in Unix seconds.
const UNUSED_AUTH_CODES: TableDefinition<&str, u64> =
    TableDefinition::new("jt808_auth_codes_unused");

/// How long an issued code that was never used is kept, unless configured otherwise.
pub const DEFAULT_UNUSED_CODE_EXPIRY: Duration = Duration::from_secs(7 * 86_400);

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The code is stored.
    Registered,
    /// The terminal holds a code and no replacement was allowed: nothing changed.
    AlreadyRegistered,
}

/// Longest code stored: JT/T 808 codes travel in one 0x8100 body; longer ones are refused.
pub const MAX_CODE_LEN: usize = 256;

/// Cheap clonable handle to the stored authentication codes of either mode.
#[derive(Clone)]
pub struct AuthCodes {
    backend: Backend,
    unused_expiry: Duration,
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
            unused_expiry: DEFAULT_UNUSED_CODE_EXPIRY,
        }
    }

    /// Forget codes never used to authenticate this long after they were issued.
    pub fn with_unused_code_expiry(mut self, expiry: Duration) -> AuthCodes {
        self.unused_expiry = expiry;
        self
    }

    /// The codes in the cluster's shared Redis (cluster mode).
    pub fn redis(pool: Pool, keys: Keys) -> AuthCodes {
        AuthCodes {
            backend: Backend::Redis { pool, keys },
            unused_expiry: DEFAULT_UNUSED_CODE_EXPIRY,
        }
    }

    /// Stores (or replaces) the code a device authenticated with, as a used code; durable
    /// when it returns `Ok`.
    pub async fn store(&self, imei: Imei, code: String) -> Result<(), StoreError> {
        check_length(&code)?;
        match &self.backend {
            Backend::Embedded(storage) => {
                in_store(storage, move |db| {
                    let txn = db.begin_write()?;
                    {
                        let mut table = txn.open_table(AUTH_CODES)?;
                        table.insert(imei.as_str(), code.as_str())?;
                        txn.open_table(UNUSED_AUTH_CODES)?.remove(imei.as_str())?;
                    }
                    txn.commit()?;
                    Ok(())
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

    /// Stores the code issued at a registration, as an unused code, unless the device holds
    /// a code (one not yet expired) and `replace` is false. Durable when it returns
    /// `Ok(Registration::Registered)`.
    pub async fn register(
        &self,
        imei: Imei,
        code: String,
        replace: bool,
    ) -> Result<Registration, StoreError> {
        check_length(&code)?;
        let expiry = self.unused_expiry;
        match &self.backend {
            Backend::Embedded(storage) => {
                in_store(storage, move |db| {
                    let now = unix_now();
                    let txn = db.begin_write()?;
                    {
                        let mut codes = txn.open_table(AUTH_CODES)?;
                        let mut unused = txn.open_table(UNUSED_AUTH_CODES)?;
                        let held = codes.get(imei.as_str())?.is_some();
                        let issued = unused.get(imei.as_str())?.map(|v| v.value());
                        let expired = issued.is_some_and(|at| at + expiry.as_secs() <= now);
                        if held && !expired && !replace {
                            return Ok(Registration::AlreadyRegistered);
                        }
                        codes.insert(imei.as_str(), code.as_str())?;
                        unused.insert(imei.as_str(), now)?;
                    }
                    txn.commit()?;
                    Ok(Registration::Registered)
                })
                .await
            }
            Backend::Redis { pool, keys } => {
                let stored: Result<Option<String>, RedisCause> = async {
                    let mut conn = pool.get().await?;
                    let mut set = deadpool_redis::redis::cmd("SET");
                    set.arg(keys.auth_code(imei)).arg(code);
                    if !replace {
                        set.arg("NX");
                    }
                    set.arg("EX").arg(expiry.as_secs().max(1));
                    Ok(set.query_async(&mut conn).await?)
                }
                .await;
                match stored.map_err(|e| StoreError(report_failure("auth_register", e)))? {
                    Some(_) => Ok(Registration::Registered),
                    None => Ok(Registration::AlreadyRegistered),
                }
            }
        }
    }

    /// The code authenticated: keep it past the unused-code expiry.
    async fn mark_used(&self, imei: Imei) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(storage) => {
                in_store(storage, move |db| {
                    // Only a code's first authentication writes.
                    let unused = {
                        let txn = db.begin_read()?;
                        let table = txn.open_table(UNUSED_AUTH_CODES)?;
                        table.get(imei.as_str())?.is_some()
                    };
                    if unused {
                        let txn = db.begin_write()?;
                        txn.open_table(UNUSED_AUTH_CODES)?.remove(imei.as_str())?;
                        txn.commit()?;
                    }
                    Ok(())
                })
                .await
            }
            Backend::Redis { pool, keys } => {
                let persisted: Result<(), RedisCause> = async {
                    let mut conn = pool.get().await?;
                    let _: bool = conn.persist(keys.auth_code(imei)).await?;
                    Ok(())
                }
                .await;
                persisted.map_err(|e| StoreError(report_failure("auth_mark_used", e)))
            }
        }
    }

    /// Forgets the codes issued longer than the expiry ago and never used; returns how many.
    /// Redis expires them by itself (their TTL).
    pub async fn expire_unused(&self) -> Result<usize, StoreError> {
        let Backend::Embedded(storage) = &self.backend else {
            return Ok(0);
        };
        let expiry = self.unused_expiry.as_secs();
        in_store(storage, move |db| {
            let now = unix_now();
            let txn = db.begin_write()?;
            let expired = {
                let mut codes = txn.open_table(AUTH_CODES)?;
                let mut unused = txn.open_table(UNUSED_AUTH_CODES)?;
                let mut expired = Vec::new();
                for entry in unused.iter()? {
                    let (imei, issued) = entry?;
                    if issued.value() + expiry <= now {
                        expired.push(imei.value().to_string());
                    }
                }
                for imei in &expired {
                    unused.remove(imei.as_str())?;
                    codes.remove(imei.as_str())?;
                }
                expired.len()
            };
            txn.commit()?;
            Ok(expired)
        })
        .await
    }

    /// The stored code of a device, if any.
    pub async fn get(&self, imei: Imei) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Embedded(storage) => {
                in_store(storage, move |db| {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(AUTH_CODES)?;
                    Ok(table.get(imei.as_str())?.map(|v| v.value().to_string()))
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
                    if let Err(e) = self.mark_used(imei).await {
                        // The code is right; unmarked it may expire, and the terminal then
                        // registers again.
                        tracing::warn!(%imei, error = %e, "could not mark an authentication code used");
                    }
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

fn check_length(code: &str) -> Result<(), StoreError> {
    if code.len() > MAX_CODE_LEN {
        return Err(StoreError(format!(
            "authentication code of {} bytes exceeds {MAX_CODE_LEN}",
            code.len()
        )));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `f` on the node's database off the async threads; its errors go to the storage's
/// recovery (see `Storage::observe`).
async fn in_store<T: Send + 'static>(
    storage: &Arc<Storage>,
    f: impl FnOnce(&redb::Database) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let storage = storage.clone();
    blocking(move || storage.observe(storage.db().and_then(|db| f(&db)))).await
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

    use std::time::Instant;

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

    async fn registration_keeps_a_held_code(codes: &AuthCodes) {
        let first = codes.register(imei(), "FIRST".into(), false).await;
        let second = codes.register(imei(), "SECOND".into(), false).await;
        assert_eq!(
            (first.expect("register"), second.expect("register")),
            (Registration::Registered, Registration::AlreadyRegistered)
        );
        assert_eq!(codes.verify(imei(), "FIRST").await, AuthVerdict::Match);
    }

    async fn allowed_reregistration_replaces_the_code(codes: &AuthCodes) {
        codes
            .register(imei(), "FIRST".into(), false)
            .await
            .expect("register");
        let again = codes.register(imei(), "SECOND".into(), true).await;
        assert_eq!(again.expect("register"), Registration::Registered);
        assert_eq!(codes.verify(imei(), "SECOND").await, AuthVerdict::Match);
    }

    #[tokio::test]
    async fn embedded_registration_keeps_a_held_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        registration_keeps_a_held_code(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn embedded_allowed_reregistration_replaces_the_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        allowed_reregistration_replaces_the_code(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn redis_registration_keeps_a_held_code() {
        let redis = testing::redis().await;
        registration_keeps_a_held_code(&AuthCodes::redis(redis.pool.clone(), redis.keys.clone()))
            .await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn redis_allowed_reregistration_replaces_the_code() {
        let redis = testing::redis().await;
        allowed_reregistration_replaces_the_code(&AuthCodes::redis(
            redis.pool.clone(),
            redis.keys.clone(),
        ))
        .await;
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn embedded_unused_code_is_forgotten_after_its_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path()).with_unused_code_expiry(Duration::ZERO);
        codes
            .register(imei(), "NEVER-USED".into(), false)
            .await
            .expect("register");
        assert_eq!(codes.expire_unused().await.expect("expire"), 1);
        assert_eq!(codes.get(imei()).await.expect("get"), None);
    }

    #[tokio::test]
    async fn embedded_used_code_outlives_the_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path()).with_unused_code_expiry(Duration::ZERO);
        codes
            .register(imei(), "USED".into(), false)
            .await
            .expect("register");
        assert_eq!(codes.verify(imei(), "USED").await, AuthVerdict::Match);
        assert_eq!(codes.expire_unused().await.expect("expire"), 0);
        assert_eq!(codes.verify(imei(), "USED").await, AuthVerdict::Match);
    }

    #[tokio::test]
    async fn embedded_expired_unused_code_does_not_block_a_registration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path()).with_unused_code_expiry(Duration::ZERO);
        codes
            .register(imei(), "STALE".into(), false)
            .await
            .expect("register");
        let again = codes.register(imei(), "FRESH".into(), false).await;
        assert_eq!(again.expect("register"), Registration::Registered);
    }

    #[tokio::test]
    async fn redis_unused_code_carries_the_expiry_and_loses_it_when_used() {
        let redis = testing::redis().await;
        let codes = AuthCodes::redis(redis.pool.clone(), redis.keys.clone())
            .with_unused_code_expiry(Duration::from_secs(600));
        codes
            .register(imei(), "C0DE".into(), false)
            .await
            .expect("register");
        let mut conn = redis.pool.get().await.expect("redis");
        let ttl: i64 = conn.ttl(redis.keys.auth_code(imei())).await.expect("ttl");
        assert!((1..=600).contains(&ttl), "unused code's TTL: {ttl}");
        assert_eq!(codes.verify(imei(), "C0DE").await, AuthVerdict::Match);
        let ttl: i64 = conn.ttl(redis.keys.auth_code(imei())).await.expect("ttl");
        assert_eq!(ttl, -1, "a used code is kept for good");
        drop(conn);
        redis.cleanup().await;
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
