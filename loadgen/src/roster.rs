//! Who takes part in a run. A load run is a list of simulated devices, GT06 trackers first,
//! then JT/T 808 DVRs, then the devices that reuse an IMEI on purpose; every property of a
//! device (family, IMEI, whether its IMEI is shared) is a pure function of its place in that
//! list. Nothing is stored per device, so a million-device roster costs nothing, and the
//! parent process and each worker process compute the same roster from the same flags.
//!
//! # IMEIs
//! - Trackers count up from `--imei-base` with the same number of digits ([`imei_for`]): the
//!   GT06 path takes any digits.
//! - DVRs are `--dvr-imei-base` (14 digits) + index, followed by the Luhn check digit
//!   ([`dvr_imei_for`]): the hub derives a JT/T 808 terminal's IMEI from its header phone
//!   under `newImeiRule`, which only maps IMEIs whose 15th digit is the Luhn digit of the
//!   first 14.
//!
//! # Duplicates
//! `--duplicate-imeis N` adds N devices after the `M` primaries. Duplicate `j` reuses the
//! IMEI (and the family) of primary `floor(j * M / N)`: spread evenly over the fleet, so the
//! takeovers happen everywhere and every worker process gets its share. A primary whose IMEI
//! is reused and its duplicate form the *shared* groups, accounted apart (see `report`).

use std::ops::Range;

use anyhow::{bail, Context};
use iothub::imei::{luhn_digit, Imei};
use serde::{Deserialize, Serialize};

/// The protocol a simulated device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// GT06/JIMI trackers ([`crate::tracker::SimTracker`]).
    Gt06,
    /// JT/T 808 DVRs ([`crate::jt808_terminal::SimTerminal`]).
    Jt808,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Gt06 => "gt06",
            Family::Jt808 => "jt808",
        }
    }
}

/// A set of devices counted together: one family, with or without shared IMEIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Group {
    pub family: Family,
    /// The devices of this group share their IMEI with another device of the run.
    pub shared: bool,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group {
            family: Family::Gt06,
            shared: false,
        },
        Group {
            family: Family::Jt808,
            shared: false,
        },
        Group {
            family: Family::Gt06,
            shared: true,
        },
        Group {
            family: Family::Jt808,
            shared: true,
        },
    ];

    /// Position in [`Group::ALL`].
    pub fn index(self) -> usize {
        match (self.family, self.shared) {
            (Family::Gt06, false) => 0,
            (Family::Jt808, false) => 1,
            (Family::Gt06, true) => 2,
            (Family::Jt808, true) => 3,
        }
    }

    /// `gt06`, `jt808`, `gt06 shared-IMEI`, `jt808 shared-IMEI`.
    pub fn label(self) -> String {
        if self.shared {
            format!("{} shared-IMEI", self.family.name())
        } else {
            self.family.name().to_owned()
        }
    }
}

/// IMEI of tracker `index`: `base + index`, as many digits as `base` has.
pub fn imei_for(base: &str, index: u64) -> anyhow::Result<Imei> {
    let width = base.len();
    let start: u64 = base
        .parse()
        .with_context(|| format!("IMEI base {base:?} is not a decimal number"))?;
    let n = start
        .checked_add(index)
        .context("IMEI base + index overflows")?;
    let text = format!("{n:0width$}");
    if text.len() != width {
        bail!("IMEI base {base} + {index} needs more than {width} digits");
    }
    Imei::parse(&text).with_context(|| format!("IMEI {text}"))
}

/// Whether an IMEI belongs to the `count` trackers starting at `base` (same width).
pub fn imei_range(base: &str, count: u32) -> impl Fn(&str) -> bool {
    let width = base.len();
    let start = base.parse::<u64>().ok();
    move |imei: &str| {
        imei.len() == width
            && match (start, imei.parse::<u64>()) {
                (Some(start), Ok(n)) => n >= start && n - start < u64::from(count),
                _ => false,
            }
    }
}

/// Largest 14-digit number: the first 14 digits of an IMEI.
const MAX_BODY: u64 = 99_999_999_999_999;

/// The 14 leading digits of a DVR IMEI base. A 15-digit base is accepted and its last digit
/// ignored (it is recomputed per device).
pub fn dvr_base(base: &str) -> anyhow::Result<u64> {
    let body = match base.len() {
        14 => base,
        15 => &base[..14],
        n => bail!("DVR IMEI base {base:?} must have 14 digits (or 15, the last one is recomputed), got {n}"),
    };
    if !body.bytes().all(|b| b.is_ascii_digit()) {
        bail!("DVR IMEI base {base:?} is not a decimal number");
    }
    body.parse()
        .with_context(|| format!("DVR IMEI base {base:?}"))
}

