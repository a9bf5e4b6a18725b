//! Cluster harness: its own Redis server, a real nginx stream balancer, several iothubd nodes.
//!
//! Cluster mode is about processes failing independently (a node killed, Redis gone, the
//! broker gone), so every piece here is a real process on loopback that a test can stop and
//! start again: [`RedisServer`], [`Nginx`], the durable [`Tansu`] broker and the [`Hub`]
//! nodes, tied together by [`Cluster`]. [`Fleet`] drives simulated trackers that report, answer
//! instructions and reconnect the way devices do, and keeps the exact list of events the hub
//! acknowledged, so a test can check afterwards that none of them was lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use iothub::event::jimi_time;
use iothub::imei::Imei;
use iothub_loadgen::movement::Fix;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::stats::Counters;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;

use crate::{free_port, iothubd_bin, metric_value, Hub, Tansu, TOKEN};

/// Log output of the helper processes: shown with `IOTHUB_TEST_LOGS=1`, like the hub's.
fn child_log() -> Stdio {
    if std::env::var_os("IOTHUB_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// First of `names` found in a directory of `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Polls `ready` every 50 ms until it holds or `within` passes.
fn wait_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of its own on a free loopback port, keeping nothing on disk, so a
/// restart comes back empty like a Redis that lost its memory.
pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: tempfile::tempdir().expect("temp dir for redis-server"),
        };
        server.spawn();
        server
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn spawn(&mut self) {
        let bin = on_path(&["redis-server"])
            .unwrap_or_else(|| panic!("the cluster tests need redis-server: install Debian's redis-server; scripts/test.sh does"));
        let port = self.addr.port().to_string();
        let child = Command::new(&bin)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(child_log())
            .stderr(child_log())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
        let addr = self.addr;
        let answered = wait_until(Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited at start-up with {status} (port {port} taken? IOTHUB_TEST_LOGS=1 shows its log)");
            }
            pings(addr)
        });
        assert!(
            answered,
            "redis-server did not answer PING on {addr} within 10 s"
        );
    }

    /// Stops the server at once (SIGKILL): everything it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop redis-server before restarting it"
        );
        self.spawn();
    }

    /// A new connection; `Err` while the server is down.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connect to redis {}: {e}", self.addr)),
            Err(_) => Err(format!("connect to redis {}: timed out", self.addr)),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `PING` over a plain socket: the server is up and serving commands, not just listening.
fn pings(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A real nginx running a layer-4 (`stream`) balancer in the foreground, configured for a
/// test: one listener per named service, spread over its backends with `least_conn`, and a
/// backend that refuses connections skipped at once.
pub struct Nginx {
    child: Option<Child>,
    listeners: Vec<(String, SocketAddr)>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// One balanced listener per `(name, backends)`; waits until nginx listens on all.
    pub fn start(services: &[(&str, Vec<SocketAddr>)]) -> Nginx {
        Nginx::launch(services, false)
    }

    /// Like [`Nginx::start`], with `proxy_protocol on`: every connection to a backend starts
    /// with a PROXY protocol (v1) header naming the client's address.
    pub fn start_with_proxy_protocol(services: &[(&str, Vec<SocketAddr>)]) -> Nginx {
        Nginx::launch(services, true)
    }

    fn launch(services: &[(&str, Vec<SocketAddr>)], proxy_protocol: bool) -> Nginx {
        let bin = nginx_bin();
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        let listeners: Vec<(String, SocketAddr)> = services
            .iter()
            .map(|(name, _)| {
                (
                    name.to_string(),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                )
            })
            .collect();
        let conf_path = dir.path().join("nginx.conf");
        let conf = nginx_conf(&bin, dir.path(), services, &listeners, proxy_protocol);
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("nginx stderr file");
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            // No daemon and no master process: the child we hold is the whole nginx, so
            // killing it leaves no orphaned worker holding the ports.
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut nginx = Nginx {
            child: Some(child),
            listeners,
            dir,
        };
        let targets: Vec<SocketAddr> = nginx.listeners.iter().map(|(_, a)| *a).collect();
        let listening = wait_until(Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = nginx.child.as_mut().map(Child::try_wait) {
                panic!("nginx exited at start-up with {status}:\n{}", nginx.logs());
            }
            targets.iter().all(|a| is_listening(*a))
        });
        assert!(
            listening,
            "nginx did not listen on {targets:?} within 10 s:\n{}",
            nginx.logs()
        );
        nginx
    }

    /// The balanced address of service `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("nginx has no service {name:?}"))
    }

    /// nginx's stderr and error log, for failure messages.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether something listens on `addr`, found by failing to bind it rather than by
