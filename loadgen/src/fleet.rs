//! A load run: GT06 trackers and JT/T 808 DVRs against the hub's gateways for a bounded
//! time, with paced connects, jittered reconnects, optional duplicate IMEIs, an optional
//! instruction load, progress once a second, and an account of what the hub delivered
//! (push receiver, Kafka, or both). This is what the `iothub-loadgen trackers` command runs.
//!
//! # Shape of a run
//! 1. The roster ([`crate::roster`]) says who takes part; bad flags are refused before any
//!    connection opens.
//! 2. The devices run, in this process or in worker processes ([`crate::workers`]). Each one
//!    connects when the shared pacer lets it, logs in (a DVR registers first, then
//!    authenticates with its code on every later connection), behaves until the deadline,
//!    and reconnects after a jittered pause when its connection ends early.
//! 3. Meanwhile the instruction load ([`crate::instruct`]) sends sendInstructs to devices
//!    that are online, until shortly before the deadline.
//! 4. After the deadline the run waits (at most `drain_timeout`) until each verifier has
//!    every record the hub owes, then builds the [`Report`].
//!
//! # Takeovers
//! With duplicate IMEIs the hub's "newest connection wins" closes the older connection of
//! the two holders. A device whose connection the hub closed counts a *takeover*, not an
//! error, when the other holder completes a login after its own, by the time the close is
//! seen or within a moment of it (the hub closes the old connection and acknowledges the new
//! login at about the same time, so either may be seen first). Both holders of an IMEI
//! always run in the same process, so this is known without asking the hub. A DVR whose
//! IMEI is shared registers on every connection: the other holder's registration replaces
//! the code the hub stores.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::instruct::{InstructConfig, InstructLoad, InstructStats, OnlineSet, Targets};
use crate::jt808_terminal::{Jt808Version, SimTerminal, SimTerminalConfig, TerminalError};
use crate::kafka::KafkaVerifier;
use crate::media::LiveMedia;
use crate::rate::ConnectLimiter;
use crate::receiver::PushReceiver;
use crate::report::{self, DeliverySource, KafkaSummary, PushSummary, Report};
use crate::roster::{Device, Family, Group, Roster, Slice};
use crate::stats::{Counters, SentLog, Snapshot};
use crate::tracker::{SimTracker, SimTrackerConfig, TrackerError};
use crate::workers::{
    self, GroupCounts, PoolView, WallAnchor, WorkerLaunch, WorkerLine, WorkerPool, WorkerSpec,
    WORKER_SENT_LOG_CAPACITY,
};

pub use crate::roster::{imei_for, imei_range};

/// Most error messages kept for the report (per process).
const ERROR_SAMPLES: usize = 10;

/// Most GPS fixes timed for latency in a single-process run (about 100 bytes each).
const SENT_LOG_CAPACITY: usize = 5_000_000;

/// Worker processes start a little after the parent; the parent allows them this much more.
const WORKER_START_SLACK: Duration = Duration::from_secs(10);

/// How often the drain checks the verifiers.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// JT/T 808 message id of the authentication a refused code answers.
const MSG_AUTHENTICATE: u16 = 0x0102;

/// Longest wait, after the hub closed a shared-IMEI device's connection, for the other
/// holder's login to complete (the ack of the login that caused the close).
const TAKEOVER_WINDOW: Duration = Duration::from_secs(2);

