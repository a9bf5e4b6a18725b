//! Instructions queued for devices that are offline, delivered at their next login.
//! (interface; implementation in progress)

use iothub::command::Instruction;
use iothub::imei::Imei;

/// One queued instruction with its store id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedInstruction {
    pub id: u64,
    pub imei: Imei,
    pub instruction: Instruction,
    /// Unix milliseconds when it was queued.
    pub queued_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("offline store failed: {0}")]
    Store(String),
    #[error("too many queued instructions for this device (limit {0})")]
    Full(usize),
}

/// Cheap clonable handle to the offline instruction store.
#[derive(Clone)]
pub struct OfflineCommands {}

impl OfflineCommands {
    /// Durably queues an instruction; returns its id.
    pub async fn enqueue(&self, imei: Imei, instruction: Instruction) -> Result<u64, OfflineError> {
        let _ = (imei, instruction);
        Err(OfflineError::Store("not ready".into()))
    }
    /// Queued instructions of a device, oldest first.
    pub async fn pending(&self, imei: Imei) -> Result<Vec<QueuedInstruction>, OfflineError> {
        let _ = imei;
        Ok(vec![])
    }
    /// Removes an instruction once the device answered it (or it was given up).
    pub async fn remove(&self, imei: Imei, id: u64) -> Result<(), OfflineError> {
        let _ = (imei, id);
        Ok(())
    }
}
