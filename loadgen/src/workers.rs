//! Worker processes. Every simulated device holds a socket, and a process may hold at most
//! 20,000 open files here (and far fewer on many machines), so a run bigger than that is
//! spread over several processes: the command starts its own binary K times with a hidden
//! `--worker i/K`, each worker runs its slice of the roster ([`crate::roster::Roster::slice`]:
//! disjoint devices, disjoint source addresses), and the parent keeps everything that must
//! be one: the push receiver, the Kafka counter, the instruction load, the progress line and
//! the final report.
//!
//! # The worker's output
//! A worker writes JSON lines on stdout ([`WorkerLine`]) and nothing else there:
//! - once a second, `progress`: its counters per group and which of its devices are online
//!   (the parent's instruction load targets those);
//! - at the end, `sent` lines (the GPS fixes it timed, for the push latency; in chunks so no
//!   line grows large) and one `final` line with its last counters and error samples.
//!
//! A worker that exits unsuccessfully, or without its `final` line, fails the whole run, and
//! the parent shows the end of that worker's stderr.
//!
//! Instants do not cross processes; the send times of GPS fixes travel as microseconds of
//! wall-clock time and are mapped back onto the parent's monotonic clock ([`WallAnchor`]).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::instruct::OnlineSet;
use crate::roster::{Group, Roster, Slice};
use crate::stats::{SentLog, Snapshot};

/// Open files a process of this tool may hold.
pub const MAX_OPEN_FILES: u64 = 20_000;

/// Files a process needs besides its devices' sockets: stdio, the runtime's epoll and
/// wake-up descriptors, pipes, DNS, a receiver's or the API client's few connections.
pub const RESERVED_FILES: u64 = 100;

/// Devices one process runs at most.
pub const MAX_DEVICES_PER_PROCESS: u64 = MAX_OPEN_FILES - RESERVED_FILES;

/// GPS fixes a worker times for the push latency. Enough for stable percentiles, and few
/// enough that shipping them to the parent stays quick.
pub const WORKER_SENT_LOG_CAPACITY: usize = 200_000;

/// Fixes per `sent` line.
const SENT_CHUNK: usize = 10_000;

/// Longest line read from a worker: a `sent` chunk is well under 1 MiB.
const MAX_LINE: u64 = 8 * 1024 * 1024;

/// Bytes of a worker's stderr kept to show when it fails.
const STDERR_TAIL: usize = 16 * 1024;

/// `--worker i/K`: this process is worker `index` (from 0) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSpec {
    pub index: u32,
    pub count: u32,
}

impl FromStr for WorkerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkerSpec, String> {
        let (i, k) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected i/K, e.g. 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("{i:?} is not a number"))?;
        let count: u32 = k
            .trim()
            .parse()
            .map_err(|_| format!("{k:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("{s:?}: need 0 <= i < K"));
        }
        Ok(WorkerSpec { index, count })
    }
}

impl fmt::Display for WorkerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How the parent starts its workers.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The binary to run (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// The command line the parent got (without the program name); `--worker i/K` is added.
    pub args: Vec<OsString>,
    pub count: u32,
}

/// Refuses a process that would run more devices than fit its open files: the smaller of
/// [`MAX_OPEN_FILES`] and `limit` (the process's limit), minus [`RESERVED_FILES`]. The
/// message suggests how many workers the whole `fleet` needs.
pub fn check_fits(devices: u64, limit: u64, who: &str, fleet: u64) -> anyhow::Result<()> {
    let fit = limit.min(MAX_OPEN_FILES).saturating_sub(RESERVED_FILES);
    if devices > fit {
        bail!(
            "{who} would run {devices} devices, but only {fit} fit under its open-files limit of {}: use --workers {} or more",
            limit.min(MAX_OPEN_FILES),
            fleet.div_ceil(fit.max(1)).max(2)
        );
    }
    Ok(())
}

/// The slice of source addresses worker `index` of `count` uses: disjoint contiguous parts.
pub fn source_slice<T: Clone>(ips: &[T], index: u32, count: u32) -> anyhow::Result<Vec<T>> {
    if ips.is_empty() {
        return Ok(Vec::new());
    }
    let (len, i, k) = (ips.len(), index as usize, count.max(1) as usize);
    if len < k {
        bail!("--source-ips: {len} addresses cannot be split over --workers {count} (each worker needs its own)");
    }
    Ok(ips[i * len / k..(i + 1) * len / k].to_vec())
}