/// Settings of a load run (the `trackers` command's flags).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The hub's GT06 gateway.
    pub target: SocketAddr,
    /// GT06 trackers.
    pub trackers: u32,
    /// First tracker IMEI; tracker `i` uses `imei_base + i`, zero-padded to the same width.
    pub imei_base: String,
    pub gps_interval: Duration,
    /// Fixes per GPS report (see [`crate::tracker::SimTrackerConfig::gps_batch`]).
    pub gps_batch: u32,
    pub heartbeat_interval: Duration,
    /// Zero: no periodic alarms.
    pub alarm_interval: Duration,
    pub alarm_code: u8,
    /// JT/T 808 DVRs.
    pub dvrs: u32,
    /// The hub's JT/T 808 gateway.
    pub dvr_target: SocketAddr,
    pub dvr_version: Jt808Version,
    /// First 14 digits of the first DVR IMEI (a 15th is recomputed): see [`crate::roster`].
    pub dvr_imei_base: String,
    pub dvr_location_interval: Duration,
    pub dvr_heartbeat_interval: Duration,
    /// Zero: no periodic alarm reports.
    pub dvr_alarm_interval: Duration,
    /// Alarm word of the periodic DVR alarm reports (bit 0 = emergency).
    pub dvr_alarm_word: u32,
    /// Extra devices reusing the IMEIs of others, on purpose.
    pub duplicate_imeis: u32,
    pub duration: Duration,
    /// New connections per second, shared by first connects and reconnects; 0 = unpaced.
    pub connect_rate: f64,
    /// Local addresses to connect from, round-robin; empty = let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    pub ack_timeout: Duration,
    /// Pause before a device whose connection ended reconnects...
    pub reconnect_delay: Duration,
    /// ...plus a random part, up to this, so that a fleet cut off together does not come back
    /// in step.
    pub reconnect_jitter: Duration,
    /// Longest wait for outstanding deliveries after the run.
    pub drain_timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// sendInstruct load during the run.
    pub instruct: Option<InstructConfig>,
    /// Run the devices in worker processes.
    pub workers: Option<WorkerLaunch>,
    /// What a streaming DVR does on 0x9101/0x9201 (see `media_dvrs`); `None`: DVRs only
    /// answer.
    pub live_media: Option<Arc<dyn LiveMedia>>,
    /// How many DVRs (the first ones of the roster) stream with `live_media`.
    pub media_dvrs: u32,
}

impl FleetConfig {
    /// Defaults for `trackers` GT06 trackers against `target`, no DVRs.
    pub fn new(target: SocketAddr, trackers: u32) -> FleetConfig {
        FleetConfig {
            target,
            trackers,
            imei_base: "860000000000000".to_owned(),
            gps_interval: Duration::from_secs(1),
            gps_batch: 1,
            heartbeat_interval: Duration::from_secs(60),
            alarm_interval: Duration::ZERO,
            alarm_code: 1,
            dvrs: 0,
            dvr_target: SocketAddr::from(([127, 0, 0, 1], 21121)),
            dvr_version: Jt808Version::V2013,
            dvr_imei_base: "86510000000000".to_owned(),
            dvr_location_interval: Duration::from_secs(10),
            dvr_heartbeat_interval: Duration::from_secs(30),
            dvr_alarm_interval: Duration::ZERO,
            dvr_alarm_word: 1,
            duplicate_imeis: 0,
            duration: Duration::from_secs(60),
            connect_rate: 500.0,
            source_ips: Vec::new(),
            ack_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_secs(1),
            reconnect_jitter: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            progress: true,
            instruct: None,
            workers: None,
            live_media: None,
            media_dvrs: 0,
        }
    }

    /// The devices of the run; refuses IMEI bases and counts that do not fit.
    pub fn roster(&self) -> anyhow::Result<Roster> {
        Roster::new(
            self.trackers,
            &self.imei_base,
            self.dvrs,
            &self.dvr_imei_base,
            self.duplicate_imeis,
        )
    }

    /// Checks the settings that are not about IMEIs; errors name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            bail!("--connect-rate must be a number >= 0 (0 = no limit)");
        }
        if self.ack_timeout.is_zero() {
            bail!("--ack-timeout must be more than 0");
        }
        if !self.dvr_alarm_interval.is_zero() && self.dvr_alarm_word == 0 {
            bail!("--dvr-alarm-word must not be 0 when --dvr-alarm-interval is set");
        }
        if let Some(instruct) = &self.instruct {
            instruct.validate()?;
        }
        if let Some(w) = &self.workers {
            if w.count == 0 || w.count > 1024 {
                bail!("--workers must be 1..=1024");
            }
        }
        if self.media_dvrs > self.dvrs {
            bail!("--media-dvrs must not exceed --dvrs");
        }
        Ok(())
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

/// The pause before a device reconnects: `delay` plus a random part up to `jitter`.
pub fn reconnect_pause(delay: Duration, jitter: Duration, rng: &mut impl Rng) -> Duration {
    let micros = u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return delay;
    }
    delay.saturating_add(Duration::from_micros(rng.random_range(0..micros)))
}

/// Who counts what the hub delivered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verifiers<'a> {
    pub push: Option<&'a PushReceiver>,
    pub kafka: Option<&'a KafkaVerifier>,
}

