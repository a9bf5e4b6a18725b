//! Reassembly of subpackaged JT/T 808 messages (properties bit 13: the header carries
//! `total` and a 1-based `index`). Long 0x0104 parameter replies, 0x0801 photos and 0x1205
//! resource lists arrive this way.
//!
//! Packages are grouped by (message id, total), as the standard's peers do: serials are not
//! reliably consecutive across packages (SmallChi's photo capture skips some). Memory is
//! bounded three ways ([`Limits`]): packages per message, bytes per message, concurrent
//! messages. Time is passed in by the caller, so the whole thing stays pure: [`Reassembler::poll`]
//! reports messages that went quiet (with the missing indexes, for a 0x8003 request) and
//! drops those that stayed quiet past the timeout.

use chrono::{DateTime, Duration, Utc};

use super::header::Header;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `total` accepted.
    pub max_packages: u16,
    /// Largest reassembled body, in bytes.
    pub max_bytes: usize,
    /// Messages being reassembled at once (per connection).
    pub max_concurrent: usize,
    /// Quiet time after which the missing packages are reported for a 0x8003 request.
    pub resend_after: Duration,
    /// Quiet time after which an incomplete message is dropped.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packages: 2048,
            max_bytes: 2 * 1024 * 1024,
            max_concurrent: 4,
            resend_after: Duration::seconds(10),
            timeout: Duration::seconds(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubpackageError {
    #[error("package index {index} of {total} is out of range")]
    BadIndex { index: u16, total: u16 },
    #[error("{total} packages exceed the limit {max}")]
    TooManyPackages { total: u16, max: u16 },
    #[error("reassembled body would exceed {max} bytes")]
    TooLarge { max: usize },
    #[error("{max} messages are already being reassembled")]
    TooManyConcurrent { max: usize },
}

impl SubpackageError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SubpackageError::BadIndex { .. } => "bad_index",
            SubpackageError::TooManyPackages { .. } => "too_many_packages",
            SubpackageError::TooLarge { .. } => "too_large",
            SubpackageError::TooManyConcurrent { .. } => "too_many_concurrent",
        }
    }
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// The first package's header (or the earliest seen, with the serial it implies), with
    /// `package: None`: what [`super::decode_body`] and a 0x8001 reply need.
    pub header: Header,
    pub body: Vec<u8>,
}

/// A message that went quiet before all its packages arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The first package's header as in [`Reassembled::header`]; its `serial` is the
    /// "original serial" a 0x8003 names.
    pub header: Header,
    pub total: u16,
    /// Missing 1-based indexes, ascending.
    pub missing: Vec<u16>,
    /// True when the message was dropped (timeout): do not request it again.
    pub expired: bool,
}

struct Pending {
    header: Header,
    total: u16,
    /// Serial of package 1 when seen; else inferred from the lowest index seen.
    first_serial_known: bool,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    last_activity: DateTime<Utc>,
    reported: bool,
}

/// Per-connection reassembly state.
pub struct Reassembler {
    limits: Limits,
    pending: Vec<Pending>,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            pending: Vec::new(),
        }
    }

    /// Messages currently incomplete.
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }

    /// Adds one package (`header.package` must be set; a header without it is returned
    /// as complete at once). Returns the whole message when this package completes it. A
    /// repeated index keeps the first copy.
    pub fn push(
        &mut self,
        header: &Header,
        fragment: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<Reassembled>, SubpackageError> {
        let Some(pkg) = header.package else {
            return Ok(Some(Reassembled {
                header: *header,
                body: fragment.to_vec(),
            }));
        };
        let (total, index) = (pkg.total, pkg.index);
        if total == 0 || index == 0 || index > total {
            return Err(SubpackageError::BadIndex { index, total });
        }
        if total > self.limits.max_packages {
            return Err(SubpackageError::TooManyPackages {
                total,
                max: self.limits.max_packages,
            });
        }
        let slot = match self
            .pending
            .iter()
            .position(|p| p.header.msg_id == header.msg_id && p.total == total)
        {
            Some(i) => i,
            None => {
                if self.pending.len() >= self.limits.max_concurrent {
                    return Err(SubpackageError::TooManyConcurrent {
                        max: self.limits.max_concurrent,
                    });
                }
                let mut h = *header;
                h.package = None;
                h.serial = header.serial.wrapping_sub(index - 1);
                self.pending.push(Pending {
                    header: h,
                    total,
                    first_serial_known: index == 1,
                    parts: vec![None; usize::from(total)],
                    received: 0,
                    bytes: 0,
                    last_activity: now,
                    reported: false,
                });
                self.pending.len() - 1
            }
        };
        let max_bytes = self.limits.max_bytes;
        let p = &mut self.pending[slot];
        let i = usize::from(index - 1);
        if p.parts[i].is_none() {
            if p.bytes + fragment.len() > max_bytes {
                self.pending.swap_remove(slot);
                return Err(SubpackageError::TooLarge { max: max_bytes });
            }
            p.parts[i] = Some(fragment.to_vec());
            p.bytes += fragment.len();
            p.received += 1;
            if index == 1 && !p.first_serial_known {
                p.header.serial = header.serial;
                p.first_serial_known = true;
            }
        }
        p.last_activity = now;
        p.reported = false;
        if p.received < usize::from(p.total) {
            return Ok(None);
        }
        let done = self.pending.swap_remove(slot);
        let mut body = Vec::with_capacity(done.bytes);
        for part in done.parts.into_iter().flatten() {
            body.extend_from_slice(&part);
        }
        Ok(Some(Reassembled {
            header: done.header,
            body,
        }))
    }

    /// Missing indexes of the message (`msg_id`, `total`) being reassembled, if any.
    pub fn missing(&self, msg_id: u16, total: u16) -> Option<Vec<u16>> {
        self.pending
            .iter()
            .find(|p| p.header.msg_id == msg_id && p.total == total)
            .map(missing)
    }

    /// Reports messages quiet for [`Limits::resend_after`] (once per quiet spell, so the
    /// channel sends one 0x8003 each time) and drops, reporting them with `expired`, those
    /// quiet for [`Limits::timeout`].
    pub fn poll(&mut self, now: DateTime<Utc>) -> Vec<Gap> {
        let mut out = Vec::new();
        let limits = self.limits;
        self.pending.retain_mut(|p| {
            let quiet = now - p.last_activity;
            if quiet >= limits.timeout {
                out.push(Gap {
                    header: p.header,
                    total: p.total,
                    missing: missing(p),
                    expired: true,
                });
                return false;
            }
            if quiet >= limits.resend_after && !p.reported {
                p.reported = true;
                out.push(Gap {
                    header: p.header,
                    total: p.total,
                    missing: missing(p),
                    expired: false,
                });
            }
            true
        });
        out
    }
}

fn missing(p: &Pending) -> Vec<u16> {
    p.parts
        .iter()
        .enumerate()
        .filter(|(_, part)| part.is_none())
        .map(|(i, _)| i as u16 + 1)
        .collect()
}
