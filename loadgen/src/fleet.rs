//! A load run: N simulated trackers against one gateway for a bounded time, paced
//! connects, progress once a second, and (with a push receiver) an account of what the hub
//! delivered. This is what the `iothub-loadgen trackers` command runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use iothub::imei::Imei;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::rate::ConnectLimiter;
use crate::receiver::PushReceiver;
use crate::report::{self, KindReport, PushSummary, Report};
use crate::stats::{Counters, Kind, SentLog};
use crate::tracker::{SimTracker, SimTrackerConfig};

/// Most error messages kept for the report.
const ERROR_SAMPLES: usize = 10;

/// Most GPS fixes timed for latency (about 100 bytes each).
const SENT_LOG_CAPACITY: usize = 5_000_000;

/// Settings of a load run (the `trackers` command's flags).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub target: SocketAddr,
    pub count: u32,
    /// First IMEI; tracker `i` uses `imei_base + i`, zero-padded to the same width.
    pub imei_base: String,
    pub gps_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Zero: no periodic alarms.
    pub alarm_interval: Duration,
    pub alarm_code: u8,
    pub duration: Duration,
    /// New connections per second, shared by first connects and reconnects; 0 = unpaced.
    pub connect_rate: f64,
    /// Local addresses to connect from, round-robin; empty = let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    pub ack_timeout: Duration,
    /// Pause before a tracker whose connection ended reconnects.
    pub reconnect_delay: Duration,
    /// Longest wait for outstanding deliveries after the run.
    pub drain_timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

impl FleetConfig {
    /// Defaults for `count` trackers against `target`.
    pub fn new(target: SocketAddr, count: u32) -> FleetConfig {
        FleetConfig {
            target,
            count,
            imei_base: "860000000000000".to_owned(),
            gps_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(60),
            alarm_interval: Duration::ZERO,
            alarm_code: 1,
            duration: Duration::from_secs(60),
            connect_rate: 500.0,
            source_ips: Vec::new(),
            ack_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            progress: true,
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

/// Parses source addresses: `127.0.1.1-127.0.1.50` (inclusive IPv4 range), a single address,
/// or a comma-separated list of either. At most 65 536 addresses.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    const MAX: u64 = 65_536;
    let mut ips = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: Ipv4Addr = from.trim().parse().with_context(|| format!("{from:?}"))?;
            let to: Ipv4Addr = to.trim().parse().with_context(|| format!("{to:?}"))?;
            let (a, b) = (u32::from(from), u32::from(to));
            if b < a {
                bail!("source range {part} ends before it starts");
            }
            if u64::from(b - a) + 1 + ips.len() as u64 > MAX {
                bail!("more than {MAX} source addresses");
            }
            ips.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            ips.push(part.parse().with_context(|| format!("{part:?}"))?);
            if ips.len() as u64 > MAX {
                bail!("more than {MAX} source addresses");
            }
        }
    }
    if ips.is_empty() {
        bail!("no source address in {spec:?}");
    }
    Ok(ips)
}

struct Shared {
    config: FleetConfig,
    counters: Arc<Counters>,
    sent_log: Arc<SentLog>,
    limiter: ConnectLimiter,
    errors: Mutex<Vec<String>>,
    deadline: Instant,
}

impl Shared {
    fn error(&self, message: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < ERROR_SAMPLES {
            errors.push(message);
        }
    }
}

/// Runs the fleet for `config.duration`; with `receiver`, then waits (at most
/// `drain_timeout`) for the deliveries and accounts for them.
pub async fn run(config: FleetConfig, receiver: Option<&PushReceiver>) -> anyhow::Result<Report> {
    if config.count == 0 {
        bail!("--count must be at least 1");
    }
    // Fail before connecting anything if the IMEI range does not fit.
    imei_for(&config.imei_base, u64::from(config.count - 1))?;

    let started = Instant::now();
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::new()),
        sent_log: Arc::new(SentLog::new(SENT_LOG_CAPACITY)),
        limiter: ConnectLimiter::new(config.connect_rate),
        errors: Mutex::new(Vec::new()),
        deadline: started + config.duration,
        config,
    });

    let mut tasks = JoinSet::new();
    for index in 0..shared.config.count {
        tasks.spawn(drive(shared.clone(), index));
    }

    // Trackers stop at the deadline by themselves; one still connecting or logging in has
    // its own timeouts. Give them a bounded grace period, then stop the stragglers.
    let grace = shared.config.ack_timeout + Duration::from_secs(10);
    let waiting = async { while tasks.join_next().await.is_some() {} };
    let printing = async {
        if shared.config.progress {
            print_progress(&shared, started, receiver).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let finished = tokio::time::timeout_at(shared.deadline + grace, async {
        tokio::select! {
            _ = waiting => {}
            _ = printing => {}
        }
    })
    .await;
    if finished.is_err() {
        tasks.abort_all();
    }
    let elapsed = started.elapsed();
    let counters = shared.counters.snapshot();
    let ours = imei_range(&shared.config.imei_base, shared.config.count);

    let mut push = None;
    let mut latency = None;
    if let Some(receiver) = receiver {
        let drain_started = Instant::now();
        let complete = drain(receiver, &counters, &ours, shared.config.drain_timeout).await;
        push = Some(PushSummary {
            url: receiver.url(),
            requests: receiver.requests(),
            bad_requests: receiver.bad_requests(),
            drain_s: drain_started.elapsed().as_secs(),
            complete,
        });
        let delivered: Vec<_> = receiver.view(|v| {
            v.records("/pushgps")
                .iter()
                .filter_map(|r| {
                    let imei = r.imei.clone().filter(|i| ours(i))?;
                    let time = r.record.get("gpsTime")?.as_str()?.to_owned();
                    Some(((imei, time), r.received_at, r.duplicate))
                })
                .collect()
        });
        latency = report::latency(delivered, &shared.sent_log);
    }

    let kinds = Kind::ALL
        .iter()
        .map(|&kind| {
            let delivered = receiver.and_then(|r| r.view(|v| report::delivered(kind, v, &ours)));
            KindReport::new(kind, &counters, delivered)
        })
        .collect();
    let error_samples = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        target: shared.config.target.to_string(),
        trackers: shared.config.count,
        duration_s: elapsed.as_secs_f64(),
        frames_per_s: report::rate(counters_frames(&counters), elapsed),
        counters,
        kinds,
        push,
        latency,
        error_samples,
    })
}