/// IMEI of DVR `index`: the 14 digits `base + index`, then their Luhn check digit.
pub fn dvr_imei_for(base: u64, index: u64) -> anyhow::Result<Imei> {
    let body = base
        .checked_add(index)
        .filter(|n| *n <= MAX_BODY)
        .with_context(|| format!("DVR IMEI base {base:014} + {index} needs more than 14 digits"))?;
    let digits = format!("{body:014}");
    let check = luhn_digit(&digits);
    Imei::parse(&format!("{digits}{check}")).with_context(|| format!("DVR IMEI {digits}{check}"))
}

/// The DVR index of `imei` under `base`, if it is one of the first `count` DVR IMEIs (Luhn
/// digit included).
pub fn dvr_index_of(base: u64, count: u64, imei: &str) -> Option<u64> {
    if imei.len() != 15 || !imei.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (body, check) = imei.split_at(14);
    if check.bytes().next()? - b'0' != luhn_digit(body) {
        return None;
    }
    let index = body.parse::<u64>().ok()?.checked_sub(base)?;
    (index < count).then_some(index)
}

/// One device of the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Place in the whole roster: primaries `0..M`, duplicates `M..M+N`.
    pub index: u64,
    /// The primary whose IMEI it uses (itself for a primary): the unit instructions and the
    /// online set are kept by.
    pub position: u64,
    pub family: Family,
    pub imei: Imei,
    /// Another device of the run has the same IMEI.
    pub shared: bool,
}

impl Device {
    pub fn group(&self) -> Group {
        Group {
            family: self.family,
            shared: self.shared,
        }
    }

    /// A duplicate, not the primary holder of its IMEI.
    pub fn is_duplicate(&self) -> bool {
        self.index != self.position
    }
}

/// The devices of a run (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    trackers: u64,
    dvrs: u64,
    duplicates: u64,
    /// Tracker IMEIs: first number and width.
    gt06_start: u64,
    gt06_width: usize,
    /// DVR IMEIs: the first 14 digits of the first one.
    dvr_base: u64,
}

impl Roster {
    /// Checks every IMEI of the run fits before anything connects; errors name the flag.
    pub fn new(
        trackers: u32,
        imei_base: &str,
        dvrs: u32,
        dvr_imei_base: &str,
        duplicates: u32,
    ) -> anyhow::Result<Roster> {
        let (trackers, dvrs, duplicates) =
            (u64::from(trackers), u64::from(dvrs), u64::from(duplicates));
        if trackers + dvrs == 0 {
            bail!("nothing to run: --count (trackers) and --dvrs are both 0");
        }
        if duplicates > trackers + dvrs {
            bail!(
                "--duplicate-imeis {duplicates}: more than the {} devices whose IMEIs could be reused",
                trackers + dvrs
            );
        }
        let gt06_start: u64 = imei_base
            .parse()
            .with_context(|| format!("--imei-base {imei_base:?} is not a decimal number"))?;
        if trackers > 0 {
            imei_for(imei_base, trackers - 1).context("--imei-base")?;
        }
        let dvr_base = dvr_base(dvr_imei_base).context("--dvr-imei-base")?;
        if dvrs > 0 {
            dvr_imei_for(dvr_base, dvrs - 1).context("--dvr-imei-base")?;
        }
        let roster = Roster {
            trackers,
            dvrs,
            duplicates,
            gt06_start,
            gt06_width: imei_base.len(),
            dvr_base,
        };
        if trackers > 0 && dvrs > 0 && roster.gt06_width == 15 {
            // DVR IMEIs lie in [base * 10, (base + dvrs) * 10); refuse any overlap so that the
            // only IMEIs two devices share are the duplicates asked for.
            let dvr_lo = u128::from(dvr_base) * 10;
            let dvr_hi = (u128::from(dvr_base) + u128::from(dvrs)) * 10;
            let gt_lo = u128::from(gt06_start);
            let gt_hi = gt_lo + u128::from(trackers);
            if gt_lo < dvr_hi && dvr_lo < gt_hi {
                bail!(
                    "--dvr-imei-base {dvr_imei_base} overlaps the tracker IMEIs from --imei-base {imei_base}: choose ranges apart"
                );
            }
        }
        Ok(roster)
    }

    pub fn trackers(&self) -> u64 {
        self.trackers
    }

