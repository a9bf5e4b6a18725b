//! The connection pool every Redis user of cluster mode shares, and the one place that names
//! iothub's Redis keys, so the layout of the shared database is readable in one screen.
//!
//! The pool reaches one Redis (`redis.host`) or the master Redis Sentinel names
//! (`redis.sentinels`): a new connection asks the Sentinels for the current master, and after
//! a failover Sentinel closes the clients of the old master, so the pool's next connections
//! reach the new one. Redis Cluster is not supported: the pool does not follow its redirects.

use std::fmt;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use deadpool_redis::{
    sentinel, Config as PoolConfig, ConnectionAddr, ConnectionInfo, PoolError, Runtime, TimeoutType,
};

use crate::config::RedisConfig;
use iothub::imei::Imei;

/// Most Redis connections one node holds; callers beyond wait for a free one. Sized for
/// a login storm: every login claims its route and reads its offline queue.
const POOL_SIZE: usize = 128;

/// The node's pool of Redis connections: to one Redis, or to the master Sentinel names.
/// Clones share the connections.
#[derive(Clone)]
pub enum Pool {
    Direct(deadpool_redis::Pool),
    Sentinel(sentinel::Pool),
}

impl Pool {
    /// A connection: a pooled one, or a new one when none is free.
    pub async fn get(&self) -> Result<Connection, PoolError> {
        Ok(match self {
            Pool::Direct(p) => Connection::Direct(p.get().await?),
            Pool::Sentinel(p) => Connection::Sentinel(p.get().await?),
        })
    }
}

/// A connection from a [`Pool`]; back in the pool when dropped.
pub enum Connection {
    Direct(deadpool_redis::Connection),
    Sentinel(sentinel::Connection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Direct(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Direct(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}

/// The pool of connections to the configured Redis. Connections are opened lazily, so this
/// succeeds while Redis is down; the first command says why it cannot reach it.
pub fn pool(config: &RedisConfig) -> anyhow::Result<Pool> {
    let mut limits = deadpool_redis::PoolConfig::new(POOL_SIZE);
    // A pool wait or a connect that hangs must not hold an API request or a login for long:
    // Redis on the same network answers in a millisecond or not at all.
    limits.timeouts.wait = Some(std::time::Duration::from_secs(3));
    limits.timeouts.create = Some(std::time::Duration::from_secs(2));
    limits.timeouts.recycle = Some(std::time::Duration::from_secs(2));
    let node = deadpool_redis::RedisConnectionInfo {
        db: config.db,
        username: None,
        password: config.password.clone(),
        protocol: Default::default(),
    };
    if !config.sentinels.is_empty() {
        let urls: Vec<String> = config
            .sentinels
            .iter()
            .map(|addr| format!("redis://{addr}"))
            .collect();
        let mut pool_config = sentinel::Config::from_urls(
            urls,
            config.sentinel_master.clone(),
            sentinel::SentinelServerType::Master,
        )
        .with_node_connection_info(Some(sentinel::SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(node),
        }));
        pool_config.pool = Some(limits);
        return pool_config
            .create_pool(Some(Runtime::Tokio1))
            .map(Pool::Sentinel)
            .map_err(|e| {
                anyhow::anyhow!("redis.sentinels: cannot create the connection pool: {e}")
            });
    }
    let host = config
        .host
        .clone()
        .ok_or_else(|| anyhow::anyhow!("redis.host: not set (single-node mode has no Redis)"))?;
    let mut pool_config = PoolConfig::from_connection_info(ConnectionInfo {
        addr: ConnectionAddr::Tcp(host, config.port),
        redis: node,
    });
    pool_config.pool = Some(limits);
    pool_config
        .create_pool(Some(Runtime::Tokio1))
        .map(Pool::Direct)
        .map_err(|e| anyhow::anyhow!("redis: cannot create the connection pool: {e}"))
}

/// Why a Redis operation failed: no connection, or the command itself.
#[derive(Debug)]
pub enum RedisCause {
    Pool(PoolError),
    Command(RedisError),
    /// Redis answered something iothub never writes.
    Unexpected(String),
    /// iothub's own deadline for the operation passed.
    Deadline(std::time::Duration),
}

impl From<PoolError> for RedisCause {
    fn from(e: PoolError) -> Self {
        RedisCause::Pool(e)
    }
}

impl From<RedisError> for RedisCause {
    fn from(e: RedisError) -> Self {
        RedisCause::Command(e)
    }
}

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // deadpool's own wording ("Error occurred while creating a new object") hides that
        // the object is a Redis connection; say what an operator needs to know instead.
        match self {
            RedisCause::Pool(PoolError::Backend(e)) => write!(f, "cannot connect: {e}"),
            RedisCause::Pool(PoolError::Timeout(TimeoutType::Wait)) => {
                f.write_str("no free connection in the pool within its wait timeout")
            }
            RedisCause::Pool(PoolError::Timeout(TimeoutType::Create)) => {
                f.write_str("connecting timed out")
            }
            RedisCause::Pool(PoolError::Timeout(TimeoutType::Recycle)) => {
                f.write_str("checking a pooled connection timed out")
            }
            RedisCause::Pool(e) => e.fmt(f),
            RedisCause::Command(e) => e.fmt(f),
            RedisCause::Unexpected(what) => write!(f, "unexpected answer: {what}"),
            RedisCause::Deadline(d) => write!(f, "no answer within {d:?}"),
        }
    }
}