/// connecting: a probe connection to a balancer would be proxied to a backend, which would
/// then see a connection that no device opened.
fn is_listening(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_err()
}

/// nginx on PATH, else where distributions install it.
fn nginx_bin() -> PathBuf {
    on_path(&["nginx"])
        .or_else(|| {
            ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("the cluster tests need nginx: install Debian's nginx and libnginx-mod-stream; scripts/test.sh does")
        })
}

/// The `load_module` line the stream module needs, or nothing when it is built in. Asks the
/// binary how it was built (`nginx -V`): `--with-stream` is built in, `--with-stream=dynamic`
/// is a module file, looked for in the binary's own `--modules-path` and prefix first.
fn stream_module_directive(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("-V")
        .output()
        .unwrap_or_else(|e| panic!("run {} -V: {e}", bin.display()));
    // nginx prints its build options on stderr.
    let build = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let options: Vec<&str> = build.split_whitespace().collect();
    if options.contains(&"--with-stream") {
        return String::new();
    }
    let option_value = |name: &str| {
        options
            .iter()
            .find_map(|o| o.strip_prefix(name).map(PathBuf::from))
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(option_value("--modules-path="));
    dirs.extend(option_value("--prefix=").map(|p| p.join("modules")));
    dirs.extend(
        [
            "/usr/lib/nginx/modules",
            "/usr/lib64/nginx/modules",
            "/usr/share/nginx/modules",
            "/usr/local/lib/nginx/modules",
            "/usr/local/nginx/modules",
            "/etc/nginx/modules",
        ]
        .iter()
        .map(PathBuf::from),
    );
    match dirs
        .iter()
        .map(|d| d.join("ngx_stream_module.so"))
        .find(|p| p.is_file())
    {
        Some(module) => format!("load_module {};\n", module.display()),
        None => panic!(
            "nginx at {} has no stream module (looked in {dirs:?}): install Debian's nginx and \
             libnginx-mod-stream; scripts/test.sh does",
            bin.display()
        ),
    }
}

fn nginx_conf(
    bin: &Path,
    dir: &Path,
    services: &[(&str, Vec<SocketAddr>)],
    listeners: &[(String, SocketAddr)],
    proxy_protocol: bool,
) -> String {
    let mut conf = stream_module_directive(bin);
    conf.push_str(&format!(
        "worker_processes 1;\npid {}/nginx.pid;\nerror_log {}/error.log notice;\n\
         events {{ worker_connections 4096; }}\nstream {{\n",
        dir.display(),
        dir.display()
    ));
    for ((name, backends), (_, listen)) in services.iter().zip(listeners) {
        conf.push_str(&format!("  upstream {name} {{\n    least_conn;\n"));
        for backend in backends {
            // One refused connection takes the backend out for 2 s: a killed node is skipped
            // by the next device that dials instead of costing every device a retry.
            conf.push_str(&format!(
                "    server {backend} max_fails=1 fail_timeout=2s;\n"
            ));
        }
        conf.push_str("  }\n");
        let proxy_protocol = if proxy_protocol {
            "    proxy_protocol on;\n"
        } else {
            ""
        };
        conf.push_str(&format!(
            "  server {{\n    listen {listen};\n    proxy_pass {name};\n    \
             proxy_connect_timeout 1s;\n    proxy_timeout 1h;\n{proxy_protocol}  }}\n"
        ));
    }
    conf.push_str("}\n");
    conf
}

/// How a node process that was expected to refuse to start ended.
#[derive(Debug)]
pub struct Refusal {
    pub status: ExitStatus,
    /// Its stdout and stderr together.
    pub output: String,
}

/// Runs iothubd with `env` on fresh ports and data directory and waits up to `within` for
/// it to exit. `Err` (with what it printed) when it is still running by then.
pub fn run_node_expecting_exit(
    env: &[(String, String)],
    within: Duration,
) -> Result<Refusal, String> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let out_path = tmp.path().join("output.log");
    let out = File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file handle");
    let mut cmd = Command::new(iothubd_bin());
    cmd.env("IOTHUB_GT06_LISTEN", port())
        .env("IOTHUB_JT808_LISTEN", port())
        .env("IOTHUB_API_LISTEN", port())
        .env("IOTHUB_METRICS_LISTEN", port())
        .envs(super::MediaPorts::new().env())
        .env("IOTHUB_DATA_DIR", tmp.path().join("data"))
        .env("apiToken", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start iothubd");
    let mut status = None;
    wait_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let output = |child: &mut Child| {
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::read_to_string(&out_path).unwrap_or_default()
    };
    match status {
        Some(status) => Ok(Refusal {
            status,
            output: output(&mut child),
        }),
        None => Err(output(&mut child)),
    }
}

/// A device's route as iothub keeps it in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub gate: String,
    pub owner: String,
    pub epoch: String,
    /// Remaining time to live, in milliseconds (`PTTL`).
    pub ttl_ms: i64,
}

