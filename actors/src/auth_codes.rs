//! JT/T 808 authentication codes, kept durably per device.
//!
//! A terminal registers once (0x0100), keeps the code the platform issued (0x8100) in its
//! flash, and from then on only authenticates (0x0102) with it, across reconnects and hub
//! restarts. The codes therefore live in the node's redb database (table `jt808_auth_codes`,
//! IMEI -> code), written before the 0x8100 that hands a code out is sent.

use std::sync::Arc;

use iothub::channel::AuthVerdict;
use iothub::imei::Imei;
use redb::{ReadableDatabase, TableDefinition};

use crate::storage::{Storage, StoreError};

pub(crate) const AUTH_CODES: TableDefinition<&str, &str> = TableDefinition::new("jt808_auth_codes");

/// Longest code stored: JT/T 808 codes travel in one 0x8100 body; longer ones are refused.
pub const MAX_CODE_LEN: usize = 256;

/// Cheap clonable handle to the stored authentication codes.
#[derive(Clone)]
pub struct AuthCodes {
    storage: Arc<Storage>,
}

impl AuthCodes {
    pub fn open(storage: Arc<Storage>) -> AuthCodes {
        AuthCodes { storage }
    }

    /// Stores (or replaces) the code of a device; durable when it returns `Ok`.
    pub async fn store(&self, imei: Imei, code: String) -> Result<(), StoreError> {
        if code.len() > MAX_CODE_LEN {
            return Err(StoreError(format!(
                "authentication code of {} bytes exceeds {MAX_CODE_LEN}",
                code.len()
            )));
        }
        let storage = self.storage.clone();
        blocking(move || {
            let txn = storage.db().begin_write()?;
            {
                let mut table = txn.open_table(AUTH_CODES)?;
                table.insert(imei.as_str(), code.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// The stored code of a device, if any.
    pub async fn get(&self, imei: Imei) -> Result<Option<String>, StoreError> {
        let storage = self.storage.clone();
        blocking(move || {
            let txn = storage.db().begin_read()?;
            let table = txn.open_table(AUTH_CODES)?;
            Ok(table.get(imei.as_str())?.map(|v| v.value().to_string()))
        })
        .await
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
    use super::*;
    use crate::config::StorageConfig;

    fn open(dir: &std::path::Path) -> AuthCodes {
        let config = StorageConfig {
            data_dir: dir.to_path_buf(),
            retention: std::time::Duration::from_secs(3600),
        };
        AuthCodes::open(Storage::open(&config).expect("open storage"))
    }

    fn imei() -> Imei {
        Imei::parse("869247060001762").expect("valid imei")
    }

    #[tokio::test]
    async fn unknown_device_has_no_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path());
        assert_eq!(codes.verify(imei(), "ABC").await, AuthVerdict::Unknown);
    }

    #[tokio::test]
    async fn stored_code_matches_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path());
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
    async fn oversized_code_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codes = open(dir.path());
        assert!(codes
            .store(imei(), "X".repeat(MAX_CODE_LEN + 1))
            .await
            .is_err());
    }
}