/// Counts a failed Redis operation under `op` and returns the message callers report, which
/// names Redis and the cause.
pub fn report_failure(op: &'static str, failure: RedisCause) -> String {
    metrics::counter!("iothub_redis_errors_total", "op" => op).increment(1);
    format!("redis: {failure}")
}

/// A failed Redis operation of the cluster's own (routes, node identities): the operation
/// and the cause, counted in `iothub_redis_errors_total{op}` when made.
#[derive(Debug, thiserror::Error)]
#[error("redis {op}: {message}")]
pub struct RedisFailure {
    pub op: &'static str,
    pub message: String,
}

impl RedisFailure {
    pub fn new(op: &'static str, cause: impl Into<RedisCause>) -> RedisFailure {
        RedisFailure {
            op,
            message: report_failure(op, cause.into()),
        }
    }
}

/// A connection from the pool; a failure is counted and reported as a failure of `op`.
pub async fn connection(pool: &Pool, op: &'static str) -> Result<Connection, RedisFailure> {
    pool.get()
        .await
        .map_err(|e| RedisFailure::new(op, RedisCause::from(e)))
}

/// A lease as the milliseconds `PEXPIRE` takes.
pub fn lease_ms(lease: std::time::Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

/// Names of iothub's keys, all under `{prefix}:`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Hash of the node holding `gateId`: `addr` (internal advertise address), `instance`
    /// (random per process); expires unless renewed.
    pub fn node(&self, gate_id: &str) -> String {
        format!("{}:node:{gate_id}", self.prefix)
    }

    /// Hash of a device's route: `gate`, `owner` (the session's unique token), `epoch`
    /// (counts claims); expires unless renewed by the owning node.
    pub fn route(&self, imei: Imei) -> String {
        format!("{}:route:{imei}", self.prefix)
    }

    /// Hash of a media stream's route (`stream` as `1/<imei>`, `live/2/<imei>`): `gate`,
    /// `owner` (the publishing node's token for that stream), `url` (the node's HTTP-FLV base
    /// URL); expires unless renewed by that node while the stream lives.
    pub fn media(&self, stream: &str) -> String {
        format!("{}:media:{stream}", self.prefix)
    }

    /// Offline instructions of one device.
    pub fn offline(&self, imei: Imei) -> String {
        format!("{}:offline:{imei}", self.prefix)
    }

    /// Counter the offline instruction ids come from.
    pub fn offline_next_id(&self) -> String {
        format!("{}:offline-next-id", self.prefix)
    }

    /// JT/T 808 authentication code of one terminal.
    pub fn auth_code(&self, imei: Imei) -> String {
        format!("{}:authcode:{imei}", self.prefix)
    }
}

