//! Shared harness of the system tests: runs the real `iothubd` binary on loopback ports with
//! its own data directory, and stops, kills or restarts it like an operator would.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Path of the iothubd binary: `IOTHUBD_BIN`, else the one cargo built beside this test.
pub fn iothubd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IOTHUBD_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is inside target/<profile>/deps");
    let bin = profile_dir.join("iothubd");
    assert!(
        bin.exists(),
        "iothubd binary not found at {}: build it first (`cargo build -p iothub-actors` with the same profile) or set IOTHUBD_BIN",
        bin.display()
    );
    bin
}

/// A free loopback port (bound and released; the hub binds it right after), never one this
/// test process handed out before: the tests of a binary run in parallel, and a port freed by
/// a stopped broker must not come back as another test's broker, which the hub of the first
/// test would then take for its own broker back up.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no loopback port left that this test process has not used already")
}

/// The media listeners of a test hub, each on a port of its own (the TLS ones open only
/// when the test gives a certificate).
#[derive(Debug, Clone, Copy)]
pub struct MediaPorts {
    pub http_flv: SocketAddr,
    pub https_flv: SocketAddr,
    pub rtmp: SocketAddr,
    pub rtmps: SocketAddr,
    pub jt1078_live: SocketAddr,
    pub jt1078_playback: SocketAddr,
}

impl MediaPorts {
    pub fn new() -> MediaPorts {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        MediaPorts {
            http_flv: port(),
            https_flv: port(),
            rtmp: port(),
            rtmps: port(),
            jt1078_live: port(),
            jt1078_playback: port(),
        }
    }

    /// The variables that put iothubd's media listeners on these ports.
    pub fn env(&self) -> [(&'static str, String); 6] {
        [
            ("IOTHUB_MEDIA_HTTP_FLV_LISTEN", self.http_flv.to_string()),
            ("IOTHUB_MEDIA_HTTPS_FLV_LISTEN", self.https_flv.to_string()),
            ("IOTHUB_MEDIA_RTMP_LISTEN", self.rtmp.to_string()),
            ("IOTHUB_MEDIA_RTMPS_LISTEN", self.rtmps.to_string()),
            (
                "IOTHUB_MEDIA_JT1078_LIVE_LISTEN",
                self.jt1078_live.to_string(),
            ),
            (
                "IOTHUB_MEDIA_JT1078_PLAYBACK_LISTEN",
                self.jt1078_playback.to_string(),
            ),
        ]
    }
}

impl Default for MediaPorts {
    fn default() -> Self {
        MediaPorts::new()
    }
}

/// One running iothubd process.
pub struct Hub {
    child: Option<Child>,
    pub gt06: SocketAddr,
    pub jt808: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    pub media: MediaPorts,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Hub {
    /// Starts iothubd with a fresh data directory and these extra environment variables
    /// (Jimi names such as `pushURL`, or `IOTHUB_*`).
    pub fn start(env: &[(&str, &str)]) -> Hub {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().to_path_buf();
        let mut hub = Hub {
            child: None,
            gt06: SocketAddr::from(([127, 0, 0, 1], free_port())),
            jt808: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            media: MediaPorts::new(),
            data_dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: Some(tmp),
        };
        // A port free_port found can be taken again before iothubd binds it (tests run in
        // parallel and every outgoing connection takes an ephemeral port): start again on
        // new ports then, and only then.
        for attempt in 1..=3 {
            match hub.try_spawn() {
                Ok(()) => return hub,
                Err(log) if attempt < 3 && log.contains("in use") => {
                    hub.gt06 = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    hub.jt808 = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    hub.api = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    hub.metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    hub.media = MediaPorts::new();
                }
                Err(log) => panic!("iothubd exited during start-up:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("iothubd exited during start-up:\n{log}");
        }
    }

    /// Starts iothubd and waits for its ports; on an early exit, the end of its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(iothubd_bin());
        cmd.env("IOTHUB_GT06_LISTEN", self.gt06.to_string())
            .env("IOTHUB_JT808_LISTEN", self.jt808.to_string())
            .env("IOTHUB_API_LISTEN", self.api.to_string())
            .env("IOTHUB_METRICS_LISTEN", self.metrics.to_string())
            .env("IOTHUB_DATA_DIR", &self.data_dir)
            .env("apiToken", TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in self.media.env() {
            cmd.env(k, v);
        }
        let log_path = self.data_dir.join("iothubd.log");
        if std::env::var_os("IOTHUB_TEST_LOGS").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            let log = std::fs::File::create(&log_path).expect("iothubd log file");
            cmd.stderr(log);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start iothubd");
        self.child = Some(child);
        self.wait_ready().map_err(|status| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{status}; its log ends:\n{}", tail.join("\n"))
        })
    }

    /// Waits until iothubd listens; its exit status if it exits first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(status.to_string());
                }
            }
            let ok = std::net::TcpStream::connect_timeout(&self.gt06, Duration::from_millis(200))
                .is_ok()
                && std::net::TcpStream::connect_timeout(&self.jt808, Duration::from_millis(200))
                    .is_ok()
                && std::net::TcpStream::connect_timeout(&self.api, Duration::from_millis(200))
                    .is_ok();
            if ok {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "iothubd did not open its ports within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("iothubd did not stop within 30 s of SIGTERM");
        }
    }

    /// SIGKILL: the crash path.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same node again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the hub before restarting it"
        );
        self.spawn();
    }

    pub fn instruct_url(&self) -> String {
        format!("http://{}/api/device/sendInstruct", self.api)
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API token the harness configures.
pub const TOKEN: &str = "system-test-token";

/// Sum of a Prometheus counter or gauge over all label sets matching every `label="value"`.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real Kafka-protocol broker (`tansu`) on a free loopback port, stopped on drop. In memory
/// ([`Tansu::start`]), or durable ([`Tansu::start_durable`]): then its SQLite database outlives
/// [`Tansu::stop`], and [`Tansu::restart`] brings the same broker back, on the same port, with
/// what it stored (topics, messages).
pub struct Tansu {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Directory of the durable broker's database; `None` for the in-memory one.
    data: Option<tempfile::TempDir>,
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::launch(None)
    }

    /// A broker that keeps its data in SQLite, in a temporary directory it removes on drop.
    pub fn start_durable() -> Tansu {
        Tansu::launch(Some(tempfile::tempdir().expect("temp dir for tansu")))
    }

    fn launch(data: Option<tempfile::TempDir>) -> Tansu {
        let mut broker = Tansu {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let bin = tansu_bin();
        let url = format!("tcp://{}", self.addr);
        let mut cmd = Command::new(&bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        match &self.data {
            // tansu resolves the SQLite path against its working directory.
            Some(dir) => {
                cmd.current_dir(dir.path())
                    .args(["--storage-engine", "sqlite://tansu.db"]);
            }
            None => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("IOTHUB_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("tansu exited with {status} before listening on {addr} (run with IOTHUB_TEST_LOGS=1 to see its log)");
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the broker (an outage as the hub sees it) and waits for it to exit. A durable
    /// broker keeps its data for [`Tansu::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port: with the same data when durable, empty when
    /// in memory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tansu binary: `TANSU_BIN`, else on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.exists())
    });
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    match on_path.or(home.filter(|p| p.exists())) {
        Some(p) => p,
        None => panic!(
            "the Kafka tests need the tansu broker: run scripts/test.sh, or install it with \
             `cargo install tansu --locked --features dynostore,libsql` (or set TANSU_BIN)"
        ),
    }
}
pub mod cluster;