    pub fn dvrs(&self) -> u64 {
        self.dvrs
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// `M`: trackers + DVRs, the devices with an IMEI of their own.
    pub fn primaries(&self) -> u64 {
        self.trackers + self.dvrs
    }

    /// Every device, duplicates included.
    pub fn len(&self) -> u64 {
        self.primaries() + self.duplicates
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The primary whose IMEI duplicate `j` reuses: `floor(j * M / N)`.
    pub fn duplicated_position(&self, j: u64) -> u64 {
        if self.duplicates == 0 {
            return 0;
        }
        (u128::from(j) * u128::from(self.primaries()) / u128::from(self.duplicates)) as u64
    }

    /// The duplicate reusing primary `position`'s IMEI, if any.
    fn duplicate_of(&self, position: u64) -> Option<u64> {
        let (m, n) = (u128::from(self.primaries()), u128::from(self.duplicates));
        if n == 0 || u128::from(position) >= m {
            return None;
        }
        // The only j with floor(j * M / N) = position is ceil(position * N / M), if any.
        let j = (u128::from(position) * n).div_ceil(m);
        (j < n && j * m / n == u128::from(position)).then_some(j as u64)
    }

    /// Whether primary `position` shares its IMEI with a duplicate.
    pub fn is_shared(&self, position: u64) -> bool {
        self.duplicate_of(position).is_some()
    }

    fn family_at(&self, position: u64) -> Family {
        if position < self.trackers {
            Family::Gt06
        } else {
            Family::Jt808
        }
    }

    /// IMEI of primary `position`.
    pub fn imei_at(&self, position: u64) -> anyhow::Result<Imei> {
        if position < self.trackers {
            let n = self.gt06_start + position;
            let width = self.gt06_width;
            Imei::parse(&format!("{n:0width$}")).with_context(|| format!("tracker IMEI {n}"))
        } else if position < self.primaries() {
            dvr_imei_for(self.dvr_base, position - self.trackers)
        } else {
            bail!("device {position} is not in the roster")
        }
    }

    /// Device `index` of the roster.
    pub fn device(&self, index: u64) -> anyhow::Result<Device> {
        let m = self.primaries();
        let position = if index < m {
            index
        } else if index < self.len() {
            self.duplicated_position(index - m)
        } else {
            bail!("device {index} is not in the roster of {}", self.len());
        };
        Ok(Device {
            index,
            position,
            family: self.family_at(position),
            imei: self.imei_at(position)?,
            shared: index >= m || self.is_shared(position),
        })
    }

    /// The primary position an IMEI of this run belongs to.
    pub fn position_of(&self, imei: &str) -> Option<u64> {
        if self.trackers > 0 && imei.len() == self.gt06_width {
            if let Some(index) = imei
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_sub(self.gt06_start))
                .filter(|i| *i < self.trackers)
            {
                return Some(index);
            }
        }
        dvr_index_of(self.dvr_base, self.dvrs, imei).map(|i| self.trackers + i)
    }

    /// The group whose records carry `imei`, or `None` for an IMEI not of this run (a
    /// receiver may also get late deliveries of an earlier run).
    pub fn group_of(&self, imei: &str) -> Option<Group> {
        let position = self.position_of(imei)?;
        Some(Group {
            family: self.family_at(position),
            shared: self.is_shared(position),
        })
    }

    /// Devices in `group`.
    pub fn group_len(&self, group: Group) -> u64 {
        let shared_in = |range: Range<u64>| {
            if self.duplicates == 0 || range.is_empty() {
                return 0;
            }
            // Duplicates j with floor(j * M / N) in range: j in [ceil(a N / M), ceil(b N / M)).
            let first = self.first_duplicate_at_or_after(range.start);
            let end = self.first_duplicate_at_or_after(range.end);
            end - first
        };
        let range = match group.family {
            Family::Gt06 => 0..self.trackers,
            Family::Jt808 => self.trackers..self.primaries(),
        };
        let shared = shared_in(range.clone());
        let total = range.end - range.start;
        if group.shared {
            // The primaries holding a shared IMEI, and their duplicates.
            2 * shared
        } else {
            total - shared
        }
    }

    /// The smallest duplicate `j` whose primary is at or after `position` (N when none is).
    fn first_duplicate_at_or_after(&self, position: u64) -> u64 {
        let m = u128::from(self.primaries());
        if m == 0 {
            return 0;
        }
        let j = (u128::from(position) * u128::from(self.duplicates)).div_ceil(m);
        j.min(u128::from(self.duplicates)) as u64
    }

    /// The devices worker `worker` of `workers` runs: the primaries
    /// `[worker * M / K, (worker + 1) * M / K)` and the duplicates of exactly those, so the two
    /// holders of an IMEI always live in one process (which can then tell a takeover from a
    /// failure).
    pub fn slice(&self, worker: u32, workers: u32) -> Slice {
        let (m, w, k) = (
            u128::from(self.primaries()),
            u128::from(worker),
            u128::from(workers.max(1)),
        );
        let start = (w * m / k) as u64;
        let end = ((w + 1).min(k) * m / k) as u64;
        let duplicates =
            self.first_duplicate_at_or_after(start)..self.first_duplicate_at_or_after(end);
        Slice {
            primaries: start..end,
            duplicates,
        }
    }
}

/// The devices one process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// Primary positions.
    pub primaries: Range<u64>,
    /// Duplicate numbers `j` (device index `M + j`).
    pub duplicates: Range<u64>,
}