/// One GPS fix a worker timed: IMEI, `gpsTime`, write time in µs since the Unix epoch.
pub type SentEntry = (String, String, u64);

/// Counters of each group, as a worker prints them.
pub type GroupCounts = Vec<(Group, Snapshot)>;

/// One line of a worker's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLine {
    Progress {
        groups: GroupCounts,
        /// Online primary positions of the worker's slice, as `[start, end)` runs.
        online: Vec<(u64, u64)>,
    },
    Sent(Vec<SentEntry>),
    Final {
        groups: GroupCounts,
        error_samples: Vec<String>,
        /// Fixes sent past the worker's sent-log capacity (not timed).
        untracked: u64,
    },
}

/// Maps instants to wall-clock microseconds and back, around one reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct WallAnchor {
    instant: Instant,
    unix_us: u64,
}

impl WallAnchor {
    pub fn now() -> WallAnchor {
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        WallAnchor {
            instant: Instant::now(),
            unix_us,
        }
    }

    pub fn to_unix_us(&self, at: Instant) -> u64 {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if at >= self.instant {
            self.unix_us
                .saturating_add(micros(at.duration_since(self.instant)))
        } else {
            self.unix_us
                .saturating_sub(micros(self.instant.duration_since(at)))
        }
    }

    pub fn to_instant(&self, unix_us: u64) -> Instant {
        let shifted = if unix_us >= self.unix_us {
            self.instant
                .checked_add(Duration::from_micros(unix_us - self.unix_us))
        } else {
            self.instant
                .checked_sub(Duration::from_micros(self.unix_us - unix_us))
        };
        shifted.unwrap_or(self.instant)
    }
}

/// The lines a worker prints at the end: its timed fixes in chunks, then `final`.
pub fn final_lines(
    groups: GroupCounts,
    error_samples: Vec<String>,
    sent: &SentLog,
    anchor: &WallAnchor,
) -> Vec<WorkerLine> {
    let entries: Vec<SentEntry> = sent
        .entries()
        .into_iter()
        .map(|((imei, time), at)| (imei, time, anchor.to_unix_us(at)))
        .collect();
    let mut lines: Vec<WorkerLine> = entries
        .chunks(SENT_CHUNK)
        .map(|c| WorkerLine::Sent(c.to_vec()))
        .collect();
    lines.push(WorkerLine::Final {
        groups,
        error_samples,
        untracked: sent.untracked(),
    });
    lines
}

/// Adds up per-group counts (of several workers) into one snapshot per group, in
/// [`Group::ALL`] order.
pub fn merge_groups<'a>(parts: impl IntoIterator<Item = &'a GroupCounts>) -> [Snapshot; 4] {
    let mut total: [Snapshot; 4] = Default::default();
    for part in parts {
        for (group, snapshot) in part {
            if let Some(slot) = total.get_mut(group.index()) {
                slot.merge(snapshot);
            }
        }
    }
    total
}

#[derive(Debug, Default)]
struct WorkerState {
    latest: GroupCounts,
    finished: Option<(GroupCounts, Vec<String>)>,
}

#[derive(Debug)]
struct PoolShared {
    states: Mutex<Vec<WorkerState>>,
    sent: Arc<SentLog>,
    anchor: WallAnchor,
    online: Arc<OnlineSet>,
}

impl PoolShared {
    fn update(&self, worker: usize, f: impl FnOnce(&mut WorkerState)) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = states.get_mut(worker) {
            f(state);
        }
    }
}

/// What the workers of a run amounted to.
#[derive(Debug)]
pub struct PoolOutcome {
    pub groups: [Snapshot; 4],
    /// Each worker's error samples, prefixed with its number.
    pub error_samples: Vec<String>,
    /// Every worker's timed fixes, on this process's clock.
    pub sent: Arc<SentLog>,
}

/// The running workers of a run; dropping it kills the ones still running.
#[derive(Debug)]
pub struct WorkerPool {
    count: u32,
    shared: Arc<PoolShared>,
    monitors: JoinSet<anyhow::Result<()>>,
}

