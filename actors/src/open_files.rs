//! The process's open-file limit against the connection budget. Every device connection is
//! a file descriptor; once the process runs out of them accepts fail and new devices wait in
//! the listen backlog, which is what the connection budget exists to prevent. So at start the
//! soft limit is raised to the hard limit (the most an unprivileged process may take), and a
//! budget that the limit cannot hold is reported before any device connects.

use std::io;

/// Files the node needs besides device connections: its listeners, the embedded database,
/// Kafka and Redis connections, instruction API and push connections, with room for bursts
/// of API requests.
pub const RESERVED_FILES: u64 = 2_000;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force after.
pub fn raise_to_hard_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// How many files short the open-file `limit` is of `budget` device connections plus
/// [`RESERVED_FILES`]; `None` when it holds them all.
pub fn shortfall(budget: u64, limit: u64) -> Option<u64> {
    let needed = budget.saturating_add(RESERVED_FILES);
    (needed > limit).then(|| needed - limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_above_budget_and_reserve_holds_the_budget() {
        assert_eq!(shortfall(18_000, 1_048_576), None);
    }

    #[test]
    fn a_limit_of_exactly_budget_and_reserve_holds_the_budget() {
        assert_eq!(shortfall(18_000, 18_000 + RESERVED_FILES), None);
    }

    #[test]
    fn a_limit_below_budget_and_reserve_is_short_by_the_difference() {
        assert_eq!(
            shortfall(36_000, 20_000),
            Some(36_000 + RESERVED_FILES - 20_000)
        );
    }

    #[test]
    fn a_limit_below_the_reserve_alone_is_short() {
        assert_eq!(shortfall(1, 1_024), Some(1 + RESERVED_FILES - 1_024));
    }

    #[test]
    fn an_unlimited_limit_holds_any_budget() {
        assert_eq!(shortfall(1_000_000, u64::MAX), None);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_limit() {
        let soft = raise_to_hard_limit().unwrap();
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(soft, hard);
    }
}
