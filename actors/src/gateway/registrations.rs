//! Registrations per source address. A JT/T 808 registration costs a durable write and hands
//! out a code, and needs no proof of anything, so one address may register only so many
//! terminals a minute: a loop of invented phone numbers cannot grow the code table without
//! bound or compete with the event log for the disk.
//!
//! Counts are kept per address and per minute of the clock. The table is bounded: when it is
//! full, the entries of past minutes are dropped, and if every entry is of this minute, new
//! addresses are refused until the next one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Most source addresses counted at once.
const MAX_TRACKED: usize = 65_536;

/// Registrations per source address and minute, shared by every session of the node.
#[derive(Debug)]
pub struct RegistrationLimiter {
    per_minute: u32,
    /// Address -> (minute, registrations in it).
    counts: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl RegistrationLimiter {
    /// `per_minute` registrations per address and minute; 0 = no limit.
    pub fn new(per_minute: u32) -> RegistrationLimiter {
        RegistrationLimiter {
            per_minute,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may register one more terminal in `minute` (minutes since the
    /// epoch); counts the registration when it may.
    pub fn allow(&self, source: IpAddr, minute: u64) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= MAX_TRACKED && !counts.contains_key(&source) {
            counts.retain(|_, (m, _)| *m == minute);
            if counts.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (counted_minute, count) = counts.entry(source).or_insert((minute, 0));
        if *counted_minute != minute {
            *counted_minute = minute;
            *count = 0;
        }
        if *count >= self.per_minute {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn an_address_registers_up_to_the_limit_in_a_minute() {
        let limiter = RegistrationLimiter::new(3);
        let allowed: Vec<bool> = (0..4).map(|_| limiter.allow(ip(1), 100)).collect();
        assert_eq!(allowed, [true, true, true, false]);
    }

    #[test]
    fn the_next_minute_starts_a_new_count() {
        let limiter = RegistrationLimiter::new(1);
        limiter.allow(ip(1), 100);
        assert!(limiter.allow(ip(1), 101));
    }

    #[test]
    fn addresses_are_counted_apart() {
        let limiter = RegistrationLimiter::new(1);
        limiter.allow(ip(1), 100);
        assert!(limiter.allow(ip(2), 100));
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = RegistrationLimiter::new(0);
        assert!((0..10_000).all(|_| limiter.allow(ip(1), 100)));
    }

    #[test]
    fn a_full_table_drops_past_minutes_before_refusing() {
        let limiter = RegistrationLimiter::new(1);
        for n in 0..MAX_TRACKED {
            let addr = IpAddr::V6(std::net::Ipv6Addr::from(u128::try_from(n).unwrap()));
            assert!(limiter.allow(addr, 100));
        }
        assert!(
            !limiter.allow(ip(1), 100),
            "full of this minute's addresses"
        );
        assert!(limiter.allow(ip(1), 101), "past minutes make room");
    }
}
