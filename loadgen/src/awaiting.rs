//! The uplinks a simulated device sent and still expects the hub to answer, with the time
//! by which the answer is due. Trackers and terminals keep the same bounded queue: a late
//! answer counts as an acknowledgement timeout, and a device that sends faster than the hub
//! answers drops (and counts) its oldest expectation instead of growing without bound.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::stats::Counters;

/// Most answers one device waits for at once.
pub const MAX_AWAITING: usize = 256;

/// Expected answers, oldest (earliest deadline) first.
#[derive(Debug)]
pub struct Awaiting<T> {
    queue: VecDeque<(Instant, T)>,
}

impl<T> Default for Awaiting<T> {
    fn default() -> Self {
        Awaiting {
            queue: VecDeque::new(),
        }
    }
}

impl<T> Awaiting<T> {
    /// Expects an answer to `item` by `deadline` (deadlines must not decrease).
    pub fn push(&mut self, item: T, deadline: Instant, counters: &Counters) {
        if self.queue.len() >= MAX_AWAITING {
            self.queue.pop_front();
            counters.ack_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        self.queue.push_back((deadline, item));
    }

    /// When the oldest expectation runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(d, _)| *d)
    }

    /// Drops the expectations due by `now`, counting each as a timeout.
    pub fn expire(&mut self, now: Instant, counters: &Counters) {
        while self.queue.front().is_some_and(|(d, _)| *d <= now) {
            self.queue.pop_front();
            counters.ack_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes and returns the first expectation `matches` accepts.
    pub fn take(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        let at = self.queue.iter().position(|(_, item)| matches(item))?;
        self.queue.remove(at).map(|(_, item)| item)
    }

    /// Forgets every expectation `matches` accepts.
    pub fn forget(&mut self, mut matches: impl FnMut(&T) -> bool) {
        self.queue.retain(|(_, item)| !matches(item));
    }
}

/// The next tick of a device's periodic timer; never, for a timer that is off.
pub async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline` ([`Awaiting::next_deadline`]); forever when there is none.
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn full_queue_drops_and_counts_the_oldest() {
        let counters = Counters::new();
        let mut a = Awaiting::default();
        let t = Instant::now();
        for i in 0..=MAX_AWAITING {
            a.push(i, t, &counters);
        }
        assert_eq!(counters.ack_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(a.take(|&i| i == 0), None);
        assert_eq!(a.take(|&i| i == 1), Some(1));
    }

    #[test]
    fn expire_counts_only_what_is_due() {
        let counters = Counters::new();
        let mut a = Awaiting::default();
        let t = Instant::now();
        a.push("early", t, &counters);
        a.push("late", t + Duration::from_secs(5), &counters);
        a.expire(t + Duration::from_secs(1), &counters);
        assert_eq!(counters.ack_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(a.next_deadline(), Some(t + Duration::from_secs(5)));
    }

    #[test]
    fn forget_removes_without_counting() {
        let counters = Counters::new();
        let mut a = Awaiting::default();
        a.push(7, Instant::now(), &counters);
        a.forget(|&i| i == 7);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(counters.ack_timeouts.load(Ordering::Relaxed), 0);
    }
}