impl<'a> Verifiers<'a> {
    /// Nothing is verified: the report has no delivered, lost or duplicated counts.
    pub fn none() -> Verifiers<'a> {
        Verifiers::default()
    }

    pub fn push(receiver: &'a PushReceiver) -> Verifiers<'a> {
        Verifiers {
            push: Some(receiver),
            kafka: None,
        }
    }
}

/// The open-files limit of this process (the soft limit).
fn open_files_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(workers::MAX_OPEN_FILES, |(soft, _)| soft)
}

/// Runs the fleet for `config.duration`; then waits (at most `drain_timeout`) for the
/// verifiers to see every owed record and accounts for them.
pub async fn run(config: FleetConfig, verifiers: Verifiers<'_>) -> anyhow::Result<Report> {
    let roster = config.roster()?;
    config.validate()?;
    let launch = config.workers.clone().filter(|w| w.count > 1);
    match &launch {
        None => workers::check_fits(
            roster.len(),
            open_files_limit(),
            "this process",
            roster.len(),
        )?,
        Some(w) => {
            if u64::from(w.count) > roster.primaries() {
                bail!(
                    "--workers {}: more processes than the {} devices",
                    w.count,
                    roster.primaries()
                );
            }
            for i in 0..w.count {
                let devices = roster.slice(i, w.count).len();
                let who = format!("worker {i}/{}", w.count);
                workers::check_fits(devices, workers::MAX_OPEN_FILES, &who, roster.len())
                    .context("--workers")?;
                workers::source_slice(&config.source_ips, i, w.count)?;
            }
        }
    }

    let started = Instant::now();
    let deadline = started + config.duration;
    let online = Arc::new(OnlineSet::new(roster.primaries()));
    let (mut devices, counts) = match &launch {
        None => {
            let slice = roster.slice(0, 1);
            let fleet = LocalFleet::start(
                &config,
                &roster,
                &slice,
                config.source_ips.clone(),
                online.clone(),
                SENT_LOG_CAPACITY,
                deadline,
            );
            let counts = Counts::Local(fleet.shared.clone());
            (Devices::Local(fleet), counts)
        }
        Some(w) => {
            let pool = WorkerPool::spawn(w, &roster, online.clone())?;
            let counts = Counts::Workers(pool.view());
            (Devices::Workers(pool), counts)
        }
    };
    let instruct = match &config.instruct {
        Some(c) => {
            let stop_at = deadline
                .checked_sub(c.settle)
                .filter(|t| *t > started)
                .unwrap_or(started);
            let targets = Arc::new(Targets::new(roster.clone(), online.clone()));
            Some(InstructLoad::start(c.clone(), targets, stop_at)?)
        }
        None => None,
    };

    // Devices stop at the deadline by themselves; one still connecting or logging in has
    // its own timeouts. Give them a bounded grace period, then stop the stragglers.
    let mut grace = config.ack_timeout + Duration::from_secs(10);
    if launch.is_some() {
        grace += WORKER_START_SLACK;
    }
    let progress = Progress {
        counts,
        started,
        devices: roster.len(),
        verifiers,
        instruct: instruct.as_ref().map(|l| l.stats().clone()),
    };
    let printing = async {
        if config.progress {
            progress.print_every_second().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let waited = tokio::time::timeout_at(deadline + grace, async {
        tokio::select! {
            result = devices.wait() => result,
            _ = printing => Ok(()),
        }
    })
    .await;
    match waited {
        Ok(result) => result?,
        Err(_) => devices.abort(grace)?,
    }
    let outcome = devices.outcome();
    let instructions = match instruct {
        Some(load) => Some(load.finish().await),
        None => None,
    };
    let elapsed = started.elapsed();

    let present: Vec<Group> = Group::ALL
        .into_iter()
        .filter(|&g| roster.group_len(g) > 0)
        .collect();
    let ours = |group: Group| {
        let roster = &roster;
        move |imei: &str| roster.group_of(imei) == Some(group)
    };
    let push: Option<&dyn DeliverySource> = verifiers.push.map(|p| p as &dyn DeliverySource);
    let kafka: Option<&dyn DeliverySource> = verifiers.kafka.map(|k| k as &dyn DeliverySource);
    let all_complete = |source: &dyn DeliverySource| {
        present
            .iter()
            .all(|&g| report::complete(g, &outcome.groups[g.index()], source, &ours(g)))
    };

    let drain_started = Instant::now();
    let drain_deadline = drain_started + config.drain_timeout;
    let (mut push_done, mut kafka_done) = (None, None);
    loop {
        let now = Instant::now();
        if push_done.is_none() && push.is_none_or(all_complete) {
            push_done = Some(now);
        }
        if kafka_done.is_none() && kafka.is_none_or(all_complete) {
            kafka_done = Some(now);
        }
        if (push_done.is_some() && kafka_done.is_some()) || now >= drain_deadline {
            break;
        }
        // Polled rather than woken per delivery: the check scans login records.
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drained_s = |done: Option<Instant>| {
        done.unwrap_or_else(Instant::now)
            .saturating_duration_since(drain_started)
            .as_secs()
    };

    let latency = verifiers.push.and_then(|receiver| {
        let delivered: Vec<_> = receiver.view(|v| {
            v.records("/pushgps")
                .iter()
                .filter_map(|r| {
                    let imei = r.imei.clone().filter(|i| roster.position_of(i).is_some())?;
                    let time = r.record.get("gpsTime")?.as_str()?.to_owned();
                    Some(((imei, time), r.received_at, r.duplicate))
                })
                .collect()
        });
        report::latency(delivered, &outcome.sent)
    });
    let push_summary = verifiers.push.map(|r| PushSummary {
        url: r.url(),
        requests: r.requests(),
        bad_requests: r.bad_requests(),
        drain_s: drained_s(push_done),
        complete: push_done.is_some(),
    });
    let kafka_summary = verifiers.kafka.map(|k| KafkaSummary {
        brokers: k.brokers().to_owned(),
        topics: k.topics().to_vec(),
        records: k.records(),
        malformed: k.malformed(),
        errors: k.errors(),
        drain_s: drained_s(kafka_done),
        complete: kafka_done.is_some(),
    });

    let groups = present
        .iter()
        .map(|&g| {
            let target = match g.family {
                Family::Gt06 => config.target,
                Family::Jt808 => config.dvr_target,
            };
            report::group_report(
                g,
                target.to_string(),
                roster.group_len(g),
                outcome.groups[g.index()].clone(),
                push,
                kafka,
                &ours(g),
            )
        })
        .collect();
    let mut total = Snapshot::default();
    for g in &outcome.groups {
        total.merge(g);
    }
    Ok(Report {
        workers: launch.as_ref().map_or(1, |w| w.count),
        duration_s: elapsed.as_secs_f64(),
        frames_per_s: report::rate(total.frames_sent(), elapsed),
        counters: total,
        groups,
        push: push_summary,
        kafka: kafka_summary,
        latency,
        instructions,
        error_samples: outcome.error_samples,
    })
}

/// The worker side of `--workers`: runs this process's slice of the roster and writes
/// [`WorkerLine`]s on stdout (see [`crate::workers`]).
pub async fn run_worker(mut config: FleetConfig, spec: WorkerSpec) -> anyhow::Result<()> {
    let roster = config.roster()?;
    config.validate()?;
    // `--connect-rate` is the whole run's: each worker paces its share.
    config.connect_rate /= f64::from(spec.count.max(1));
    let slice = roster.slice(spec.index, spec.count);
    workers::check_fits(
        slice.len(),
        open_files_limit(),
        &format!("worker {spec}"),
        roster.len(),
    )?;
    let source_ips = workers::source_slice(&config.source_ips, spec.index, spec.count)?;
    let anchor = WallAnchor::now();
    let deadline = Instant::now() + config.duration;
    let online = Arc::new(OnlineSet::new(roster.primaries()));
    let mut fleet = LocalFleet::start(
        &config,
        &roster,
        &slice,
        source_ips,
        online.clone(),
        WORKER_SENT_LOG_CAPACITY,
        deadline,
    );
    let shared = fleet.shared.clone();
    let reporting = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            emit(&WorkerLine::Progress {
                groups: group_counts(&shared.snapshot()),
                online: online.runs(slice.primaries.clone()),
            })?;
        }
    };
    let grace = config.ack_timeout + Duration::from_secs(10);
    let waited = tokio::time::timeout_at(deadline + grace, async {
        tokio::select! {
            _ = fleet.tasks_done() => Ok::<(), anyhow::Error>(()),
            failed = reporting => failed,
        }
    })
    .await;
    match waited {
        Ok(result) => result?,
        Err(_) => fleet.tasks.abort_all(),
    }
    let outcome = fleet.outcome();
    for line in workers::final_lines(
        group_counts(&outcome.groups),
        outcome.error_samples,
        &outcome.sent,
        &anchor,
    ) {
        emit(&line)?;
    }
    Ok(())
}

/// Writes one worker line on stdout.
fn emit(line: &WorkerLine) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line).context("writing a worker line")?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .context("writing a worker line (has the parent gone?)")
}

