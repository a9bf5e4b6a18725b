//! Instruction load: the customer's side of `POST /api/device/sendInstruct`, at a fixed rate,
//! against the simulated devices that are logged in, while they report. It measures what an
//! operator sizes the API for: how many instructions per second come back with `_code` 100,
//! and how long each round trip takes (HDR histogram, p50/p99/max), over the whole run and
//! per window of the run's clock (a minute by default), so that a soak shows whether the
//! latency drifts as the run goes on.
//!
//! The load is open-loop: request `n` is due at `start + n / rate` whatever happened to the
//! earlier ones, so a slow hub shows up as latency and refusals, not as a quietly lower rate.
//! What the load cannot send is counted instead: a request due while `max_in_flight` are
//! still out, or while no device is free to take one, is *skipped*. A device gets at most
//! one instruction at a time (the hub answers a second one `_code` 302, busy), and targets
//! are taken round-robin over the roster, so every device is instructed as often as any
//! other. The round visits the roster in a stride order ([`Cycle`]) rather than from first
//! to last, so that a short run reaches trackers and DVRs alike.
//!
//! Trackers get `proNo=128&cmdContent=STATUS#` (a GT06 0x80 text command, answered by the
//! simulated firmware with `OK! STATUS#`); DVRs get `proNo=33028` (JT/T 808 0x8104, query
//! all parameters, answered with 0x0104).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use iothub::imei::Imei;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::roster::{Family, Roster};

/// `proNo` of a GT06 text command (0x80).
pub const PRO_NO_TEXT: u32 = 128;
/// `proNo` of JT/T 808 0x8104, query all parameters.
pub const PRO_NO_QUERY_PARAMS: u32 = 33028;
/// The text command trackers get.
pub const TRACKER_COMMAND: &str = "STATUS#";
/// The API path under `--api`.
pub const SEND_INSTRUCT_PATH: &str = "/api/device/sendInstruct";

/// How long the client waits beyond `timeOut`: the hub itself answers 600 after `timeOut`
/// and adds a 2 s margin of its own, so an answer later than this is not coming.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Longest round trip a histogram holds, in microseconds (an hour; later ones are clamped).
const MAX_ROUND_TRIP_MICROS: u64 = 3_600_000_000;

/// Most latency windows kept; later requests count in the last one. With the shortest window
/// (1 s) that is over a quarter of an hour; a minute's window covers 24 h.
const MAX_WINDOWS: usize = 1440;

/// Largest answer body read (a sendInstruct answer is well under 1 KiB; a parameter list
/// in `_content` a few KiB).
const MAX_ANSWER: usize = 256 * 1024;

/// Positions looked at per attempt to find a free, online device. Bounds the cost of a
/// request when few devices are online; round-robin carries on from there next time.
const SCAN_WINDOW: u64 = 4096;

/// Settings of the instruction load (the `--instruct-*` and `--api*` flags).
#[derive(Debug, Clone)]
pub struct InstructConfig {
    /// Requests per second.
    pub rate: f64,
    /// Base URL of the hub's API, `http://host:port`.
    pub api: String,
    pub token: String,
    /// `timeOut` sent with each request.
    pub timeout: Duration,
    /// Requests out at once; a request due beyond that is skipped.
    pub max_in_flight: usize,
    /// No request is started this long before the end of the run, so the last answers
    /// arrive while the devices are still connected.
    pub settle: Duration,
    /// No request starts before this much of the run has passed, so the latency measured
    /// is that of a fleet already connected, not of a login storm.
    pub warmup: Duration,
    /// Length of the windows the latency is also reported per, on the run's clock.
    pub window: Duration,
}

impl InstructConfig {
    /// `rate` requests per second against `api` with `token`; `timeOut` 10 s, at most 256 in
    /// flight, 2 s settle, no warm-up, latency windows of a minute.
    pub fn new(api: impl Into<String>, token: impl Into<String>, rate: f64) -> InstructConfig {
        InstructConfig {
            rate,
            api: api.into(),
            token: token.into(),
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
            settle: Duration::from_secs(2),
            warmup: Duration::ZERO,
            window: Duration::from_secs(60),
        }
    }