impl Slice {
    /// Devices in the slice.
    pub fn len(&self) -> u64 {
        (self.primaries.end - self.primaries.start) + (self.duplicates.end - self.duplicates.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Roster indexes of the slice's devices, primaries first.
    pub fn indexes(&self, roster: &Roster) -> impl Iterator<Item = u64> {
        let m = roster.primaries();
        self.primaries
            .clone()
            .chain(self.duplicates.clone().map(move |j| m + j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(trackers: u32, dvrs: u32, duplicates: u32) -> Roster {
        Roster::new(
            trackers,
            "860000000000000",
            dvrs,
            "86510000000000",
            duplicates,
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn imeis_count_up_from_the_base() {
        let imei = imei_for("860000000000000", 41).map(|i| i.to_string()).ok();
        assert_eq!(imei.as_deref(), Some("860000000000041"));
    }

    #[test]
    fn imei_keeps_leading_zeros() {
        let imei = imei_for("000000000000001", 1).map(|i| i.to_string()).ok();
        assert_eq!(imei.as_deref(), Some("000000000000002"));
    }

    #[test]
    fn imei_range_may_not_grow_a_digit() {
        assert!(imei_for("999999999999999", 1).is_err());
    }

    #[test]
    fn imei_base_must_be_digits() {
        assert!(imei_for("86000000000000x", 0).is_err());
    }

    #[test]
    fn imei_range_holds_exactly_the_run() {
        let ours = imei_range("860000000000000", 10);
        assert!(ours("860000000000000"));
        assert!(ours("860000000000009"));
        assert!(!ours("860000000000010"));
        assert!(!ours("859999999999999"));
        assert!(!ours("0860000000000001"));
        assert!(!ours("x"));
    }

    #[test]
    fn dvr_imei_ends_with_the_luhn_digit() {
        // 86924706000176 -> check digit 2 (the JC450 IMEI the JT/T 808 tests use).
        let imei = dvr_imei_for(86_924_706_000_176, 0)
            .map(|i| i.to_string())
            .ok();
        assert_eq!(imei.as_deref(), Some("869247060001762"));
    }

    #[test]
    fn dvr_imeis_count_up_in_the_first_14_digits() {
        let imei = dvr_imei_for(86_924_706_000_176, 1)
            .map(|i| i.to_string())
            .ok();
        assert_eq!(imei.as_deref(), Some("869247060001770"));
    }

    #[test]
    fn every_dvr_imei_has_a_phone_under_the_new_imei_rule() {
        use crate::jt808_terminal::{phone_for, Jt808Version};
        for i in 0..200 {
            let imei = dvr_imei_for(86_510_000_000_000, i).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                phone_for(&imei, true, Jt808Version::V2013).is_some(),
                "{imei}"
            );
        }
    }

    #[test]
    fn dvr_base_takes_14_digits_or_drops_a_15th() {
        assert_eq!(dvr_base("86510000000000").ok(), Some(86_510_000_000_000));
        assert_eq!(dvr_base("865100000000002").ok(), Some(86_510_000_000_000));
        assert!(dvr_base("8651000000000").is_err());
        assert!(dvr_base("8651000000000x").is_err());
    }

    #[test]
    fn dvr_imei_may_not_grow_a_digit() {
        assert!(dvr_imei_for(MAX_BODY, 1).is_err());
    }

    #[test]
    fn dvr_index_needs_the_right_check_digit() {
        assert_eq!(
            dvr_index_of(86_924_706_000_176, 2, "869247060001762"),
            Some(0)
        );
        assert_eq!(
            dvr_index_of(86_924_706_000_176, 2, "869247060001770"),
            Some(1)
        );
        assert_eq!(dvr_index_of(86_924_706_000_176, 2, "869247060001763"), None);
        assert_eq!(dvr_index_of(86_924_706_000_176, 1, "869247060001770"), None);
        assert_eq!(dvr_index_of(86_924_706_000_176, 2, "86924706000176x"), None);
    }

    #[test]
    fn trackers_come_first_then_dvrs() {
        let r = roster(3, 2, 0);
        let first_dvr = r.device(3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first_dvr.family, Family::Jt808);
        assert_eq!(first_dvr.imei.as_str(), "865100000000002");
        assert_eq!(
            r.device(2).map(|d| d.imei.to_string()).ok().as_deref(),
            Some("860000000000002")
        );
        assert!(r.device(5).is_err());
    }

    #[test]
    fn imeis_map_back_to_their_group() {
        let r = roster(3, 2, 0);
        assert_eq!(
            r.group_of("860000000000001").map(|g| g.family),
            Some(Family::Gt06)
        );
        assert_eq!(
            r.group_of("865100000000002").map(|g| g.family),
            Some(Family::Jt808)
        );
        assert_eq!(r.group_of("860000000000003"), None);
        // The third DVR, one past the run.
        assert_eq!(r.group_of("865100000000028"), None);
        // A wrong check digit.
        assert_eq!(r.group_of("865100000000003"), None);
    }

    #[test]
    fn duplicates_are_spread_over_the_fleet() {
        let r = roster(8, 2, 2);
        // floor(j * 10 / 2): primaries 0 and 5.
        assert_eq!(r.duplicated_position(0), 0);
        assert_eq!(r.duplicated_position(1), 5);
        assert!(r.is_shared(0));
        assert!(r.is_shared(5));
        assert!(!r.is_shared(1));
        let dup = r.device(11).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dup.position, 5);
        assert!(dup.shared);
        assert!(dup.is_duplicate());
        assert_eq!(dup.imei.as_str(), "860000000000005");
    }

    #[test]
    fn a_duplicate_of_a_dvr_is_a_dvr() {
        let r = roster(1, 1, 2);
        let dup = r.device(3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dup.family, Family::Jt808);
        assert_eq!(dup.imei, r.imei_at(1).unwrap_or_else(|e| panic!("{e}")));
    }

    #[test]
    fn group_sizes_add_up_to_the_roster() {
        let r = roster(7, 5, 4);
        let total: u64 = Group::ALL.iter().map(|&g| r.group_len(g)).sum();
        assert_eq!(total, r.len());
        // Primaries 0, 3, 6 (trackers) and 9 (a DVR) are reused.
        assert_eq!(
            r.group_len(Group {
                family: Family::Gt06,
                shared: true
            }),
            6
        );
        assert_eq!(
            r.group_len(Group {
                family: Family::Jt808,
                shared: false
            }),
            4
        );
    }

    #[test]
    fn too_many_duplicates_are_refused_naming_the_flag() {
        let err = Roster::new(1, "860000000000000", 1, "86510000000000", 3)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--duplicate-imeis"), "{err}");
    }

    #[test]
    fn overlapping_imei_ranges_are_refused() {
        let err = Roster::new(100, "865100000000000", 1, "86510000000000", 0)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dvr-imei-base"), "{err}");
    }

    #[test]
    fn an_empty_run_is_refused() {
        assert!(Roster::new(0, "860000000000000", 0, "86510000000000", 0).is_err());
    }

    #[test]
    fn slices_cover_every_device_once() {
        let r = roster(10, 7, 5);
        let mut seen = Vec::new();
        for w in 0..3 {
            seen.extend(r.slice(w, 3).indexes(&r));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..r.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_duplicate_lives_with_its_primary() {
        let r = roster(10, 7, 5);
        for w in 0..4 {
            let slice = r.slice(w, 4);
            for j in slice.duplicates.clone() {
                assert!(
                    slice.primaries.contains(&r.duplicated_position(j)),
                    "worker {w}: duplicate {j}"
                );
            }
        }
    }

    #[test]
    fn slices_differ_by_at_most_one_primary() {
        let r = roster(10, 0, 0);
        let sizes: Vec<u64> = (0..3).map(|w| r.slice(w, 3).len()).collect();
        assert_eq!(sizes, vec![3, 3, 4]);
    }
}