fn group_counts(groups: &[Snapshot; 4]) -> GroupCounts {
    Group::ALL
        .iter()
        .map(|&g| (g, groups[g.index()].clone()))
        .collect()
}

/// Where the devices of a run live.
enum Devices {
    Local(LocalFleet),
    Workers(WorkerPool),
}

impl Devices {
    /// Until every device has stopped; a failed worker ends it with the error.
    async fn wait(&mut self) -> anyhow::Result<()> {
        match self {
            Devices::Local(fleet) => {
                fleet.tasks_done().await;
                Ok(())
            }
            Devices::Workers(pool) => pool.wait().await,
        }
    }

    /// The grace period ran out: stop local stragglers; workers still running fail the run.
    fn abort(&mut self, grace: Duration) -> anyhow::Result<()> {
        match self {
            Devices::Local(fleet) => {
                fleet.tasks.abort_all();
                Ok(())
            }
            Devices::Workers(pool) => bail!(
                "{} worker processes were still running {}s after the end of the run",
                pool.count(),
                grace.as_secs()
            ),
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Devices::Local(fleet) => fleet.outcome(),
            Devices::Workers(pool) => {
                let o = pool.outcome();
                Outcome {
                    groups: o.groups,
                    error_samples: o.error_samples,
                    sent: o.sent,
                }
            }
        }
    }
}