    /// Checks the settings; errors name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1_000_000.0) {
            bail!(
                "--instruct-rate {}: must be more than 0 and at most 1000000 per second",
                self.rate
            );
        }
        if self.max_in_flight == 0 {
            bail!("--instruct-max-in-flight must be at least 1");
        }
        let secs = self.timeout.as_secs();
        if !(1..=120).contains(&secs) || self.timeout.subsec_nanos() != 0 {
            bail!("--instruct-timeout must be whole seconds, 1..=120 (the API's timeOut)");
        }
        if self.window < Duration::from_secs(1) || self.window.subsec_nanos() != 0 {
            bail!("--instruct-window must be whole seconds, at least 1s");
        }
        self.endpoint()?;
        Ok(())
    }

    /// The sendInstruct URL.
    pub fn endpoint(&self) -> anyhow::Result<Uri> {
        let base = self.api.trim_end_matches('/');
        if !base.starts_with("http://") {
            bail!(
                "--api {:?}: must be an http:// URL (https is not supported)",
                self.api
            );
        }
        let uri: Uri = format!("{base}{SEND_INSTRUCT_PATH}")
            .parse()
            .with_context(|| format!("--api {:?} is not a URL", self.api))?;
        if uri.host().is_none() {
            bail!("--api {:?} has no host", self.api);
        }
        Ok(uri)
    }
}

/// The form body of one sendInstruct for a device of `family`.
pub fn request_body(
    family: Family,
    imei: &Imei,
    server_flag_id: u32,
    timeout: Duration,
    token: &str,
) -> String {
    let (pro_no, content) = match family {
        Family::Gt06 => (PRO_NO_TEXT, TRACKER_COMMAND),
        Family::Jt808 => (PRO_NO_QUERY_PARAMS, ""),
    };
    let fields = [
        ("imei", imei.as_str().to_owned()),
        ("proNo", pro_no.to_string()),
        ("cmdContent", content.to_owned()),
        ("serverFlagId", server_flag_id.to_string()),
        ("timeOut", timeout.as_secs().to_string()),
        ("token", token.to_owned()),
    ];
    serde_urlencoded::to_string(fields).unwrap_or_default()
}

/// What one answer amounts to: its `data._code` (`"100"`, `"300"`, ...), `http-<status>`
/// for an answer refused before the Jimi envelope (401 token, 503 too many in flight), or
/// `unreadable` for a body that is not the envelope.
pub fn outcome_label(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match v.get("data")?.get("_code")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    match code {
        Some(code) => code,
        None if status != 200 => format!("http-{status}"),
        None => "unreadable".to_owned(),
    }
}

/// Label of a request that got no HTTP answer at all.
pub const TRANSPORT_ERROR: &str = "transport-error";
/// Label of a request whose answer did not come within `timeOut` + 5 s.
pub const NO_ANSWER: &str = "no-answer";

/// The open-loop schedule: request `n` is due `n / rate` seconds after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
}

impl Schedule {
    /// `None` for a rate that is not a positive number.
    pub fn new(rate: f64) -> Option<Schedule> {
        (rate.is_finite() && rate > 0.0).then_some(Schedule { rate })
    }

    /// When request `n` (from 0) is due.
    pub fn due(&self, start: Instant, n: u64) -> Instant {
        // f64 keeps sub-microsecond precision up to n / rate of a few years.
        start + Duration::from_secs_f64(n as f64 / self.rate)
    }
}

/// Which primaries are logged in: per roster position, how many of the devices holding its
/// IMEI are (two with a duplicate). Kept by the devices in one process, and rebuilt from
/// the worker lines in the parent.
#[derive(Debug)]
pub struct OnlineSet {
    holders: Vec<AtomicU8>,
}