/// A Redis for tests: the one at `REDIS_URL` (default `redis://127.0.0.1:6379`), reached
/// through the production pool, with a key prefix no other test uses.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    use deadpool_redis::redis::{self, ConnectionAddr, IntoConnectionInfo};

    use super::{pool, Keys, Pool, RedisCause};
    use crate::config::RedisConfig;

    pub(crate) struct TestRedis {
        pub(crate) pool: Pool,
        pub(crate) keys: Keys,
        config: RedisConfig,
        prefix: String,
    }

    fn config(host: String, port: u16, password: Option<String>, db: i64) -> RedisConfig {
        RedisConfig {
            host: Some(host),
            port,
            password,
            db,
            key_prefix: String::new(),
            lease: Duration::from_secs(30),
            sentinels: Vec::new(),
            sentinel_master: "mymaster".into(),
        }
    }

    /// Connects to the test Redis; panics with what to start when it does not answer.
    pub(crate) async fn redis() -> TestRedis {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let info = url
            .as_str()
            .into_connection_info()
            .unwrap_or_else(|e| panic!("REDIS_URL {url:?} is not a Redis URL: {e}"));
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!("REDIS_URL {url:?}: the tests need a plain TCP Redis");
        };
        let settings = info.redis_settings();
        let config = config(
            host,
            port,
            settings.password().map(str::to_string),
            settings.db(),
        );
        let pool = pool(&config).expect("redis pool");
        let answer: Result<String, RedisCause> = match pool.get().await {
            Ok(mut conn) => redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(RedisCause::from),
            Err(e) => Err(RedisCause::from(e)),
        };
        if let Err(e) = answer {
            panic!("Redis at {url} does not answer ({e}): start redis-server (scripts/test.sh starts one)");
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!(
            "iothub-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestRedis {
            pool,
            keys: Keys::new(&prefix),
            config,
            prefix,
        }
    }

    impl TestRedis {
        /// Its own pool on the same Redis and prefix: another node of the same cluster.
        pub(crate) fn other_node(&self) -> (Pool, Keys) {
            (pool(&self.config).expect("redis pool"), self.keys.clone())
        }

        /// Deletes every key this test wrote.
        pub(crate) async fn cleanup(self) {
            let mut conn = self.pool.get().await.expect("redis connection");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .expect("DEL");
            }
        }
    }

    /// Counts `iothub_redis_errors_total` by `op`. Installed as the thread's local recorder,
    /// which sees everything a `#[tokio::test]` does, since its runtime has one thread.
    #[derive(Default)]
    pub(crate) struct RedisErrorCounts {
        counts: Mutex<HashMap<String, Arc<AtomicU64>>>,
    }

    struct Count(Arc<AtomicU64>);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }

        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::Relaxed);
        }
    }

    impl RedisErrorCounts {
        /// Failures counted so far for `op`.
        pub(crate) fn get(&self, op: &str) -> u64 {
            self.counts
                .lock()
                .ok()
                .and_then(|counts| counts.get(op).map(|c| c.load(Ordering::Relaxed)))
                .unwrap_or(0)
        }
    }

    impl metrics::Recorder for RedisErrorCounts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            if key.name() != "iothub_redis_errors_total" {
                return Counter::noop();
            }
            let op = key
                .labels()
                .find(|label| label.key() == "op")
                .map(|label| label.value().to_string())
                .unwrap_or_default();
            let Ok(mut counts) = self.counts.lock() else {
                return Counter::noop();
            };
            Counter::from_arc(Arc::new(Count(counts.entry(op).or_default().clone())))
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// A pool that points at a loopback port nothing listens on.
    pub(crate) fn unreachable() -> (Pool, Keys) {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("local addr").port()
        };
        let pool = pool(&config("127.0.0.1".to_string(), port, None, 0)).expect("redis pool");
        (pool, Keys::new("iothub-test-unreachable"))
    }
}
