//! The Redis pool behind Redis Sentinel: real redis-server processes (a master, its replica)
//! and a real Sentinel on free loopback ports, started by the test. The pool finds the master
//! through the Sentinel, and after a failover its writes reach the new master.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands};
use iothub_actors::cluster::redis::pool;
use iothub_actors::config::Config;

const MASTER_NAME: &str = "iothub-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A redis-server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(args: &[&str]) -> Server {
    let child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    Server(child)
}

fn data_server(port: u16, dir: &Path, replica_of: Option<u16>) -> Server {
    let port_s = port.to_string();
    let dir_s = dir.to_string_lossy().into_owned();
    let mut args = vec![
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_s,
    ];
    let master = replica_of.map(|p| p.to_string());
    if let Some(m) = &master {
        args.extend_from_slice(&["--replicaof", "127.0.0.1", m]);
    }
    redis_server(&args)
}

async fn direct(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("redis on {port} does not answer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until `check` holds, polling; panics with `what` after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn master_port(sentinel: &mut redis::aio::MultiplexedConnection) -> Option<u16> {
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query_async(sentinel)
        .await
        .ok()?;
    addr.and_then(|(_, port)| port.parse().ok())
}

fn sentinel_config(sentinel_port: u16) -> Config {
    let mut config = Config::from_toml_str("[api]\ntoken = \"t\"\n", &|_| None).unwrap();
    config.redis.sentinels = vec![format!("127.0.0.1:{sentinel_port}")];
    config.redis.sentinel_master = MASTER_NAME.into();
    config
}

struct Setup {
    _servers: Vec<Server>,
    _dir: tempfile::TempDir,
    master: u16,
    replica: u16,
    sentinel: u16,
}

/// A master with one replica in sync, and a Sentinel that knows both.
async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica, sentinel) = (free_port(), free_port(), free_port());
    let mut servers = vec![data_server(master, dir.path(), None)];
    let to_master = direct(master).await;
    servers.push(data_server(replica, dir.path(), Some(master)));
    wait_until(Duration::from_secs(10), "the replica in sync", || {
        let mut conn = to_master.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            info.contains("connected_slaves:1") && info.contains("state=online")
        }
    })
    .await;
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    servers.push(redis_server(&[&conf.to_string_lossy(), "--sentinel"]));
    let to_sentinel = direct(sentinel).await;
    wait_until(
        Duration::from_secs(20),
        "the Sentinel to know the replica",
        || {
            let mut conn = to_sentinel.clone();
            async move {
                let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(MASTER_NAME)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                !replicas.is_empty()
            }
        },
    )
    .await;
    Setup {
        _servers: servers,
        _dir: dir,
        master,
        replica,
        sentinel,
    }
}

#[tokio::test]
async fn the_pool_writes_to_the_master_the_sentinel_names() {
    let setup = start().await;
    let pool = pool(&sentinel_config(setup.sentinel).redis).unwrap();
    let mut conn = pool.get().await.expect("a connection through the Sentinel");
    let _: () = conn.set("iothub-test:key", "one").await.unwrap();
    let on_master: Option<String> = direct(setup.master)
        .await
        .get("iothub-test:key")
        .await
        .unwrap();
    assert_eq!(on_master.as_deref(), Some("one"));
}

#[tokio::test]
async fn after_a_failover_the_pool_writes_to_the_new_master() {
    let setup = start().await;
    let pool = pool(&sentinel_config(setup.sentinel).redis).unwrap();
    {
        let mut conn = pool.get().await.unwrap();
        let _: () = conn.set("iothub-test:before", "1").await.unwrap();
    }
    let to_sentinel = direct(setup.sentinel).await;
    // The Sentinel refuses (NOGOODSLAVE) until it has heard from the replica itself.
    wait_until(
        Duration::from_secs(20),
        "the Sentinel to start a failover",
        || {
            let mut conn = to_sentinel.clone();
            async move {
                redis::cmd("SENTINEL")
                    .arg("failover")
                    .arg(MASTER_NAME)
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    let replica = setup.replica;
    wait_until(Duration::from_secs(20), "the replica promoted", || {
        let mut conn = to_sentinel.clone();
        async move { master_port(&mut conn).await == Some(replica) }
    })
    .await;
    // Until the old master is told to follow the new one (which closes its clients), a
    // pooled connection to it still takes writes that the resync then discards: the window
    // in which Sentinel loses writes. Past it, every write through the pool is on the new
    // master.
    let new_master = direct(replica).await;
    let pool_ref = &pool;
    wait_until(
        Duration::from_secs(20),
        "a write through the pool on the new master",
        || {
            let mut check = new_master.clone();
            async move {
                let written = match pool_ref.get().await {
                    Ok(mut conn) => conn.set::<_, _, ()>("iothub-test:after", "2").await.is_ok(),
                    Err(_) => false,
                };
                let there: Option<String> = check.get("iothub-test:after").await.unwrap_or(None);
                written && there.as_deref() == Some("2")
            }
        },
    )
    .await;
}
