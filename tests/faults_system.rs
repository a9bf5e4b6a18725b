//! System tests of faults a node must survive without wedging: its data directory's disk
//! filling up and emptying again. The real iothubd binary on a size-limited tmpfs this test
//! mounts (so it runs as root), a simulated GT06 tracker over real TCP, curl-free HTTP checks
//! of `/ready` with reqwest, and a real push receiver.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use iothub::imei::Imei;
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{metric_value, Hub};

/// A tmpfs of a fixed size mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test mounts a size-limited tmpfs for the data directory: run it as root"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("timeout")
            .args(["10", "mount", "-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free on the filesystem.
    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df reports the free bytes")
    }

    /// Writes a file of zeros that leaves `leave` bytes free (or as close as the disk allows).
    fn fill(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create filler");
        let mut left = self.available().saturating_sub(leave);
        let chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["10", "umount", "-l"])
            .arg(self.dir.path())
            .status();
    }
}

/// `/ready`'s HTTP status.
async fn ready_status(hub: &Hub) -> u16 {
    let client = reqwest::Client::new();
    match client
        .get(format!("http://{}/ready", hub.api))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/ready` until it answers `status`, for up to `wait`.
async fn ready_becomes(hub: &Hub, status: u16, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if ready_status(hub).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

const IMEI: &str = "864717003283590";
/// Latitude of alarm 0; alarm `n` is `n` ten-thousandths of a degree north, which names it in
/// the push.
const BASE_LAT: f64 = 10.0;

fn alarm_fix(n: u64) -> Fix {
    let base = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    Fix::at(
        base + chrono::Duration::seconds(n as i64),
        BASE_LAT + n as f64 * 0.0001,
        113.9,
    )
}

fn alarm_number(record: &serde_json::Value) -> Option<u64> {
    let lat = record["msg"]["lat"].as_f64()?;
    Some(((lat - BASE_LAT) / 0.0001).round() as u64)
}

/// One tracker that reconnects whenever the hub closes it; counts the alarms it sent and
/// remembers those the hub acknowledged.
struct Reporter {
    tracker: Option<SimTracker>,
    next: u64,
    acknowledged: BTreeSet<u64>,
}

impl Reporter {
    /// Sends the next alarm (logging in first if needed); whether it was acknowledged.
    async fn send(&mut self, hub: &Hub) -> bool {
        let n = self.next;
        self.next += 1;
        if self.tracker.is_none() {
            let mut config = SimTrackerConfig::new(Imei::parse(IMEI).unwrap());
            config.ack_timeout = Duration::from_secs(3);
            match SimTracker::connect_and_login(hub.gt06, config).await {
                Ok(t) => self.tracker = Some(t),
                Err(_) => return false,
            }
        }
        let tracker = self.tracker.as_mut().expect("logged in above");
        match tracker.send_alarm(2, alarm_fix(n)).await {
            Ok(()) => {
                self.acknowledged.insert(n);
                true
            }
            Err(_) => {
                self.tracker = None;
                false
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_and_the_node_recovers_when_space_returns() {
    let disk = SmallDisk::mount("8m");
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start push receiver");
    // The customer is down, so the log only grows.
    rx.set_failing(true);
    let url = rx.url();
    let data_dir = disk.path().display().to_string();
    let hub = Hub::start(&[("pushURL", &url), ("IOTHUB_DATA_DIR", &data_dir)]);
    assert_eq!(
        ready_status(&hub).await,
        200,
        "/ready before the disk fills"
    );

    let filler = disk.fill("filler", 1024 * 1024);
    let mut reporter = Reporter {
        tracker: None,
        next: 0,
        acknowledged: BTreeSet::new(),
    };
    // Alarms until three in a row are not acknowledged: the disk is full.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "the disk never filled: {} alarms acknowledged",
            reporter.acknowledged.len()
        );
        if reporter.send(&hub).await {
            refused_in_a_row = 0;
        } else {
            refused_in_a_row += 1;
        }
    }
    let acknowledged_before = reporter.acknowledged.len();
    assert!(acknowledged_before > 0, "no alarm acknowledged at all");
    assert!(
        ready_becomes(&hub, 503, Duration::from_secs(20)).await,
        "/ready stayed green with the disk full"
    );
    assert!(
        !reporter.send(&hub).await,
        "an alarm was acknowledged with the disk full"
    );

    std::fs::remove_file(&filler).expect("remove filler");
    assert!(
        ready_becomes(&hub, 200, Duration::from_secs(30)).await,
        "/ready did not turn green again once space returned"
    );
    let mut acknowledged_again = false;
    for _ in 0..10 {
        if reporter.send(&hub).await {
            acknowledged_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        acknowledged_again,
        "no alarm acknowledged after space returned"
    );
    let metrics = hub.metrics_text().await;
    assert!(
        metric_value(&metrics, "iothub_storage_reopens_total", &[]) >= 1.0,
        "the storage was not reopened"
    );

    rx.set_failing(false);
    let acknowledged = reporter.acknowledged.clone();
    let all_pushed = rx
        .wait_for(
            |v| {
                let pushed: BTreeSet<u64> = v
                    .records("/pushalarm")
                    .iter()
                    .filter_map(|r| alarm_number(&r.record))
                    .collect();
                acknowledged.is_subset(&pushed)
            },
            Duration::from_secs(120),
        )
        .await;
    let pushed: BTreeSet<u64> = rx
        .records("/pushalarm")
        .iter()
        .filter_map(|r| alarm_number(&r.record))
        .collect();
    let lost: Vec<u64> = acknowledged.difference(&pushed).copied().collect();
    assert!(
        all_pushed,
        "{} of {} acknowledged alarms never pushed, first {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    drop(hub);
}