impl OnlineSet {
    /// `positions` primaries, all offline.
    pub fn new(positions: u64) -> OnlineSet {
        let len = usize::try_from(positions).unwrap_or(usize::MAX);
        OnlineSet {
            holders: (0..len).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    pub fn len(&self) -> u64 {
        self.holders.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    fn slot(&self, position: u64) -> Option<&AtomicU8> {
        self.holders.get(usize::try_from(position).ok()?)
    }

    /// A holder of `position`'s IMEI logged in.
    pub fn connected(&self, position: u64) {
        if let Some(s) = self.slot(position) {
            let _ = s.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        }
    }

    /// A holder of `position`'s IMEI is gone.
    pub fn disconnected(&self, position: u64) {
        if let Some(s) = self.slot(position) {
            let _ = s.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    pub fn is_online(&self, position: u64) -> bool {
        self.slot(position)
            .is_some_and(|s| s.load(Ordering::Relaxed) > 0)
    }

    /// Online positions of `range` as `[start, end)` runs: one run when everything is up,
    /// which keeps the worker lines short.
    pub fn runs(&self, range: Range<u64>) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut open: Option<u64> = None;
        for p in range.clone() {
            match (self.is_online(p), open) {
                (true, None) => open = Some(p),
                (false, Some(start)) => {
                    runs.push((start, p));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(start) = open {
            runs.push((start, range.end));
        }
        runs
    }

    /// Makes `range` exactly the online `runs` (clipped to `range`): how the parent takes
    /// over a worker's view.
    pub fn replace(&self, range: Range<u64>, runs: &[(u64, u64)]) {
        let mut next = range.start;
        for &(start, end) in runs {
            let (start, end) = (start.max(next), end.min(range.end));
            if start >= end {
                continue;
            }
            for p in next..start {
                self.set(p, 0);
            }
            for p in start..end {
                if !self.is_online(p) {
                    self.set(p, 1);
                }
            }
            next = end;
        }
        for p in next..range.end {
            self.set(p, 0);
        }
    }

    fn set(&self, position: u64, holders: u8) {
        if let Some(s) = self.slot(position) {
            s.store(holders, Ordering::Relaxed);
        }
    }

    /// Positions with a holder online.
    pub fn online(&self) -> u64 {
        self.holders
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > 0)
            .count() as u64
    }
}

/// One round over `m` positions in stride order: step `k` visits `k * stride mod m`, with
/// `stride` coprime to `m` (so every position comes once per round) and near `0.618 m` (so
/// consecutive steps land far apart: trackers, which come first in the roster, and DVRs,
/// which come after them, are interleaved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    m: u64,
    stride: u64,
}

impl Cycle {
    pub fn new(m: u64) -> Cycle {
        let mut stride = ((m as f64 * 0.618) as u64).max(1);
        while stride > 1 && gcd(stride, m) != 1 {
            stride -= 1;
        }
        Cycle { m, stride }
    }

    /// The position of step `k`.
    pub fn position(&self, k: u64) -> u64 {
        if self.m == 0 {
            return 0;
        }
        ((u128::from(k % self.m) * u128::from(self.stride)) % u128::from(self.m)) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Round-robin choice of the device that gets the next instruction: online, and without an
/// instruction of ours still out.
#[derive(Debug)]
pub struct Targets {
    roster: Roster,
    online: Arc<OnlineSet>,
    busy: Vec<AtomicBool>,
    cycle: Cycle,
    /// The next step of the cycle.
    cursor: Mutex<u64>,
}

impl Targets {
    pub fn new(roster: Roster, online: Arc<OnlineSet>) -> Targets {
        let len = usize::try_from(roster.primaries()).unwrap_or(usize::MAX);
        Targets {
            cycle: Cycle::new(roster.primaries()),
            roster,
            online,
            busy: (0..len).map(|_| AtomicBool::new(false)).collect(),
            cursor: Mutex::new(0),
        }
    }

    /// The next free online device in the cycle after the last one taken, looking at most
    /// 4096 steps ahead (`SCAN_WINDOW`). Held until the lease is dropped.
    pub fn acquire(self: &Arc<Self>) -> Option<Lease> {
        let m = self.busy.len() as u64;
        if m == 0 {
            return None;
        }
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let start = *cursor % m;
        for step in 0..SCAN_WINDOW.min(m) {
            let k = (start + step) % m;
            let position = self.cycle.position(k);
            let Some(busy) = self.busy.get(position as usize) else {
                continue;
            };
            if !self.online.is_online(position) || busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let target = match self.roster.device(position) {
                Ok(d) => Target {
                    imei: d.imei,
                    family: d.family,
                },
                Err(_) => {
                    busy.store(false, Ordering::Release);
                    continue;
                }
            };
            *cursor = k + 1;
            return Some(Lease {
                targets: self.clone(),
                position,
                target,
            });
        }
        *cursor = start + SCAN_WINDOW.min(m);
        None
    }
}

/// A device chosen for an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub imei: Imei,
    pub family: Family,
}

/// A device taken for one instruction; free again when dropped.
#[derive(Debug)]
pub struct Lease {
    targets: Arc<Targets>,
    position: u64,
    pub target: Target,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(b) = self.targets.busy.get(self.position as usize) {
            b.store(false, Ordering::Release);
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyMs {
    /// The percentiles of a histogram of microseconds; `None` when it holds nothing.
    fn of(h: &Histogram<u64>) -> Option<LatencyMs> {
        let ms = |v: u64| v as f64 / 1000.0;
        (!h.is_empty()).then(|| LatencyMs {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
    }
}

/// Latency of the requests started in one window of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowLatency {
    /// Seconds since the start of the run where the window begins (inclusive) and ends.
    pub from_s: u64,
    pub to_s: u64,
    #[serde(flatten)]
    pub latency: LatencyMs,
}

/// The outcome of the instruction load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructReport {
    pub rate_per_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Answered `_code` 100.
    pub answered: u64,
    /// Due while `max_in_flight` requests were out.
    pub skipped_in_flight: u64,
    /// Due while no device was online and free.
    pub skipped_no_device: u64,
    /// Requests per outcome: `_code` values, `http-<status>`, `transport-error`,
    /// `no-answer`, `unreadable`.
    pub codes: BTreeMap<String, u64>,
    /// Round trips of the requests that got an HTTP answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyMs>,
    /// The same round trips per window of the run, by the time each request started;
    /// windows without an answered request are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowLatency>,
}

/// Live counts of the load, and the accounting of every finished request.
#[derive(Debug)]
pub struct InstructStats {
    rate: f64,
    /// The start of the run; windows count from here.
    origin: Instant,
    window: Duration,
    sent: AtomicU64,
    answered: AtomicU64,
    skipped_in_flight: AtomicU64,
    skipped_no_device: AtomicU64,
    inner: Mutex<StatsInner>,
}

#[derive(Debug)]
struct StatsInner {
    /// Microseconds, 1 µs .. 1 h, 3 significant digits; `None` if the bounds were refused.
    latency: Option<Histogram<u64>>,
    /// One per window, made when its first answer arrives; `None` for a window without one.
    /// Two significant digits: 1% is as fine as a per-window trend needs, at about a
    /// seventh of the memory of the whole-run histogram (3,328 counters against 23,552).
    windows: Vec<Option<Histogram<u64>>>,
    codes: BTreeMap<String, u64>,
}

impl InstructStats {
    /// Accounts for a load at `rate`, with latency windows of `window` counted from `origin`.
    pub fn new(rate: f64, origin: Instant, window: Duration) -> InstructStats {
        InstructStats {
            rate,
            origin,
            window: window.max(Duration::from_secs(1)),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            skipped_in_flight: AtomicU64::new(0),
            skipped_no_device: AtomicU64::new(0),
            inner: Mutex::new(StatsInner {
                latency: Histogram::new_with_bounds(1, MAX_ROUND_TRIP_MICROS, 3).ok(),
                windows: Vec::new(),
                codes: BTreeMap::new(),
            }),
        }
    }

    /// One request went out.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn skipped_in_flight(&self) {
        self.skipped_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn skipped_no_device(&self) {
        self.skipped_no_device.fetch_add(1, Ordering::Relaxed);
    }

    /// A request started at `started` ended with `label`; `round_trip` when an HTTP answer
    /// came.
    pub fn finished(&self, label: &str, started: Instant, round_trip: Option<Duration>) {
        if label == "100" {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.codes.entry(label.to_owned()).or_default() += 1;
        let Some(rtt) = round_trip else {
            return;
        };
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Some(hist) = inner.latency.as_mut() {
            hist.saturating_record(micros);
        }
        let since = started.saturating_duration_since(self.origin);
        let index = usize::try_from(since.as_nanos() / self.window.as_nanos())
            .unwrap_or(usize::MAX)
            .min(MAX_WINDOWS - 1);
        if inner.windows.len() <= index {
            inner.windows.resize_with(index + 1, || None);
        }
        let slot = &mut inner.windows[index];
        if slot.is_none() {
            *slot = Histogram::new_with_bounds(1, MAX_ROUND_TRIP_MICROS, 2).ok();
        }
        if let Some(hist) = slot.as_mut() {
            hist.saturating_record(micros);
        }
    }

    /// Requests sent and answered `_code` 100 so far (for the progress line).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
        )
    }

    pub fn report(&self) -> InstructReport {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let latency = inner.latency.as_ref().and_then(LatencyMs::of);
        let window_s = self.window.as_secs();
        let windows = inner
            .windows
            .iter()
            .zip(0u64..)
            .filter_map(|(h, i)| {
                Some(WindowLatency {
                    from_s: i * window_s,
                    to_s: (i + 1) * window_s,
                    latency: LatencyMs::of(h.as_ref()?)?,
                })
            })
            .collect();
        InstructReport {
            rate_per_s: self.rate,
            sent: self.sent.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            skipped_in_flight: self.skipped_in_flight.load(Ordering::Relaxed),
            skipped_no_device: self.skipped_no_device.load(Ordering::Relaxed),
            codes: inner.codes.clone(),
            latency,
            windows,
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The running load; it stops issuing by itself at its stop time.
#[derive(Debug)]
pub struct InstructLoad {
    stats: Arc<InstructStats>,
    task: JoinHandle<()>,
}

impl InstructLoad {
    /// Starts issuing requests now; the last one is started before `stop_at`. Refuses bad
    /// settings before anything is sent.
    pub fn start(
        config: InstructConfig,
        targets: Arc<Targets>,
        stop_at: Instant,
    ) -> anyhow::Result<InstructLoad> {
        config.validate()?;
        let uri = config.endpoint()?;
        let schedule = Schedule::new(config.rate).context("--instruct-rate")?;
        let stats = Arc::new(InstructStats::new(
            config.rate,
            Instant::now(),
            config.window,
        ));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_in_flight)
            .build(connector);
        let task = tokio::spawn(issue(
            config,
            schedule,
            uri,
            client,
            targets,
            stats.clone(),
            stop_at,
        ));
        Ok(InstructLoad { stats, task })
    }

    pub fn stats(&self) -> &Arc<InstructStats> {
        &self.stats
    }

    /// Waits until every request has its outcome (each is bounded by `timeOut` + 5 s) and
    /// returns the account.
    pub async fn finish(self) -> InstructReport {
        // The task ends by itself; a panic in it leaves the counts taken so far.
        let _ = self.task.await;
        self.stats.report()
    }
}

async fn issue(
    config: InstructConfig,
    schedule: Schedule,
    uri: Uri,
    client: HttpClient,
    targets: Arc<Targets>,
    stats: Arc<InstructStats>,
    stop_at: Instant,
) {
    let start = Instant::now() + config.warmup;
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let mut requests = JoinSet::new();
    let mut server_flag_id: u32 = 0;
    let mut n: u64 = 0;
    loop {
        let due = schedule.due(start, n);
        if due >= stop_at {
            break;
        }
        tokio::time::sleep_until(due).await;
        n += 1;
        while requests.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.skipped_in_flight();
            continue;
        };
        let Some(lease) = targets.acquire() else {
            stats.skipped_no_device();
            continue;
        };
        // Unique per run (until it wraps past 4 billion), never 0.
        server_flag_id = server_flag_id.checked_add(1).unwrap_or(1);
        let body = request_body(
            lease.target.family,
            &lease.target.imei,
            server_flag_id,
            config.timeout,
            &config.token,
        );
        stats.sent();
        requests.spawn(one_request(
            client.clone(),
            uri.clone(),
            body,
            config.timeout + ANSWER_MARGIN,
            stats.clone(),
            lease,
            permit,
        ));
    }
    while requests.join_next().await.is_some() {}
}

/// One sendInstruct; the device and the in-flight slot are released when it returns.
async fn one_request(
    client: HttpClient,
    uri: Uri,
    body: String,
    wait: Duration,
    stats: Arc<InstructStats>,
    _lease: Lease,
    _permit: OwnedSemaphorePermit,
) {
    let request = match Request::post(uri)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
    {
        Ok(r) => r,
        Err(_) => {
            stats.finished(TRANSPORT_ERROR, Instant::now(), None);
            return;
        }
    };
    let started = Instant::now();
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, body))
    };
    match tokio::time::timeout(wait, exchange).await {
        Ok(Some((status, body))) => stats.finished(
            &outcome_label(status, &body),
            started,
            Some(started.elapsed()),
        ),
        Ok(None) => stats.finished(TRANSPORT_ERROR, started, None),
        Err(_) => stats.finished(NO_ANSWER, started, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imei(s: &str) -> Imei {
        Imei::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn roster(trackers: u32, dvrs: u32) -> Roster {
        Roster::new(trackers, "860000000000000", dvrs, "86510000000000", 0)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn tracker_gets_a_text_command() {
        let body = request_body(
            Family::Gt06,
            &imei("860000000000001"),
            7,
            Duration::from_secs(10),
            "tok",
        );
        assert_eq!(
            body,
            "imei=860000000000001&proNo=128&cmdContent=STATUS%23&serverFlagId=7&timeOut=10&token=tok"
        );
    }

    #[test]
    fn dvr_gets_a_parameter_query() {
        let body = request_body(
            Family::Jt808,
            &imei("865100000000002"),
            8,
            Duration::from_secs(10),
            "tok",
        );
        assert_eq!(
            body,
            "imei=865100000000002&proNo=33028&cmdContent=&serverFlagId=8&timeOut=10&token=tok"
        );
    }

    #[test]
    fn answer_label_is_the_jimi_code() {
        let body =
            br#"{"code":0,"msg":"ok","data":{"_code":"100","_imei":"1","_content":"OK! STATUS#"}}"#;
        assert_eq!(outcome_label(200, body), "100");
    }

    #[test]
    fn numeric_code_is_read_too() {
        assert_eq!(outcome_label(200, br#"{"data":{"_code":600}}"#), "600");
    }

    #[test]
    fn refusal_before_the_envelope_is_labelled_by_status() {
        assert_eq!(
            outcome_label(401, br#"{"code":1,"msg":"token: invalid"}"#),
            "http-401"
        );
    }

    #[test]
    fn garbage_answer_is_unreadable() {
        assert_eq!(outcome_label(200, b"<html>"), "unreadable");
    }

    #[test]
    fn schedule_is_evenly_spaced() {
        let s = Schedule::new(20.0).unwrap_or_else(|| panic!("rate"));
        let t0 = Instant::now();
        assert_eq!(s.due(t0, 0), t0);
        assert_eq!(s.due(t0, 1) - t0, Duration::from_millis(50));
        assert_eq!(s.due(t0, 20) - t0, Duration::from_secs(1));
    }

    #[test]
    fn schedule_needs_a_positive_rate() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
        assert!(Schedule::new(-1.0).is_none());
    }

    #[test]
    fn online_runs_round_trip_through_replace() {
        let set = OnlineSet::new(10);
        for p in [2, 3, 4, 7] {
            set.connected(p);
        }
        let runs = set.runs(0..10);
        assert_eq!(runs, vec![(2, 5), (7, 8)]);
        let parent = OnlineSet::new(10);
        parent.connected(0);
        parent.replace(0..10, &runs);
        assert_eq!(parent.runs(0..10), runs);
        assert_eq!(parent.online(), 4);
    }

    #[test]
    fn replace_touches_only_its_range() {
        let set = OnlineSet::new(10);
        set.connected(9);
        set.replace(0..5, &[(1, 2), (8, 9)]);
        assert_eq!(set.runs(0..10), vec![(1, 2), (9, 10)]);
    }

    #[test]
    fn two_holders_keep_a_position_online_until_both_leave() {
        let set = OnlineSet::new(1);
        set.connected(0);
        set.connected(0);
        set.disconnected(0);
        assert!(set.is_online(0));
        set.disconnected(0);
        assert!(!set.is_online(0));
        set.disconnected(0);
        assert!(!set.is_online(0));
    }

    #[test]
    fn a_cycle_visits_every_position_once() {
        for m in [1, 2, 3, 10, 200, 1000] {
            let cycle = Cycle::new(m);
            let mut seen: Vec<u64> = (0..m).map(|k| cycle.position(k)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..m).collect::<Vec<_>>(), "m = {m}");
        }
    }

    #[test]
    fn a_cycle_reaches_the_dvrs_early() {
        // 150 trackers (positions 0..150) then 50 DVRs: among the first 20 steps, DVRs come
        // about as often as their share of the fleet.
        let cycle = Cycle::new(200);
        let dvrs = (0..20).filter(|&k| cycle.position(k) >= 150).count();
        assert!((3..=7).contains(&dvrs), "{dvrs} DVRs in the first 20 steps");
    }

    #[test]
    fn targets_go_round_robin_over_online_devices() {
        // Stride 2 over 4 positions would not be coprime: the cycle is 0, 1, 2, 3.
        let online = Arc::new(OnlineSet::new(4));
        for p in [0, 2, 3] {
            online.connected(p);
        }
        let targets = Arc::new(Targets::new(roster(2, 2), online));
        let first = targets.acquire().map(|l| l.target.imei.to_string());
        let second = targets.acquire().map(|l| l.target.imei.to_string());
        let third = targets.acquire().map(|l| l.target.family);
        assert_eq!(first.as_deref(), Some("860000000000000"));
        // Position 1 is offline: skipped.
        assert_eq!(second.as_deref(), Some("865100000000002"));
        assert_eq!(third, Some(Family::Jt808));
    }

    #[test]
    fn a_device_gets_one_instruction_at_a_time() {
        let online = Arc::new(OnlineSet::new(1));
        online.connected(0);
        let targets = Arc::new(Targets::new(roster(1, 0), online));
        let held = targets.acquire();
        assert!(held.is_some());
        assert!(targets.acquire().is_none());
        drop(held);
        assert!(targets.acquire().is_some());
    }

    #[test]
    fn nobody_online_means_no_target() {
        let targets = Arc::new(Targets::new(roster(3, 0), Arc::new(OnlineSet::new(3))));
        assert!(targets.acquire().is_none());
    }

    #[test]
    fn latency_and_codes_are_accounted() {
        let origin = Instant::now();
        let stats = InstructStats::new(20.0, origin, Duration::from_secs(60));
        for ms in 1..=100u64 {
            stats.sent();
            stats.finished("100", origin, Some(Duration::from_millis(ms)));
        }
        stats.sent();
        stats.finished("600", origin, Some(Duration::from_secs(10)));
        stats.sent();
        stats.finished(TRANSPORT_ERROR, origin, None);
        stats.skipped_in_flight();
        let r = stats.report();
        assert_eq!(r.sent, 102);
        assert_eq!(r.answered, 100);
        assert_eq!(r.codes.get("100"), Some(&100));
        assert_eq!(r.codes.get("600"), Some(&1));
        assert_eq!(r.codes.get(TRANSPORT_ERROR), Some(&1));
        assert_eq!(r.skipped_in_flight, 1);
        let l = r.latency.unwrap_or_else(|| panic!("latency"));
        assert_eq!(l.samples, 101);
        assert!((l.p50_ms - 51.0).abs() < 0.1, "p50 {}", l.p50_ms);
        assert!((l.max_ms - 10_000.0).abs() < 10.0, "max {}", l.max_ms);
    }

    #[test]
    fn latency_is_also_reported_per_window_of_the_run() {
        let origin = Instant::now();
        let stats = InstructStats::new(20.0, origin, Duration::from_secs(10));
        // 0-10 s: 1 ms each; 10-20 s: nothing; 20-30 s: 5 ms and one of 50 ms.
        for _ in 0..50 {
            stats.finished("100", origin, Some(Duration::from_millis(1)));
        }
        let third = origin + Duration::from_secs(25);
        for _ in 0..99 {
            stats.finished("100", third, Some(Duration::from_millis(5)));
        }
        stats.finished("100", third, Some(Duration::from_millis(50)));
        stats.finished(TRANSPORT_ERROR, third, None);
        let w = stats.report().windows;
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].from_s, w[0].to_s, w[0].latency.samples), (0, 10, 50));
        assert!((w[0].latency.p99_ms - 1.0).abs() < 0.02, "{w:?}");
        assert_eq!(
            (w[1].from_s, w[1].to_s, w[1].latency.samples),
            (20, 30, 100)
        );
        assert!((w[1].latency.p99_ms - 5.0).abs() < 0.1, "{w:?}");
        assert!((w[1].latency.max_ms - 50.0).abs() < 0.5, "{w:?}");
    }

    #[test]
    fn a_request_past_the_last_window_counts_in_it() {
        let origin = Instant::now();
        let stats = InstructStats::new(20.0, origin, Duration::from_secs(1));
        let late = origin + Duration::from_secs(MAX_WINDOWS as u64 * 3);
        stats.finished("100", late, Some(Duration::from_millis(2)));
        let w = stats.report().windows;
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].from_s, MAX_WINDOWS as u64 - 1);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let mut c = InstructConfig::new("http://127.0.0.1:10088", "t", 0.0);
        assert!(c
            .validate()
            .map_err(|e| e.to_string())
            .unwrap_err()
            .contains("--instruct-rate"));
        c.rate = 10.0;
        c.api = "https://hub".into();
        assert!(c
            .validate()
            .map_err(|e| e.to_string())
            .unwrap_err()
            .contains("--api"));
        c.api = "http://127.0.0.1:10088/".into();
        assert_eq!(
            c.endpoint().map(|u| u.to_string()).ok().as_deref(),
            Some("http://127.0.0.1:10088/api/device/sendInstruct")
        );
        c.timeout = Duration::from_secs(121);
        assert!(c
            .validate()
            .map_err(|e| e.to_string())
            .unwrap_err()
            .contains("--instruct-timeout"));
        c.timeout = Duration::from_secs(10);
        c.window = Duration::from_millis(500);
        assert!(c
            .validate()
            .map_err(|e| e.to_string())
            .unwrap_err()
            .contains("--instruct-window"));
    }

    #[tokio::test]
    async fn requests_against_a_dead_api_are_transport_errors() {
        // Bind then drop: nothing listens on the port any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"));
        let online = Arc::new(OnlineSet::new(2));
        online.connected(0);
        online.connected(1);
        let targets = Arc::new(Targets::new(roster(2, 0), online));
        let mut config = InstructConfig::new(format!("http://{addr}"), "t", 50.0);
        config.timeout = Duration::from_secs(1);
        let stop = Instant::now() + Duration::from_millis(200);
        let load = InstructLoad::start(config, targets, stop).unwrap_or_else(|e| panic!("{e}"));
        let report = load.finish().await;
        assert_eq!(report.sent, 10);
        assert_eq!(report.codes.get(TRANSPORT_ERROR), Some(&10));
        assert_eq!(report.answered, 0);
    }
}