/// One iothubd of the cluster.
pub struct Node {
    pub hub: Hub,
    pub gate_id: String,
    pub internal: SocketAddr,
    alive: bool,
}

impl Node {
    pub fn is_alive(&self) -> bool {
        self.alive
    }
}

/// What every node of one cluster shares: where Redis, Kafka and the customer are, and the
/// names that keep this cluster's keys and topics apart.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis: SocketAddr,
    pub kafka: SocketAddr,
    pub push_url: String,
    /// `IOTHUB_REDIS_PREFIX` of every node.
    pub key_prefix: String,
    /// `topicPrefix` of every node.
    pub topic_prefix: String,
    pub lease: Duration,
}

impl ClusterSettings {
    /// The environment of node `gate_id` with its internal listener on `internal`.
    pub fn node_env(&self, gate_id: &str, internal: SocketAddr) -> Vec<(String, String)> {
        [
            ("gateId", gate_id.to_string()),
            ("redisHost", self.redis.ip().to_string()),
            ("redisPort", self.redis.port().to_string()),
            ("IOTHUB_REDIS_PREFIX", self.key_prefix.clone()),
            ("IOTHUB_REDIS_LEASE", self.lease.as_secs().to_string()),
            ("IOTHUB_INTERNAL_LISTEN", internal.to_string()),
            ("kafkaEnable", "true".to_string()),
            ("kafkaHost", self.kafka.to_string()),
            ("topicPrefix", self.topic_prefix.clone()),
            ("kafkaConsumerGroup", format!("{}-push", self.topic_prefix)),
            ("pushURL", self.push_url.clone()),
            ("pushToken", "cluster-push".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts node `gate_id` on fresh ports.
    pub fn start_node(&self, gate_id: &str) -> Node {
        let internal = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let env = self.node_env(gate_id, internal);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let hub = tokio::task::block_in_place(|| Hub::start(&refs));
        Node {
            hub,
            gate_id: gate_id.to_string(),
            internal,
            alive: true,
        }
    }
}

/// Redis, a durable tansu, a push receiver and N iothubd nodes in cluster mode, with an
/// nginx balancing the device ports (`gt06`, `jt808`) and the instruction API (`api`) over
/// the nodes started by [`Cluster::start`].
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub nginx: Nginx,
    pub receiver: PushReceiver,
    pub kafka: Tansu,
    pub redis: RedisServer,
    pub settings: ClusterSettings,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts everything; `name` keeps keys, topics and gate ids of one test apart.
    pub async fn start(name: &str, nodes: usize, lease: Duration) -> Cluster {
        let receiver = PushReceiver::start("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .expect("start push receiver");
        tokio::task::block_in_place(|| {
            let redis = RedisServer::start();
            let kafka = Tansu::start_durable();
            let settings = ClusterSettings {
                redis: redis.addr,
                kafka: kafka.addr,
                push_url: receiver.url(),
                key_prefix: format!("systest-{name}-{}", std::process::id()),
                topic_prefix: format!("systest-{name}"),
                lease,
            };
            let nodes: Vec<Node> = (0..nodes)
                .map(|i| settings.start_node(&format!("{name}-gw{i}")))
                .collect();
            let backends = |pick: fn(&Hub) -> SocketAddr| -> Vec<SocketAddr> {
                nodes.iter().map(|n| pick(&n.hub)).collect()
            };
            let nginx = Nginx::start(&[
                ("gt06", backends(|h| h.gt06)),
                ("jt808", backends(|h| h.jt808)),
                ("api", backends(|h| h.api)),
            ]);
            Cluster {
                nodes,
                nginx,
                receiver,
                kafka,
                redis,
                settings,
                http: reqwest::Client::new(),
            }
        })
    }

    /// Starts one more node, not behind nginx, and returns its index.
    pub fn add_node(&mut self, gate_id: &str) -> usize {
        self.nodes.push(self.settings.start_node(gate_id));
        self.nodes.len() - 1
    }

    /// SIGKILL of node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].hub.kill();
        self.nodes[i].alive = false;
    }

    /// Index of the node named `gate_id`.
    pub fn node_of(&self, gate_id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.gate_id == gate_id)
    }

    pub fn gt06_balanced(&self) -> SocketAddr {
        self.nginx.addr("gt06")
    }

    /// `POST /api/device/sendInstruct` of node `node` (`None`: through the balancer) with a
    /// proNo 128 text command; the whole JSON answer.
    pub async fn instruct(
        &self,
        node: Option<usize>,
        imei: &str,
        command: &str,
        server_flag_id: u32,
        timeout_secs: u32,
    ) -> Value {
        self.instruct_with(node, imei, command, server_flag_id, timeout_secs, false)
            .await
    }

    /// [`Cluster::instruct`] with `offlineFlag` set when `offline`: an instruction the hub
    /// cannot deliver now is queued for the device's next login.
    pub async fn instruct_with(
        &self,
        node: Option<usize>,
        imei: &str,
        command: &str,
        server_flag_id: u32,
        timeout_secs: u32,
        offline: bool,
    ) -> Value {
        let api = match node {
            Some(i) => self.nodes[i].hub.api,
            None => self.nginx.addr("api"),
        };
        let url = format!("http://{api}/api/device/sendInstruct");
        let flag = server_flag_id.to_string();
        let time_out = timeout_secs.to_string();
        let form = [
            ("imei", imei),
            ("proNo", "128"),
            ("cmdContent", command),
            ("serverFlagId", flag.as_str()),
            ("timeOut", time_out.as_str()),
            ("token", TOKEN),
            ("offlineFlag", if offline { "1" } else { "0" }),
        ];
        let response = self
            .http
            .post(&url)
            .form(&form)
            .timeout(Duration::from_secs(u64::from(timeout_secs) + 15))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url} (imei {imei}): {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {url}: HTTP {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("sendInstruct answer of {url} is not JSON ({e}): {body}"))
    }

    fn route_key(&self, imei: &str) -> String {
        format!("{}:route:{imei}", self.settings.key_prefix)
    }

    pub fn node_key(&self, gate_id: &str) -> String {
        format!("{}:node:{gate_id}", self.settings.key_prefix)
    }

    /// A hash and its `PTTL`; `None` when the key does not exist.
    pub async fn hash_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(HashMap<String, String>, i64)>, String> {
        let mut conn = self.redis.connection().await?;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("HGETALL {key}: {e}"))?;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("PTTL {key}: {e}"))?;
        Ok((!fields.is_empty()).then_some((fields, ttl)))
    }

    /// The route of `imei` in Redis.
    pub async fn route(&self, imei: &str) -> Result<Option<Route>, String> {
        let key = self.route_key(imei);
        Ok(self.hash_with_ttl(&key).await?.map(|(fields, ttl_ms)| {
            let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
            Route {
                gate: field("gate"),
                owner: field("owner"),
                epoch: field("epoch"),
                ttl_ms,
            }
        }))
    }

    /// Polls the route of `imei` until `accept` holds; panics after `within` with what was
    /// last seen.
    pub async fn wait_route(
        &self,
        imei: &str,
        within: Duration,
        what: &str,
        accept: impl Fn(&Route) -> bool,
    ) -> Route {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.route(imei).await;
            if let Ok(Some(route)) = &seen {
                if accept(route) {
                    return route.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "route of {imei}: {what} not reached within {within:?}; last seen {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A metric of node `i` (summed over its label sets).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        metric_value(&self.nodes[i].hub.metrics_text().await, name, &[])
    }

    /// Waits until metric `name` equals `value` on every live node; panics after `within`
    /// naming the nodes that did not get there.
    pub async fn wait_metric_on_live_nodes(&self, name: &str, value: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut off = Vec::new();
            for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                let seen = self.metric(i, name).await;
                if seen != value {
                    off.push(format!("{} = {seen}", node.gate_id));
                }
            }
            if off.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become {value} within {within:?} on: {}",
                off.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads `{topicPrefix}.alarm` from the beginning with a consumer group of its own and
    /// returns the `msg.alarmTime`s per message key, stopping once every expected time is
    /// seen or `within` has passed.
    pub async fn kafka_alarm_times(
        &self,
        expected: &BTreeMap<String, BTreeSet<String>>,
        within: Duration,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let broker = self.kafka.addr.to_string();
        let topic = format!("{}.alarm", self.settings.topic_prefix);
        let group = format!(
            "{}-independent-{}",
            self.settings.topic_prefix,
            Utc::now().timestamp_millis()
        );
        let expected = expected.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &broker)
                .set("group.id", &group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("rdkafka consumer");
            consumer.subscribe(&[topic.as_str()]).expect("subscribe");
            let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let deadline = Instant::now() + within;
            while Instant::now() < deadline && !covers(&seen, &expected) {
                let Some(Ok(msg)) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).to_string();
                let value: Value = serde_json::from_slice(msg.payload().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("alarm record of {key} in Kafka is not JSON: {e}"));
                if let Some(time) = value["msg"]["alarmTime"].as_str() {
                    seen.entry(key).or_default().insert(time.to_string());
                }
            }
            seen
        })
        .await
        .expect("Kafka reader task")
    }
}