fn counters_frames(s: &crate::stats::Snapshot) -> u64 {
    s.sent.iter().map(|(_, n)| n).sum()
}

/// Waits until every expected record has arrived or `timeout` passes.
async fn drain(
    receiver: &PushReceiver,
    counters: &crate::stats::Snapshot,
    ours: &dyn Fn(&str) -> bool,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let complete = receiver.view(|v| {
            Kind::ALL.iter().all(|&kind| {
                match (
                    report::expected(kind, counters),
                    report::delivered(kind, v, ours),
                ) {
                    (Some(expected), Some(d)) => d.unique >= expected,
                    _ => true,
                }
            })
        });
        if complete {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Polled rather than woken per delivery: the check scans login records.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One tracker for the whole run: connect, log in, behave until the deadline; reconnect
/// after a pause when the connection ends early.
async fn drive(shared: Arc<Shared>, index: u32) {
    let config = &shared.config;
    let imei = match imei_for(&config.imei_base, u64::from(index)) {
        Ok(imei) => imei,
        Err(e) => {
            shared.error(format!("tracker {index}: {e:#}"));
            return;
        }
    };
    let mut tracker_config = SimTrackerConfig::new(imei);
    tracker_config.source_ip = (!config.source_ips.is_empty())
        .then(|| config.source_ips[index as usize % config.source_ips.len()]);
    tracker_config.heartbeat_every = config.heartbeat_interval;
    tracker_config.gps_every = config.gps_interval;
    tracker_config.alarm_every = config.alarm_interval;
    tracker_config.alarm_code = config.alarm_code;
    tracker_config.ack_timeout = config.ack_timeout;
    tracker_config.counters = shared.counters.clone();
    tracker_config.sent_log = Some(shared.sent_log.clone());

    let mut first = true;
    loop {
        if !first {
            let resume = Instant::now() + config.reconnect_delay;
            if resume >= shared.deadline {
                return;
            }
            tokio::time::sleep_until(resume).await;
        }
        first = false;
        shared.limiter.acquire().await;
        if Instant::now() >= shared.deadline {
            return;
        }
        let mut tracker = match SimTracker::connect(config.target, tracker_config.clone()).await {
            Ok(t) => t,
            Err(e) => {
                shared.error(format!("{imei}: {e}"));
                continue;
            }
        };
        let result = match tracker.login().await {
            Ok(()) => tracker.run_until(shared.deadline).await,
            Err(e) => Err(e),
        };
        tracker.close().await;
        match result {
            Ok(()) => return,
            Err(e) => shared.error(format!("{imei}: {e}")),
        }
    }
}

async fn print_progress(shared: &Shared, started: Instant, receiver: Option<&PushReceiver>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_frames = 0;
    let mut last_acks = 0;
    loop {
        tick.tick().await;
        let c = &shared.counters;
        let frames = c.frames_sent();
        let acks = c.acks_received();
        let pushed = receiver.map_or(String::new(), |r| {
            r.view(|v| {
                format!(
                    " pushed: gps={} hb={} alarm={} event={}",
                    v.count("/pushgps"),
                    v.count("/pushhb"),
                    v.count("/pushalarm"),
                    v.count("/pushevent")
                )
            })
        });
        println!(
            "t={:>4}s online={}/{} frames/s={} acks/s={} commands={} ack_timeouts={} errors={}{pushed}",
            started.elapsed().as_secs(),
            c.online.load(Ordering::Relaxed),
            shared.config.count,
            frames - last_frames,
            acks - last_acks,
            c.commands_answered.load(Ordering::Relaxed),
            c.ack_timeouts.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        );
        last_frames = frames;
        last_acks = acks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn source_range_is_inclusive() {
        let ips = parse_source_ips("127.0.1.1-127.0.1.50").unwrap_or_default();
        assert_eq!(ips.len(), 50);
        assert_eq!(
            ips.first(),
            Some(
                &"127.0.1.1"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert_eq!(
            ips.last(),
            Some(
                &"127.0.1.50"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
    }

    #[test]
    fn source_range_crosses_octets() {
        let ips = parse_source_ips("127.0.1.255-127.0.2.1").unwrap_or_default();
        assert_eq!(ips.len(), 3);
    }

    #[test]
    fn source_list_mixes_ranges_and_addresses() {
        let ips = parse_source_ips("127.0.0.2, 127.0.0.10-127.0.0.11").unwrap_or_default();
        assert_eq!(ips.len(), 3);
    }

    #[test]
    fn bad_source_specs_are_refused() {
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("10.0.0.0-10.1.0.0").is_err());
    }
}