impl WorkerPool {
    /// Starts `launch.count` workers; each one's progress updates `online` for its slice.
    pub fn spawn(
        launch: &WorkerLaunch,
        roster: &Roster,
        online: Arc<OnlineSet>,
    ) -> anyhow::Result<WorkerPool> {
        let count = launch.count;
        let shared = Arc::new(PoolShared {
            states: Mutex::new((0..count).map(|_| WorkerState::default()).collect()),
            sent: Arc::new(SentLog::new(
                WORKER_SENT_LOG_CAPACITY.saturating_mul(count as usize),
            )),
            anchor: WallAnchor::now(),
            online,
        });
        let mut monitors = JoinSet::new();
        for index in 0..count {
            let spec = WorkerSpec { index, count };
            let mut command = Command::new(&launch.exe);
            command
                .args(&launch.args)
                .arg("--worker")
                .arg(spec.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A worker must not outlive a parent that gave up on the run.
                .kill_on_drop(true);
            let child = command
                .spawn()
                .with_context(|| format!("starting worker {spec} ({})", launch.exe.display()))?;
            let primaries = roster.slice(index, count);
            monitors.spawn(monitor(spec, child, primaries, shared.clone()));
        }
        Ok(WorkerPool {
            count,
            shared,
            monitors,
        })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// A handle that reads the workers' latest counters while the pool is awaited.
    pub fn view(&self) -> PoolView {
        PoolView(self.shared.clone())
    }

    /// Waits until every worker has ended well; the first one that fails ends the wait
    /// with its error (the others are killed when the pool is dropped).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        while let Some(joined) = self.monitors.join_next().await {
            joined.map_err(|e| anyhow!("worker monitor: {e}"))??;
        }
        Ok(())
    }

    /// The final counts, once [`Self::wait`] returned `Ok`.
    pub fn outcome(&self) -> PoolOutcome {
        let states = self.shared.states.lock().unwrap_or_else(|p| p.into_inner());
        let groups = merge_groups(
            states
                .iter()
                .filter_map(|s| s.finished.as_ref().map(|f| &f.0)),
        );
        let error_samples = states
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.finished
                    .iter()
                    .flat_map(|f| f.1.iter())
                    .map(move |e| format!("worker {i}/{}: {e}", self.count))
            })
            .collect();
        PoolOutcome {
            groups,
            error_samples,
            sent: self.shared.sent.clone(),
        }
    }
}

/// The workers' latest counters, for the progress line.
#[derive(Debug, Clone)]
pub struct PoolView(Arc<PoolShared>);

impl PoolView {
    /// The latest counters of every worker, added up per group.
    pub fn snapshot(&self) -> [Snapshot; 4] {
        let states = self.0.states.lock().unwrap_or_else(|p| p.into_inner());
        merge_groups(states.iter().map(|s| match &s.finished {
            Some((groups, _)) => groups,
            None => &s.latest,
        }))
    }
}