/// Whether `seen` holds every entry of `expected`.
pub fn covers(
    seen: &BTreeMap<String, BTreeSet<String>>,
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> bool {
    expected
        .iter()
        .all(|(k, want)| seen.get(k).is_some_and(|have| want.is_subset(have)))
}

/// Entries of `expected` missing from `seen`, per key, for failure messages.
pub fn missing(
    seen: &BTreeMap<String, BTreeSet<String>>,
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Vec<String>> {
    let empty = BTreeSet::new();
    expected
        .iter()
        .filter_map(|(k, want)| {
            let have = seen.get(k).unwrap_or(&empty);
            let lost: Vec<String> = want.difference(have).cloned().collect();
            (!lost.is_empty()).then(|| (k.clone(), lost))
        })
        .collect()
}

/// What one fleet tracker did so far.
#[derive(Debug, Clone, Default)]
pub struct TrackerLog {
    pub imei: String,
    /// `alarmTime` of every alarm the hub acknowledged, in order.
    pub acked: Vec<String>,
    /// Every error that cost the tracker its connection or a login, in order.
    pub failures: Vec<String>,
    /// Connections that logged in.
    pub logins: u32,
    /// Online commands received (and answered).
    pub commands: u64,
}

/// Simulated trackers that each report an SOS alarm every `period` (every one with its
/// own `alarmTime`, one second after the previous), answer instructions, and on any error
/// dial again, as devices do. Each log is readable while they run.
pub struct Fleet {
    stop: Arc<AtomicBool>,
    logs: Vec<Arc<Mutex<TrackerLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(log: &Mutex<TrackerLog>) -> MutexGuard<'_, TrackerLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fleet {
    /// One tracker per `(imei, address it dials)`.
    pub fn start(devices: &[(String, SocketAddr)], period: Duration) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut tasks = Vec::new();
        for (imei, addr) in devices {
            let log = Arc::new(Mutex::new(TrackerLog {
                imei: imei.clone(),
                ..TrackerLog::default()
            }));
            logs.push(log.clone());
            tasks.push(tokio::spawn(run_tracker(
                imei.clone(),
                *addr,
                period,
                stop.clone(),
                log,
            )));
        }
        Fleet { stop, logs, tasks }
    }

    pub fn snapshot(&self) -> Vec<TrackerLog> {
        self.logs.iter().map(|l| lock(l).clone()).collect()
    }

    pub fn imeis(&self) -> Vec<String> {
        self.logs.iter().map(|l| lock(l).imei.clone()).collect()
    }

    /// Waits until every tracker has logged in at least once.
    pub async fn wait_all_logged_in(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let waiting: Vec<TrackerLog> = self
                .snapshot()
                .into_iter()
                .filter(|l| l.logins == 0)
                .collect();
            if waiting.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} trackers not logged in within {within:?}: {waiting:?}",
                waiting.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every tracker (closing its connection) and returns the final logs.
    pub async fn stop(self) -> Vec<TrackerLog> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        self.logs.iter().map(|l| lock(l).clone()).collect()
    }
}

