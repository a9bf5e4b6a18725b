//! The Publisher: makes device events durable before devices are acknowledged.
//! (interface; implementation in progress)

use iothub::event::Event;
use ractor::ActorRef;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event store failed: {0}")]
    Store(String),
    #[error("publisher is not running")]
    Stopped,
}

pub enum PublisherMsg {
    /// Make these events durable, then answer.
    Publish(Vec<Event>, ractor::RpcReplyPort<Result<(), PublishError>>),
}

/// Cheap clonable handle to the Publisher actor.
#[derive(Clone)]
pub struct Publisher {
    pub actor: ActorRef<PublisherMsg>,
}

impl Publisher {
    /// Returns once every event is durable (embedded log fsynced, or acked by Kafka with
    /// acks=all). Only then may the device be acknowledged.
    pub async fn publish(&self, events: Vec<Event>) -> Result<(), PublishError> {
        let _ = events;
        Err(PublishError::Stopped)
    }
}