/// What the devices of a run amounted to.
struct Outcome {
    groups: [Snapshot; 4],
    error_samples: Vec<String>,
    sent: Arc<SentLog>,
}

/// Live counters for the progress line.
enum Counts {
    Local(Arc<Shared>),
    Workers(PoolView),
}

impl Counts {
    fn snapshot(&self) -> [Snapshot; 4] {
        match self {
            Counts::Local(shared) => shared.snapshot(),
            Counts::Workers(view) => view.snapshot(),
        }
    }
}

struct Progress<'a> {
    counts: Counts,
    started: Instant,
    devices: u64,
    verifiers: Verifiers<'a>,
    instruct: Option<Arc<InstructStats>>,
}

impl Progress<'_> {
    async fn print_every_second(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last_frames, mut last_acks) = (0, 0);
        loop {
            tick.tick().await;
            let mut c = Snapshot::default();
            for g in &self.counts.snapshot() {
                c.merge(g);
            }
            let (frames, acks) = (c.frames_sent(), c.acks_received());
            let instructions = self.instruct.as_ref().map_or(String::new(), |s| {
                let (sent, answered) = s.progress();
                format!(" instructions={answered}/{sent}")
            });
            let pushed = self.verifiers.push.map_or(String::new(), |r| {
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
            let kafka = self
                .verifiers
                .kafka
                .map_or(String::new(), |k| format!(" kafka={}", k.records()));
            println!(
                "t={:>4}s online={}/{} frames/s={} acks/s={} commands={} ack_timeouts={} errors={} disconnects={} takeovers={}{instructions}{pushed}{kafka}",
                self.started.elapsed().as_secs(),
                c.online,
                self.devices,
                frames.saturating_sub(last_frames),
                acks.saturating_sub(last_acks),
                c.commands_answered,
                c.ack_timeouts,
                c.errors,
                c.disconnects,
                c.takeovers,
            );
            (last_frames, last_acks) = (frames, acks);
        }
    }
}

/// State shared by the devices of this process.
struct Shared {
    config: FleetConfig,
    counters: [Arc<Counters>; 4],
    sent_log: Arc<SentLog>,
    limiter: ConnectLimiter,
    errors: Mutex<Vec<String>>,
    deadline: Instant,
    online: Arc<OnlineSet>,
    /// Completed logins per shared IMEI (by primary position), to tell takeovers apart.
    logins: HashMap<u64, AtomicU64>,
    source_ips: Vec<IpAddr>,
}