/// Acknowledged `alarmTime`s per IMEI.
pub fn acked_by_imei(logs: &[TrackerLog]) -> BTreeMap<String, BTreeSet<String>> {
    logs.iter()
        .map(|l| (l.imei.clone(), l.acked.iter().cloned().collect()))
        .collect()
}

/// Start of the alarm times of the fleet's trackers.
fn alarm_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

async fn run_tracker(
    imei: String,
    addr: SocketAddr,
    period: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TrackerLog>>,
) {
    let parsed = Imei::parse(&imei).unwrap_or_else(|e| panic!("fleet IMEI {imei}: {e:?}"));
    // One set of counters across all the tracker's connections.
    let counters = Arc::new(Counters::new());
    let mut seq: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut config = SimTrackerConfig::new(parsed);
        config.heartbeat_every = Duration::ZERO;
        config.gps_every = Duration::ZERO;
        config.connect_timeout = Duration::from_secs(3);
        config.counters = counters.clone();
        let mut tracker = match SimTracker::connect_and_login(addr, config).await {
            Ok(t) => t,
            Err(e) => {
                lock(&log).failures.push(format!("login via {addr}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        lock(&log).logins += 1;
        loop {
            if stop.load(Ordering::SeqCst) {
                tracker.close().await;
                return;
            }
            seq += 1;
            let time = alarm_epoch() + chrono::Duration::seconds(seq);
            let fix = Fix::at(time, 22.5 + seq as f64 * 1e-5, 113.9);
            let sent = tracker.send_alarm(1, fix).await;
            if let Err(e) = sent {
                lock(&log)
                    .failures
                    .push(format!("alarm {}: {e}", jimi_time(time)));
                break;
            }
            lock(&log).acked.push(jimi_time(time));
            // Idle until the next report, answering whatever instruction comes meanwhile.
            let idle_until = tokio::time::Instant::now() + period;
            let mut broken = None;
            while tokio::time::Instant::now() < idle_until && broken.is_none() {
                let left = idle_until.saturating_duration_since(tokio::time::Instant::now());
                if let Err(e) = tracker.next_command(left).await {
                    broken = Some(e);
                }
            }
            lock(&log).commands = counters.commands_received.load(Ordering::Relaxed);
            if let Some(e) = broken {
                lock(&log).failures.push(format!("idle: {e}"));
                break;
            }
        }
    }
}
