//! What `/ready` reports besides the registry: the parts of the node that can fail on their
//! own while the process keeps running (the embedded store, the node's sink, a supervised
//! task being restarted). Each part marks itself down when it stops working and up when it
//! works again; a node with any part down answers `/ready` with 503 and names the parts, so
//! a load balancer sends devices elsewhere instead of to a node that cannot acknowledge them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The node's failing parts, shared by everything that reports and the API that shows them.
#[derive(Clone, Default, Debug)]
pub struct Health {
    down: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Health {
    /// Marks `part` down (true) or up (false).
    pub fn set_down(&self, part: &'static str, down: bool) {
        let mut set = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down {
            set.insert(part);
        } else {
            set.remove(part);
        }
    }

    /// The parts down now, by name.
    pub fn down(&self) -> Vec<&'static str> {
        let set = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        set.iter().copied().collect()
    }

    pub fn is_down(&self, part: &'static str) -> bool {
        let set = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        set.contains(part)
    }
}

/// Marks the sink `sink` up or down, in [`Health`] and in the `iothub_sink_up{sink}` gauge.
pub fn set_sink_up(health: &Health, sink: &'static str, up: bool) {
    health.set_down(sink, !up);
    metrics::gauge!("iothub_sink_up", "sink" => sink).set(if up { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_marked_down_is_reported() {
        let health = Health::default();
        health.set_down("storage", true);
        assert_eq!(health.down(), vec!["storage"]);
    }

    #[test]
    fn a_part_marked_up_again_is_no_longer_reported() {
        let health = Health::default();
        health.set_down("storage", true);
        health.set_down("storage", false);
        assert!(health.down().is_empty());
    }
}