impl Shared {
    fn sample(&self, message: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < ERROR_SAMPLES {
            errors.push(message);
        }
    }

    fn snapshot(&self) -> [Snapshot; 4] {
        [0, 1, 2, 3].map(|i| self.counters[i].snapshot())
    }

    /// Logins of `position`'s IMEI completed so far (`None`: the IMEI is not shared).
    fn logins_completed(&self, position: u64) -> Option<u64> {
        self.logins
            .get(&position)
            .map(|n| n.load(Ordering::Acquire))
    }

    /// A holder of `position`'s IMEI has logged in; returns the count including this one.
    fn login_completed(&self, position: u64) -> Option<u64> {
        self.logins
            .get(&position)
            .map(|n| n.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Whether the hub closed this holder's connection for the other holder: another login
    /// completed after `mine` (this holder's own login, or the count when it started one
    /// that did not complete), now or within [`TAKEOVER_WINDOW`].
    async fn taken_over(&self, position: u64, mine: Option<u64>) -> bool {
        let (Some(completed), Some(mine)) = (self.logins.get(&position), mine) else {
            return false;
        };
        let until = Instant::now() + TAKEOVER_WINDOW.min(self.config.ack_timeout);
        loop {
            if completed.load(Ordering::Acquire) > mine {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // A rare event (only shared IMEIs, only on a close): polling is cheap enough.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The devices of this process, each a task.
struct LocalFleet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl LocalFleet {
    fn start(
        config: &FleetConfig,
        roster: &Roster,
        slice: &Slice,
        source_ips: Vec<IpAddr>,
        online: Arc<OnlineSet>,
        sent_capacity: usize,
        deadline: Instant,
    ) -> LocalFleet {
        let logins = slice
            .primaries
            .clone()
            .filter(|&p| roster.is_shared(p))
            .map(|p| (p, AtomicU64::new(0)))
            .collect();
        let shared = Arc::new(Shared {
            config: config.clone(),
            counters: std::array::from_fn(|_| Arc::new(Counters::new())),
            sent_log: Arc::new(SentLog::new(sent_capacity)),
            limiter: ConnectLimiter::new(config.connect_rate),
            errors: Mutex::new(Vec::new()),
            deadline,
            online,
            logins,
            source_ips,
        });
        let mut tasks = JoinSet::new();
        for (ordinal, index) in slice.indexes(roster).enumerate() {
            match roster.device(index) {
                Ok(device) => {
                    tasks.spawn(drive(shared.clone(), device, ordinal));
                }
                // The roster checked every IMEI when it was built.
                Err(e) => shared.sample(format!("device {index}: {e:#}")),
            }
        }
        LocalFleet { shared, tasks }
    }

    async fn tasks_done(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            groups: self.shared.snapshot(),
            error_samples: self
                .shared
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            sent: self.shared.sent_log.clone(),
        }
    }
}

/// How one connection of a device ended.
enum Ended {
    /// The run's deadline: the device is done.
    Deadline,
    ConnectFailed(String),
    /// The hub closed it because the other holder of the IMEI logged in.
    Takeover,
    Error(String),
}

/// One device for the whole run: connect, log in, behave until the deadline; reconnect
/// after a jittered pause when the connection ends early.
async fn drive(shared: Arc<Shared>, device: Device, ordinal: usize) {
    let config = &shared.config;
    let counters = shared.counters[device.group().index()].clone();
    let source_ip = shared
        .source_ips
        .get(ordinal % shared.source_ips.len().max(1))
        .copied();
    let mut rng = SmallRng::seed_from_u64(device.index ^ 0x7E0C_0A1E_C7D1_5EED);
    let mut auth_code: Option<String> = None;
    let mut first = true;
    loop {
        if !first {
            let pause = reconnect_pause(config.reconnect_delay, config.reconnect_jitter, &mut rng);
            let resume = Instant::now() + pause;
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
        let ended = match device.family {
            Family::Gt06 => tracker_session(&shared, &device, source_ip, &counters).await,
            Family::Jt808 => {
                dvr_session(&shared, &device, source_ip, &counters, &mut auth_code).await
            }
        };
        match ended {
            Ended::Deadline => return,
            Ended::ConnectFailed(e) => shared.sample(format!("{}: {e}", device.imei)),
            Ended::Takeover => {
                counters.takeovers.fetch_add(1, Ordering::Relaxed);
            }
            Ended::Error(e) => {
                counters.disconnects.fetch_add(1, Ordering::Relaxed);
                shared.sample(format!("{}: {e}", device.imei));
            }
        }
    }
}

/// The movement seed of a duplicate: its own, so the two holders of an IMEI never report
/// the same position at the same time (which the receiver would call a duplicate).
fn seed_for(device: &Device, imei_seed: u64) -> u64 {
    if device.is_duplicate() {
        imei_seed ^ device.index.rotate_left(32) ^ 0xD0B1_1CA7_E000_0000
    } else {
        imei_seed
    }
}

fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

async fn tracker_session(
    shared: &Shared,
    device: &Device,
    source_ip: Option<IpAddr>,
    counters: &Arc<Counters>,
) -> Ended {
    let config = &shared.config;
    let mut tc = SimTrackerConfig::new(device.imei);
    tc.source_ip = source_ip;
    tc.heartbeat_every = config.heartbeat_interval;
    tc.gps_every = config.gps_interval;
    tc.gps_batch = config.gps_batch;
    tc.alarm_every = config.alarm_interval;
    tc.alarm_code = config.alarm_code;
    tc.ack_timeout = config.ack_timeout;
    tc.counters = counters.clone();
    tc.sent_log = Some(shared.sent_log.clone());
    tc.seed = seed_for(device, tc.seed);
    let mut tracker = match SimTracker::connect(config.target, tc).await {
        Ok(t) => t,
        Err(e) => return Ended::ConnectFailed(e.to_string()),
    };
    let mut mine = shared.logins_completed(device.position);
    let result = match tracker.login().await {
        Ok(()) => {
            mine = shared.login_completed(device.position);
            shared.online.connected(device.position);
            let ran = tracker.run_until(shared.deadline).await;
            shared.online.disconnected(device.position);
            ran
        }
        Err(e) => Err(e),
    };
    tracker.close().await;
    match result {
        Ok(()) => Ended::Deadline,
        Err(e) => {
            let by_hub = match &e {
                TrackerError::Closed => true,
                TrackerError::Io(io) => closed_by_peer(io),
                _ => false,
            };
            if by_hub && shared.taken_over(device.position, mine).await {
                Ended::Takeover
            } else {
                Ended::Error(e.to_string())
            }
        }
    }
}

async fn dvr_session(
    shared: &Shared,
    device: &Device,
    source_ip: Option<IpAddr>,
    counters: &Arc<Counters>,
    auth_code: &mut Option<String>,
) -> Ended {
    let config = &shared.config;
    let mut tc = SimTerminalConfig::new(device.imei, config.dvr_version);
    tc.source_ip = source_ip;
    tc.heartbeat_every = config.dvr_heartbeat_interval;
    tc.location_every = config.dvr_location_interval;
    tc.alarm_every = config.dvr_alarm_interval;
    tc.alarm_word = config.dvr_alarm_word;
    tc.ack_timeout = config.ack_timeout;
    tc.counters = counters.clone();
    tc.sent_log = Some(shared.sent_log.clone());
    tc.seed = seed_for(device, tc.seed);
    // DVRs follow the trackers in the roster, duplicates come after both.
    let dvr_ordinal = device.index.checked_sub(u64::from(config.trackers));
    if dvr_ordinal.is_some_and(|n| n < u64::from(config.media_dvrs)) {
        tc.live_media = config.live_media.clone();
    }
    // A shared IMEI's stored code changes whenever the other holder registers.
    tc.auth_code = if device.shared {
        None
    } else {
        auth_code.clone()
    };
    let mut terminal = match SimTerminal::connect(config.dvr_target, tc).await {
        Ok(t) => t,
        Err(e) => return Ended::ConnectFailed(e.to_string()),
    };
    let mut mine = shared.logins_completed(device.position);
    let result = match login_dvr(&mut terminal, device.shared, counters).await {
        Ok(()) => {
            mine = shared.login_completed(device.position);
            *auth_code = terminal.auth_code().map(str::to_owned);
            shared.online.connected(device.position);
            let ran = terminal.run_until(shared.deadline).await;
            shared.online.disconnected(device.position);
            ran
        }
        Err(e) => Err(e),
    };
    terminal.close().await;
    match result {
        Ok(()) => Ended::Deadline,
        Err(e) => {
            let by_hub = match &e {
                TerminalError::Closed => true,
                TerminalError::Io(io) => closed_by_peer(io),
                _ => false,
            };
            if by_hub && shared.taken_over(device.position, mine).await {
                if matches!(e, TerminalError::Closed) {
                    // The terminal counts a closed connection as an error; this one was the
                    // takeover the run asked for.
                    counters.errors.fetch_sub(1, Ordering::Relaxed);
                }
                Ended::Takeover
            } else {
                Ended::Error(e.to_string())
            }
        }
    }
}

/// Registers when the terminal has no code, then authenticates; a refused code is
/// registered again once, as firmware does.
async fn login_dvr(
    terminal: &mut SimTerminal,
    shared_imei: bool,
    counters: &Counters,
) -> Result<(), TerminalError> {
    if terminal.auth_code().is_none() {
        terminal.register().await?;
    }
    match terminal.authenticate().await {
        Err(TerminalError::Rejected {
            msg_id: MSG_AUTHENTICATE,
            ..
        }) => {
            if shared_imei {
                // The other holder registered between this one's registration and its
                // authentication: expected, not an error.
                counters.errors.fetch_sub(1, Ordering::Relaxed);
            }
            terminal.register().await?;
            terminal.authenticate().await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_range_is_inclusive() {
        let ips = parse_source_ips("127.0.1.1-127.0.1.50").unwrap_or_default();
        assert_eq!(ips.len(), 50);
        assert_eq!(ips.first(), Some(&IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))));
        assert_eq!(ips.last(), Some(&IpAddr::V4(Ipv4Addr::new(127, 0, 1, 50))));
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

    #[test]
    fn reconnect_pause_stays_within_the_jitter() {
        let mut rng = SmallRng::seed_from_u64(1);
        let base = Duration::from_secs(1);
        let jitter = Duration::from_millis(500);
        for _ in 0..1000 {
            let pause = reconnect_pause(base, jitter, &mut rng);
            assert!(pause >= base && pause < base + jitter, "{pause:?}");
        }
    }

    #[test]
    fn reconnect_pauses_differ_between_devices() {
        let (mut a, mut b) = (SmallRng::seed_from_u64(1), SmallRng::seed_from_u64(2));
        let jitter = Duration::from_secs(1);
        assert_ne!(
            reconnect_pause(Duration::ZERO, jitter, &mut a),
            reconnect_pause(Duration::ZERO, jitter, &mut b)
        );
    }

    #[test]
    fn no_jitter_is_the_plain_delay() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            reconnect_pause(Duration::from_secs(2), Duration::ZERO, &mut rng),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_duplicate_moves_on_its_own_track() {
        let roster = Roster::new(2, "860000000000000", 0, "86510000000000", 1)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let primary = roster.device(0).unwrap_or_else(|e| panic!("{e}"));
        let duplicate = roster.device(2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(primary.imei, duplicate.imei);
        assert_eq!(seed_for(&primary, 42), 42);
        assert_ne!(seed_for(&duplicate, 42), 42);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut c = FleetConfig::new(addr, 1);
        c.connect_rate = f64::NAN;
        let err = c.validate().map_err(|e| e.to_string()).unwrap_err();
        assert!(err.contains("--connect-rate"), "{err}");
        let mut c = FleetConfig::new(addr, 1);
        c.dvr_alarm_interval = Duration::from_secs(1);
        c.dvr_alarm_word = 0;
        let err = c.validate().map_err(|e| e.to_string()).unwrap_err();
        assert!(err.contains("--dvr-alarm-word"), "{err}");
        let mut c = FleetConfig::new(addr, 0);
        c.dvrs = 0;
        assert!(c.roster().is_err());
    }

    #[tokio::test]
    async fn more_devices_than_a_process_holds_are_refused_before_connecting() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut c = FleetConfig::new(addr, 25_000);
        c.progress = false;
        let err = run(c, Verifiers::none())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(err.contains("--workers"), "{err}");
    }
}