/// Reads one worker's lines until it exits; fails when it exits unsuccessfully or without
/// its final line.
async fn monitor(
    spec: WorkerSpec,
    mut child: Child,
    slice: Slice,
    shared: Arc<PoolShared>,
) -> anyhow::Result<()> {
    let worker = spec.index as usize;
    let stderr = child.stderr.take().map(|e| tokio::spawn(tail(e)));
    let mut finished = false;
    let mut broken: Option<String> = None;
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await;
            match read {
                Ok(0) => break,
                Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                    broken = Some(format!("a line longer than {MAX_LINE} bytes"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    broken = Some(format!("reading its output: {e}"));
                    break;
                }
            }
            match serde_json::from_slice::<WorkerLine>(&line) {
                Ok(WorkerLine::Progress { groups, online }) => {
                    shared.online.replace(slice.primaries.clone(), &online);
                    shared.update(worker, |s| s.latest = groups);
                }
                Ok(WorkerLine::Sent(entries)) => {
                    for (imei, time, unix_us) in entries {
                        shared
                            .sent
                            .record((imei, time), shared.anchor.to_instant(unix_us));
                    }
                }
                Ok(WorkerLine::Final {
                    groups,
                    error_samples,
                    ..
                }) => {
                    // Its devices are gone: none of them can take an instruction now.
                    shared.online.replace(slice.primaries.clone(), &[]);
                    shared.update(worker, |s| s.finished = Some((groups, error_samples)));
                    finished = true;
                }
                Err(e) => {
                    broken = Some(format!(
                        "an unreadable line ({e}): {}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    ));
                    break;
                }
            }
        }
    }
    if broken.is_some() {
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    let stderr = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    let shown = if stderr.trim().is_empty() {
        "(its stderr was empty)".to_owned()
    } else {
        format!("its stderr:\n{stderr}")
    };
    match (status, broken) {
        (_, Some(why)) => bail!("worker {spec} wrote {why}; {shown}"),
        (Err(e), None) => bail!("worker {spec}: cannot wait for it: {e}; {shown}"),
        (Ok(status), None) if !status.success() => {
            bail!("worker {spec} exited with {status}; {shown}")
        }
        (Ok(_), None) if !finished => {
            bail!("worker {spec} ended without its final report; {shown}")
        }
        _ => Ok(()),
    }
}

/// The last [`STDERR_TAIL`] bytes a stream carries, read until it ends.
async fn tail(mut stream: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::Family;
    use crate::stats::{Counters, Kind};

    #[test]
    fn worker_spec_reads_i_of_k() {
        assert_eq!(
            "2/4".parse::<WorkerSpec>(),
            Ok(WorkerSpec { index: 2, count: 4 })
        );
        assert_eq!(WorkerSpec { index: 2, count: 4 }.to_string(), "2/4");
    }

    #[test]
    fn worker_spec_out_of_range_is_refused() {
        assert!("4/4".parse::<WorkerSpec>().is_err());
        assert!("0/0".parse::<WorkerSpec>().is_err());
        assert!("1".parse::<WorkerSpec>().is_err());
        assert!("a/2".parse::<WorkerSpec>().is_err());
    }

    #[test]
    fn a_slice_that_does_not_fit_is_refused_with_a_worker_count() {
        let err = check_fits(50_000, 1_048_576, "this process", 50_000)
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(err.contains("--workers 3"), "{err}");
        assert!(check_fits(19_900, 1_048_576, "worker 0/3", 59_700).is_ok());
        assert!(check_fits(19_901, 1_048_576, "worker 0/3", 59_703).is_err());
    }

    #[test]
    fn a_low_process_limit_lowers_the_fit() {
        assert!(check_fits(924, 1_024, "this process", 924).is_ok());
        assert!(check_fits(925, 1_024, "this process", 925).is_err());
    }

    #[test]
    fn the_suggestion_counts_the_whole_fleet() {
        let err = check_fits(25_000, 1_048_576, "worker 0/2", 50_000)
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(err.contains("--workers 3"), "{err}");
    }

    #[test]
    fn source_addresses_are_split_without_overlap() {
        let ips: Vec<u32> = (1..=10).collect();
        let parts: Vec<Vec<u32>> = (0..3)
            .map(|w| source_slice(&ips, w, 3).unwrap_or_default())
            .collect();
        assert_eq!(parts, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9, 10]]);
    }

    #[test]
    fn too_few_source_addresses_for_the_workers_are_refused() {
        let err = source_slice(&[1, 2], 0, 3)
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(err.contains("--source-ips"), "{err}");
        assert_eq!(source_slice::<u32>(&[], 0, 3).ok(), Some(vec![]));
    }

    fn counts(gps: u64, online: u64) -> GroupCounts {
        let c = Counters::new();
        for _ in 0..gps {
            c.add_sent(Kind::Gps);
        }
        c.online
            .fetch_add(online, std::sync::atomic::Ordering::Relaxed);
        vec![(
            Group {
                family: Family::Jt808,
                shared: false,
            },
            c.snapshot(),
        )]
    }

    #[test]
    fn worker_counts_add_up_per_group() {
        let total = merge_groups([&counts(3, 10), &counts(4, 20)]);
        let jt808 = &total[1];
        assert_eq!(jt808.sent(Kind::Gps), 7);
        assert_eq!(jt808.online, 30);
        assert_eq!(total[0].frames_sent(), 0);
    }

    #[test]
    fn progress_line_round_trips() {
        let line = WorkerLine::Progress {
            groups: counts(1, 1),
            online: vec![(0, 5), (7, 9)],
        };
        let text = serde_json::to_string(&line).unwrap_or_default();
        assert!(text.starts_with(r#"{"progress":"#), "{text}");
        let back: Option<WorkerLine> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(line));
    }

    #[test]
    fn final_lines_carry_the_timed_fixes_in_chunks() {
        let log = SentLog::new(25_000);
        let anchor = WallAnchor::now();
        let at = Instant::now();
        for i in 0..25_000 {
            log.record(("1".into(), format!("t{i}")), at);
        }
        let lines = final_lines(counts(0, 0), vec!["e".into()], &log, &anchor);
        assert_eq!(lines.len(), 4);
        assert!(matches!(&lines[0], WorkerLine::Sent(c) if c.len() == 10_000));
        assert!(
            matches!(&lines[3], WorkerLine::Final { error_samples, .. } if error_samples.len() == 1)
        );
    }

    #[test]
    fn instants_survive_the_wall_clock_round_trip() {
        let anchor = WallAnchor::now();
        let later = anchor.instant + Duration::from_millis(1500);
        let earlier = anchor.instant.checked_sub(Duration::from_millis(20));
        assert_eq!(anchor.to_instant(anchor.to_unix_us(later)), later);
        if let Some(earlier) = earlier {
            assert_eq!(anchor.to_instant(anchor.to_unix_us(earlier)), earlier);
        }
    }

    #[tokio::test]
    async fn a_worker_that_dies_fails_with_its_stderr() {
        let roster = Roster::new(2, "860000000000000", 0, "86510000000000", 0)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let launch = WorkerLaunch {
            exe: PathBuf::from("sh"),
            args: vec![
                "-c".into(),
                "echo 'cannot bind 127.0.1.1' >&2; exit 3".into(),
                "sh".into(),
            ],
            count: 1,
        };
        let mut pool = WorkerPool::spawn(&launch, &roster, Arc::new(OnlineSet::new(2)))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let err = pool.wait().await.map_err(|e| e.to_string()).unwrap_err();
        assert!(err.contains("worker 0/1 exited"), "{err}");
        assert!(err.contains("cannot bind 127.0.1.1"), "{err}");
    }

    #[tokio::test]
    async fn a_worker_without_a_final_line_fails() {
        let roster = Roster::new(2, "860000000000000", 0, "86510000000000", 0)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let launch = WorkerLaunch {
            exe: PathBuf::from("sh"),
            args: vec!["-c".into(), "exit 0".into(), "sh".into()],
            count: 1,
        };
        let mut pool = WorkerPool::spawn(&launch, &roster, Arc::new(OnlineSet::new(2)))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let err = pool.wait().await.map_err(|e| e.to_string()).unwrap_err();
        assert!(err.contains("without its final report"), "{err}");
    }

    #[tokio::test]
    async fn worker_lines_are_aggregated() {
        let roster = Roster::new(0, "860000000000000", 4, "86510000000000", 0)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let progress = serde_json::to_string(&WorkerLine::Progress {
            groups: counts(2, 2),
            online: vec![(0, 2)],
        })
        .unwrap_or_default();
        let last = serde_json::to_string(&WorkerLine::Final {
            groups: counts(5, 0),
            error_samples: vec!["boom".into()],
            untracked: 0,
        })
        .unwrap_or_default();
        let script = format!("printf '%s\\n%s\\n' '{progress}' '{last}'");
        let launch = WorkerLaunch {
            exe: PathBuf::from("sh"),
            args: vec!["-c".into(), script.into(), "sh".into()],
            count: 2,
        };
        let online = Arc::new(OnlineSet::new(4));
        let mut pool =
            WorkerPool::spawn(&launch, &roster, online.clone()).unwrap_or_else(|e| panic!("{e:#}"));
        pool.wait().await.unwrap_or_else(|e| panic!("{e:#}"));
        let outcome = pool.outcome();
        assert_eq!(outcome.groups[1].sent(Kind::Gps), 10);
        assert_eq!(outcome.error_samples.len(), 2);
        assert!(outcome.error_samples[1].starts_with("worker 1/2: boom"));
        // The final lines took every device offline again.
        assert_eq!(online.online(), 0);
    }
}
