//! Connection pacing. Opening ten thousand connections at once measures the kernel's accept
//! queue, not the hub; a real fleet reconnecting after an outage arrives at some rate. The
//! pacer hands out evenly spaced start slots, shared by first connects and reconnects.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Evenly spaced slots: `rate` per second, no bursts beyond one slot.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// `rate` slots per second; zero, negative or non-finite means no limit.
    pub fn new(rate: f64) -> Pacer {
        let interval = if rate.is_finite() && rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            next: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The time the caller may start at, given that it asks at `now`. Unused slots are not
    /// saved up: after a quiet period the next caller starts at once, and only one.
    pub fn next_slot(&mut self, now: Instant) -> Instant {
        let slot = match self.next {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next = Some(slot + self.interval);
        slot
    }
}

/// A [`Pacer`] shared by concurrent tasks.
#[derive(Debug)]
pub struct ConnectLimiter {
    pacer: Mutex<Pacer>,
}

impl ConnectLimiter {
    pub fn new(rate: f64) -> ConnectLimiter {
        ConnectLimiter {
            pacer: Mutex::new(Pacer::new(rate)),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut pacer = self.pacer.lock().unwrap_or_else(|p| p.into_inner());
            // tokio's clock, so that tests with a paused clock see exact slots.
            pacer.next_slot(tokio::time::Instant::now().into_std())
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced() {
        let mut pacer = Pacer::new(500.0);
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| pacer.next_slot(t0)).collect();
        assert_eq!(slots[0], t0);
        assert_eq!(slots[1] - slots[0], Duration::from_millis(2));
        assert_eq!(slots[4] - slots[0], Duration::from_millis(8));
    }

    #[test]
    fn idle_time_is_not_saved_up() {
        let mut pacer = Pacer::new(10.0);
        let t0 = Instant::now();
        pacer.next_slot(t0);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(pacer.next_slot(later), later);
        assert_eq!(pacer.next_slot(later), later + Duration::from_millis(100));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut pacer = Pacer::new(0.0);
        let t0 = Instant::now();
        assert_eq!(pacer.next_slot(t0), t0);
        assert_eq!(pacer.next_slot(t0), t0);
    }

    #[test]
    fn rate_of_a_thousand_takes_a_second() {
        let mut pacer = Pacer::new(1000.0);
        let t0 = Instant::now();
        let last = (0..1001).map(|_| pacer.next_slot(t0)).last();
        assert_eq!(last.map(|l| l - t0), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_waits_for_the_slot() {
        let limiter = ConnectLimiter::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
