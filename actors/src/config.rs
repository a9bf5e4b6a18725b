//! Configuration: a TOML file (`config/iothub.toml`, every key documented there), overridden by
//! the environment variable names of the Jimi compose files, so an operator can swap
//! containers without rewriting their compose file. Invalid values stop start-up with a
//! message naming the key and the value.
//!
//! The default file is compiled into the binary, so a node started from any directory (or
//! from a file that sets only a few keys) gets the same documented defaults: the file given
//! by the operator is laid over the embedded one key by key, then the environment is laid
//! over both.
//!
//! Environment variables (Jimi names first, then iothub's own):
//! `gateId`, `readTimeOut`, `writeTimeOut`, `connectTimeout`, `newImeiRule`, `apiToken`,
//! `kafkaEnable`, `kafkaHost`, `topicPrefix`, `kafkaConsumerGroup`, `kafkaAuthSwitch`,
//! `kafkaAuthUserName`, `kafkaAuthPassword`, `redisHost`, `redisPort`, `redisPassword` /
//! `redisPasswd` / `redisPass`, `redisDb` / `redisDB`, `pushURL`, `pushToken`, `offlineCmdPushURL`,
//! `offlineCmdPushToken`; `IOTHUB_GT06_LISTEN`, `IOTHUB_JT808_LISTEN`,
//! `IOTHUB_JT808_AUTH_GRACE`, `IOTHUB_JT808_ACCEPT_UNKNOWN_AUTH`, `IOTHUB_API_LISTEN`,
//! `IOTHUB_METRICS_LISTEN`, `IOTHUB_DATA_DIR`, `IOTHUB_RETENTION`, `IOTHUB_COMMIT_INTERVAL_MS`,
//! `IOTHUB_CRC_POLICY`,
//! `IOTHUB_MAX_CONNECTIONS`, `IOTHUB_KEEPALIVE_TIME`, `IOTHUB_KEEPALIVE_INTERVAL`,
//! `IOTHUB_KEEPALIVE_RETRIES`, `IOTHUB_GT06_PROXY_PROTOCOL`, `IOTHUB_JT808_PROXY_PROTOCOL`,
//! `IOTHUB_API_DEFAULT_TIMEOUT`, `IOTHUB_API_MAX_TIMEOUT`,
//! `IOTHUB_KAFKA_PARTITIONS`, `IOTHUB_KAFKA_SPOOL_MAX`, `IOTHUB_PUSH_BATCH_SIZE`, `IOTHUB_PUSH_BATCH_DELAY_MS`,
//! `IOTHUB_PUSH_MIN_BACKOFF`, `IOTHUB_PUSH_MAX_BACKOFF`, `IOTHUB_PUSH_MAX_AGE`,
//! `IOTHUB_PUSH_REQUEST_TIMEOUT`, `IOTHUB_REDIS_DB`, `IOTHUB_REDIS_PREFIX`, `IOTHUB_REDIS_LEASE`,
//! `IOTHUB_INTERNAL_LISTEN`, `IOTHUB_INTERNAL_ADVERTISE`, `IOTHUB_WORKER_THREADS`,
//! `IOTHUB_DEVICE_READ_TIMEOUT`, `IOTHUB_DEVICE_WRITE_TIMEOUT`, `IOTHUB_DEVICE_LOGIN_TIMEOUT`,
//! `IOTHUB_GT06_NEW_IMEI_RULE`, `IOTHUB_JT808_NEW_IMEI_RULE`, `IOTHUB_PUSH_CONNECT_TIMEOUT`,
//! `IOTHUB_JT808_ALLOW_REREGISTRATION`, `IOTHUB_JT808_REGISTRATIONS_PER_CONNECTION`,
//! `IOTHUB_JT808_REGISTRATIONS_PER_SOURCE`, `IOTHUB_JT808_UNUSED_CODE_EXPIRY_DAYS`,
//! `IOTHUB_HTTP_HEADER_READ_TIMEOUT`, `IOTHUB_HTTP_BODY_READ_TIMEOUT`, `IOTHUB_HTTP_IDLE_TIMEOUT`,
//! `IOTHUB_HTTP_MAX_CONNECTIONS`, `IOTHUB_KAFKA_REPLICATION_FACTOR`,
//! `IOTHUB_KAFKA_MIN_INSYNC_REPLICAS`, `IOTHUB_PUSH_DEAD_LETTER_AFTER`,
//! `IOTHUB_PUSH_DEAD_LETTER_MAX`, `IOTHUB_REDIS_SENTINELS`, `IOTHUB_REDIS_SENTINEL_MASTER`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use iothub::codec::CrcPolicy;
use serde::Deserialize;

/// The default configuration file, compiled in.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../config/iothub.toml");

/// Where [`Config::load`] looks when no path is given (relative to the working directory).
pub const DEFAULT_PATH: &str = "config/iothub.toml";

/// The whole configuration of one iothubd node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Node identity (`gateId`), reported in `_gateId` and used as the Kafka client id.
    pub gate_id: String,
    pub gateway: GatewayConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub storage: StorageConfig,
    pub kafka: KafkaConfig,
    pub push: PushConfig,
    pub redis: RedisConfig,
    pub cluster: ClusterConfig,
    pub runtime: RuntimeConfig,
    pub http: HttpConfig,
    pub media: MediaConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Threads running the hub's tasks and actors; `None` = one per available core.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// GT06/JIMI listener, default 0.0.0.0:21100.
    pub gt06_listen: SocketAddr,
    /// Close a device connection that sent nothing for this long. Not the Jimi `readTimeOut`,
    /// which the Jimi gateways use for their own calls (see `config/iothub.toml`).
    pub read_timeout: Duration,
    /// `writeTimeOut`: give up on a write that does not complete in this time.
    pub write_timeout: Duration,
    /// Close a connection that does not log in within this time. Not the Jimi
    /// `connectTimeout` (see `config/iothub.toml`).
    pub connect_timeout: Duration,
    pub crc_policy: CrcPolicy,
    /// Most concurrent device connections of the node, both device ports together.
    pub max_connections: usize,
    /// `newImeiRule` of the JT/T 808 terminals on the GT06 port: turn a terminal phone number
    /// into the device's real IMEI.
    pub gt06_new_imei_rule: bool,
    /// `newImeiRule` of the terminals on the JT/T 808 port.
    pub jt808_new_imei_rule: bool,
    /// JT/T 808 listener, default 0.0.0.0:21121.
    pub jt808_listen: SocketAddr,
    /// How long a JT/T 808 connection refused for not being authenticated may stay open.
    pub jt808_auth_grace: Duration,
    /// Authenticate JT/T 808 terminals whose code the hub never issued (and keep the code).
    pub jt808_accept_unknown_auth: bool,
    /// Issue a new code to a JT/T 808 terminal that already holds one.
    pub jt808_allow_reregistration: bool,
    /// Registrations one connection may make.
    pub jt808_registrations_per_connection: u32,
    /// Registrations one source address may make per minute; 0 = no limit.
    pub jt808_registrations_per_source_per_minute: u32,
    /// A code never used to authenticate is forgotten this long after it was issued.
    pub jt808_unused_code_expiry: Duration,
    /// TCP keepalive of every device connection.
    pub keepalive: KeepaliveConfig,
    /// Connections to the GT06 port start with a PROXY protocol header (v1 or v2).
    pub gt06_proxy_protocol: bool,
    /// Connections to the JT/T 808 port start with a PROXY protocol header (v1 or v2).
    pub jt808_proxy_protocol: bool,
}

/// TCP keepalive of device sockets: the kernel probes a connection silent for `time`, every
/// `interval`, and drops it after `retries` unanswered probes, so the connection of a device
/// that vanished without a close (power cut, coverage lost) is reclaimed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeepaliveConfig {
    pub time: Duration,
    pub interval: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Instruction API, default 0.0.0.0:10088.
    pub listen: SocketAddr,
    /// `apiToken`: the `token` every sendInstruct request must carry.
    pub token: String,
    /// True when no token was configured and iothubd made a random one for this run.
    pub token_generated: bool,
    /// Default `timeOut` when the request has none.
    pub default_timeout: Duration,
    /// Upper bound accepted for `timeOut`.
    pub max_timeout: Duration,
}

/// What every HTTP listener (API, cluster internal, metrics) allows one client to hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpConfig {
    /// A request's head must arrive whole within this time of its first byte (of the
    /// connection's start, for the first request).
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this time of its head.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request for this long after its last response is closed.
    pub idle_timeout: Duration,
    /// Most open connections per listener; the next one is refused with a 503.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Prometheus `/metrics`, default 0.0.0.0:9100.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Directory of the embedded event log and offline instruction store.
    pub data_dir: PathBuf,
    /// How long an event may wait in the log before it is given up (delivered or not).
    pub retention: Duration,
    /// Least time between the starts of two commits of the embedded log under load.
    pub commit_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `kafkaEnable`.
    pub enable: bool,
    /// `kafkaHost`: bootstrap servers, `host:port[,host:port]`.
    pub hosts: String,
    /// `topicPrefix`: topics are `{prefix}.{topic}`, default `iothub`.
    pub topic_prefix: String,
    /// `kafkaConsumerGroup` of the push consumer.
    pub consumer_group: String,
    /// Create missing topics at start-up with this many partitions.
    pub partitions: i32,
    /// Replicas of each partition of the topics iothubd creates; `None` = the broker's
    /// default (`default.replication.factor`).
    pub replication_factor: Option<i16>,
    /// `min.insync.replicas` of the topics iothubd creates; `None` = the broker's default.
    pub min_insync_replicas: Option<i32>,
    /// `kafkaAuthSwitch`, `kafkaAuthUserName`, `kafkaAuthPassword`: SASL/PLAIN when set.
    pub auth: Option<(String, String)>,
    /// Most events kept in the local spool while Kafka is unreachable (at least 1).
    pub spool_max_events: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    /// `pushURL`: base URL, endpoints are appended (`/pushgps`, ...). Empty = no pushes.
    pub url: String,
    /// `pushToken`: sent as `token` in every push.
    pub token: String,
    /// `offlineCmdPushURL`: full URL for offline instruction replies. Empty = not sent.
    pub offline_cmd_url: String,
    /// `offlineCmdPushToken`.
    pub offline_cmd_token: String,
    /// Most records in one `data_list`.
    pub batch_size: usize,
    /// How long to wait to fill a batch.
    pub batch_delay: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Events older than this that still could not be delivered are dropped and counted;
    /// zero: never.
    pub max_age: Duration,
    /// Per-request timeout (Jimi `readTimeOut`).
    pub request_timeout: Duration,
    /// Time to open a connection to the customer (Jimi `connectTimeout`).
    pub connect_timeout: Duration,
    /// Tries of a batch the endpoint refuses for good (a 4xx other than 408/429) before it
    /// is split to set the refused records aside as dead letters.
    pub dead_letter_after: u32,
    /// Most records the dead-letter store holds; past it a refused record holds its topic up.
    pub dead_letter_max: u64,
}

/// Redis of the cluster mode (registry leases, offline instructions).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redisHost`; `None` = single node, registry and offline store embedded.
    pub host: Option<String>,
    /// `redisPort`.
    pub port: u16,
    /// `redisPassword` (or `redisPasswd`, `redisPass`); `None` = no AUTH.
    pub password: Option<String>,
    /// `redisDb`: the logical database index.
    pub db: i64,
    /// Every key iothub writes starts with `{key_prefix}:`, so several hubs can share a Redis.
    pub key_prefix: String,
    /// How long a device route or a node's identity outlives its last renewal. Renewed every
    /// third of it, so a dead node's routes expire within one lease.
    pub lease: Duration,
    /// Redis Sentinels (`host:port`) that name the current master of `sentinel_master`;
    /// when set, `host` and `port` are not used.
    pub sentinels: Vec<String>,
    /// The master's name in the Sentinels' configuration.
    pub sentinel_master: String,
}

impl RedisConfig {
    /// Cluster mode: Redis holds the routes, offline instructions and auth codes.
    pub fn cluster_mode(&self) -> bool {
        self.host.is_some() || !self.sentinels.is_empty()
    }
}

/// How the gateway nodes of a cluster reach each other.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Node-to-node listener (instructions routed to the device's owner, takeover notices).
    /// Started only in cluster mode. Default 0.0.0.0:10089.
    pub internal_listen: SocketAddr,
    /// `host:port` other nodes use to reach `internal_listen`; published in Redis.
    pub internal_advertise: String,
}

/// The media server: JT/T 1078 and RTMP ingest, HTTP-FLV and RTMP egress (`[media]`).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// HTTP-FLV viewers, default 0.0.0.0:8880; `None` = off.
    pub http_flv_listen: Option<SocketAddr>,
    /// HTTPS-FLV viewers, default 0.0.0.0:8890; started only with a certificate.
    pub https_flv_listen: Option<SocketAddr>,
    /// RTMP publishers and players, default 0.0.0.0:1935.
    pub rtmp_listen: Option<SocketAddr>,
    /// RTMPS, default 0.0.0.0:19350; started only with a certificate.
    pub rtmps_listen: Option<SocketAddr>,
    /// JT/T 1078 live streams (TCP and UDP), default 0.0.0.0:10000.
    pub jt1078_live_listen: Option<SocketAddr>,
    /// JT/T 1078 playback streams (TCP and UDP), default 0.0.0.0:10001.
    pub jt1078_playback_listen: Option<SocketAddr>,
    /// PEM or PKCS#12 file for the TLS listeners; `None` = plain listeners only.
    pub tls_certificate: Option<PathBuf>,
    /// Password of a PKCS#12 certificate (may be empty).
    pub tls_password: String,
    /// Host name or address put in 0x9101/0x9201; empty = the local address the device's
    /// signalling connection reached.
    pub public_host: String,
    /// Port put in 0x9101 (the live listener's port as the devices reach it).
    pub public_live_port: u16,
    /// Port put in 0x9201.
    pub public_playback_port: u16,
    /// Cluster mode: the base URL (`http://node-1.example:8880`) viewers who reached another
    /// node are redirected to for the streams published here; written to Redis with each
    /// stream's route. Empty outside cluster mode or without an HTTP-FLV listener.
    pub advertise_http: String,
    /// An on-demand stream is closed (0x9102) this long after its last viewer left.
    pub idle_close: Duration,
    /// How long a viewer of an on-demand stream waits for the device to start streaming.
    pub start_timeout: Duration,
    /// The GOP cache of a stream holds at most this many tags and bytes.
    pub gop_max_tags: usize,
    pub gop_max_bytes: usize,
    /// Tags one viewer may have queued before it skips to the next key frame.
    pub viewer_queue_tags: usize,
    /// A viewer that stays behind (skipping) this long is disconnected.
    pub viewer_lag_limit: Duration,
    /// Most streams and viewers on this node; more are refused with 503.
    pub max_streams: usize,
    pub max_viewers: usize,
    /// Most bytes one JT/T 1078 frame may reassemble to.
    pub max_frame_bytes: usize,
    /// What FLV egress does with device audio that is not AAC.
    pub audio: AudioPolicy,
    /// How H.265 is tagged in FLV.
    pub hevc_enhanced_flv: bool,
    /// When set, publishing needs `?sign=<hex HMAC-SHA256(secret, stream path)>`.
    pub publish_secret: String,
}

/// What FLV egress does with G.711, G.726 and ADPCM device audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPolicy {
    /// Transcoded to AAC, which every browser player decodes.
    Transcode,
    /// G.711 passed through as FLV G.711 tags; other codecs dropped.
    PassThrough,
    /// No audio in FLV egress.
    Drop,
}

/// Why the configuration cannot be used. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, wrong types and unknown keys in a TOML file; toml's message names the
    /// key and shows the line.
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value that has the right type but cannot be used.
    #[error("{key}: {value:?} {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    /// A key that must be set and is not.
    #[error("{key}: missing: {hint}")]
    Missing { key: String, hint: String },
}

impl Config {
    /// Loads the configuration: the file at `path` (it must exist), or without a path
    /// `config/iothub.toml` when present, otherwise the embedded defaults; then the process
    /// environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let (origin, text) = match path {
            Some(p) => (p.display().to_string(), read_file(p)?),
            None => {
                let default = Path::new(DEFAULT_PATH);
                if default.is_file() {
                    (DEFAULT_PATH.to_string(), read_file(default)?)
                } else {
                    return Config::from_toml_str(EMBEDDED_DEFAULTS, &env);
                }
            }
        };
        Config::build(&origin, &text, &env)
    }

    /// Builds the configuration from TOML text laid over the embedded defaults, with `env`
    /// standing in for the process environment (tests pass a map).
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::build("(given text)", text, env)
    }

    fn build(
        origin: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let defaults = parse_file("(embedded defaults)", EMBEDDED_DEFAULTS)?;
        let file = parse_file(origin, text)?.overlay(defaults);
        resolve(file, &Env(env))
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_file(origin: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// The file as written: every key optional so a partial file can be laid over the defaults;
// unknown keys are refused.

/// Declares one `[section]` of the file and how it is laid over a base.
macro_rules! section {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $( #[serde(default)] $field: Option<$ty>, )*
        }

        impl $name {
            fn overlay(self, base: Self) -> Self {
                Self { $( $field: self.$field.or(base.$field), )* }
            }
        }
    };
}

section!(GatewayFile {
    gt06_listen: String,
    read_timeout_secs: u64,
    write_timeout_secs: u64,
    connect_timeout_secs: u64,
    crc_policy: String,
    max_connections: u64,
    new_imei_rule: bool,
    gt06_new_imei_rule: bool,
    jt808_new_imei_rule: bool,
    jt808_listen: String,
    jt808_auth_grace_secs: u64,
    jt808_accept_unknown_auth_codes: bool,
    jt808_allow_reregistration: bool,
    jt808_registrations_per_connection: u64,
    jt808_registrations_per_source_per_minute: u64,
    jt808_unused_code_expiry_days: u64,
    keepalive_time_secs: u64,
    keepalive_interval_secs: u64,
    keepalive_retries: u64,
    gt06_proxy_protocol: bool,
    jt808_proxy_protocol: bool,
});

section!(ApiFile {
    listen: String,
    token: String,
    default_timeout_secs: u64,
    max_timeout_secs: u64,
});

section!(MetricsFile { listen: String });

section!(StorageFile {
    data_dir: String,
    retention_secs: u64,
    commit_interval_ms: u64,
});

section!(KafkaFile {
    enable: bool,
    hosts: String,
    topic_prefix: String,
    consumer_group: String,
    partitions: u64,
    replication_factor: i64,
    min_insync_replicas: u64,
    auth: bool,
    auth_user: String,
    auth_password: String,
    spool_max_events: u64,
});

section!(RedisFile {
    host: String,
    port: u64,
    password: String,
    db: u64,
    key_prefix: String,
    lease_secs: u64,
    sentinels: Vec<String>,
    sentinel_master: String,
});

section!(RuntimeFile {
    worker_threads: u64
});

section!(HttpFile {
    header_read_timeout_secs: u64,
    body_read_timeout_secs: u64,
    idle_timeout_secs: u64,
    max_connections: u64,
});

section!(MediaFile {
    http_flv_listen: String,
    https_flv_listen: String,
    rtmp_listen: String,
    rtmps_listen: String,
    jt1078_live_listen: String,
    jt1078_playback_listen: String,
    tls_certificate: String,
    tls_password: String,
    public_host: String,
    public_live_port: u64,
    public_playback_port: u64,
    advertise_http: String,
    idle_close_secs: u64,
    start_timeout_secs: u64,
    gop_max_tags: u64,
    gop_max_bytes: u64,
    viewer_queue_tags: u64,
    viewer_lag_limit_secs: u64,
    max_streams: u64,
    max_viewers: u64,
    max_frame_bytes: u64,
    audio: String,
    hevc_enhanced_flv: bool,
    publish_secret: String,
});

section!(ClusterFile {
    internal_listen: String,
    internal_advertise: String,
});

section!(PushFile {
    url: String,
    token: String,
    offline_cmd_url: String,
    offline_cmd_token: String,
    batch_size: u64,
    batch_delay_ms: u64,
    min_backoff_secs: u64,
    max_backoff_secs: u64,
    max_age_secs: u64,
    request_timeout_secs: u64,
    connect_timeout_secs: u64,
    dead_letter_after: u64,
    dead_letter_max: u64,
});

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    gate_id: Option<String>,
    #[serde(default)]
    gateway: GatewayFile,
    #[serde(default)]
    api: ApiFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    storage: StorageFile,
    #[serde(default)]
    kafka: KafkaFile,
    #[serde(default)]
    redis: RedisFile,
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    push: PushFile,
    #[serde(default)]
    runtime: RuntimeFile,
    #[serde(default)]
    http: HttpFile,
    #[serde(default)]
    media: MediaFile,
}

impl FileConfig {
    fn overlay(self, base: FileConfig) -> FileConfig {
        FileConfig {
            gate_id: self.gate_id.or(base.gate_id),
            gateway: self.gateway.overlay(base.gateway),
            api: self.api.overlay(base.api),
            metrics: self.metrics.overlay(base.metrics),
            storage: self.storage.overlay(base.storage),
            kafka: self.kafka.overlay(base.kafka),
            redis: self.redis.overlay(base.redis),
            cluster: self.cluster.overlay(base.cluster),
            push: self.push.overlay(base.push),
            runtime: self.runtime.overlay(base.runtime),
            http: self.http.overlay(base.http),
            media: self.media.overlay(base.media),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resolution: the environment over the file, then validation with the key's name.

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

/// A value together with the name it came from (the environment variable when it overrode
/// the file, else the TOML key), so a later check can name what the operator wrote.
struct Sourced<T> {
    value: T,
    key: String,
}

impl<T> Sourced<T> {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError
    where
        T: fmt::Display,
    {
        ConfigError::Invalid {
            key: self.key.clone(),
            value: self.value.to_string(),
            reason: reason.into(),
        }
    }
}

/// How an environment string becomes a typed value, and the phrase that says why not.
trait FromEnv: Sized {
    const EXPECTED: &'static str;
    fn from_env(s: &str) -> Option<Self>;
}

impl FromEnv for String {
    const EXPECTED: &'static str = "is not text";
    fn from_env(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
}

/// A comma-separated list; empty items are left out.
impl FromEnv for Vec<String> {
    const EXPECTED: &'static str = "a comma-separated list";
    fn from_env(raw: &str) -> Option<Self> {
        Some(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }
}

impl FromEnv for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_env(raw: &str) -> Option<Self> {
        raw.trim().parse().ok()
    }
}

impl FromEnv for u64 {
    const EXPECTED: &'static str = "is not a non-negative integer";
    fn from_env(s: &str) -> Option<Self> {
        u64::from_str(s.trim()).ok()
    }
}

impl FromEnv for bool {
    const EXPECTED: &'static str = "is not a boolean (true/false/1/0/yes/no/on/off)";
    fn from_env(s: &str) -> Option<Self> {
        parse_bool(s)
    }
}

/// Booleans as the Jimi compose files and shells write them.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The value of `toml_key`, overridden by the first set variable of `env_names`.
fn pick<T: FromEnv>(
    env: &Env<'_>,
    toml_key: &str,
    env_names: &[&str],
    file: Option<T>,
) -> Result<Sourced<T>, ConfigError> {
    for name in env_names {
        if let Some(raw) = env.get(name) {
            return match T::from_env(&raw) {
                Some(value) => Ok(Sourced {
                    value,
                    key: (*name).to_string(),
                }),
                None => Err(ConfigError::Invalid {
                    key: (*name).to_string(),
                    value: raw,
                    reason: T::EXPECTED.to_string(),
                }),
            };
        }
    }
    match file {
        Some(value) => Ok(Sourced {
            value,
            key: toml_key.to_string(),
        }),
        None => Err(ConfigError::Missing {
            key: toml_key.to_string(),
            hint: "absent from the file and from the embedded defaults".to_string(),
        }),
    }
}

/// A duration in whole seconds, at least one second.
fn secs(
    env: &Env<'_>,
    toml_key: &str,
    env_names: &[&str],
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    duration(
        env,
        toml_key,
        env_names,
        file,
        "seconds",
        Duration::from_secs,
    )
}

fn duration(
    env: &Env<'_>,
    toml_key: &str,
    env_names: &[&str],
    file: Option<u64>,
    unit: &str,
    make: fn(u64) -> Duration,
) -> Result<Duration, ConfigError> {
    let v = pick::<u64>(env, toml_key, env_names, file).map_err(|e| match e {
        ConfigError::Invalid { key, value, .. } => ConfigError::Invalid {
            key,
            value,
            reason: format!("is not a number of {unit}"),
        },
        other => other,
    })?;
    if v.value == 0 {
        return Err(v.invalid(format!("must be at least 1 ({unit})")));
    }
    Ok(make(v.value))
}

fn socket_addr(
    env: &Env<'_>,
    toml_key: &str,
    env_name: &str,
    file: Option<String>,
) -> Result<SocketAddr, ConfigError> {
    let v = pick(env, toml_key, &[env_name], file)?;
    SocketAddr::from_str(v.value.trim())
        .map_err(|_| v.invalid("is not an ip:port listen address (e.g. 0.0.0.0:10088)"))
}

fn integer_in(
    env: &Env<'_>,
    toml_key: &str,
    env_names: &[&str],
    file: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let v = pick::<u64>(env, toml_key, env_names, file)?;
    if !range.contains(&v.value) {
        return Err(v.invalid(format!(
            "must be between {} and {}",
            range.start(),
            range.end()
        )));
    }
    Ok(v.value)
}

/// A push URL: empty (disabled) or an absolute http(s) URL.
fn url(
    env: &Env<'_>,
    toml_key: &str,
    env_name: &str,
    file: Option<String>,
) -> Result<String, ConfigError> {
    let v = pick(env, toml_key, &[env_name], file)?;
    let trimmed = v.value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    match reqwest::Url::parse(trimmed) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(trimmed.to_string()),
        _ => Err(v.invalid("is not an http:// or https:// URL")),
    }
}

/// A listen address, or `None` when the value is empty or `off`.
fn optional_socket_addr(
    env: &Env<'_>,
    toml_key: &str,
    env_name: &str,
    file: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let v = pick(env, toml_key, &[env_name], file)?;
    match v.value.trim() {
        "" | "off" => Ok(None),
        given => SocketAddr::from_str(given)
            .map(Some)
            .map_err(|_| v.invalid("is not an ip:port listen address (e.g. 0.0.0.0:8880), or off")),
    }
}

fn resolve_media(
    m: MediaFile,
    env: &Env<'_>,
    cluster_mode: bool,
) -> Result<MediaConfig, ConfigError> {
    let listen = |key: &str, var: &str, file: Option<String>| {
        optional_socket_addr(env, &format!("media.{key}"), var, file)
    };
    let count = |key: &str, var: &str, file: Option<u64>, range| {
        integer_in(env, &format!("media.{key}"), &[var], file, range).map(|n| n as usize)
    };
    let port = |key: &str, var: &str, file: Option<u64>| {
        integer_in(env, &format!("media.{key}"), &[var], file, 0..=65535).map(|n| n as u16)
    };
    let certificate = pick(
        env,
        "media.tls_certificate",
        &["IOTHUB_MEDIA_TLS_CERTIFICATE"],
        m.tls_certificate,
    )?;
    let audio = pick(env, "media.audio", &["IOTHUB_MEDIA_AUDIO"], m.audio)?;
    let audio_policy = match audio.value.trim() {
        "transcode" => AudioPolicy::Transcode,
        "passthrough" => AudioPolicy::PassThrough,
        "drop" => AudioPolicy::Drop,
        _ => return Err(audio.invalid("must be transcode, passthrough or drop")),
    };
    let http_flv_listen = listen(
        "http_flv_listen",
        "IOTHUB_MEDIA_HTTP_FLV_LISTEN",
        m.http_flv_listen,
    )?;
    let advertise = pick(
        env,
        "media.advertise_http",
        &["IOTHUB_MEDIA_ADVERTISE_HTTP"],
        m.advertise_http,
    )?;
    let advertise_http = match (advertise.value.trim(), http_flv_listen) {
        ("", _) if !cluster_mode => String::new(),
        ("", None) => String::new(),
        ("", Some(listen)) if listen.ip().is_unspecified() => {
            // As cluster.internal_advertise: listening everywhere, the node is reached by
            // its host name.
            match env
                .get("HOSTNAME")
                .or_else(host_name)
                .map(|h| h.trim().to_string())
            {
                Some(host) if !host.is_empty() => format!("http://{host}:{}", listen.port()),
                _ => {
                    return Err(ConfigError::Missing {
                        key: "media.advertise_http".to_string(),
                        hint: format!(
                            "cluster mode (redis.host is set), media.http_flv_listen is {listen} \
                             and the host name is unknown: set the base URL viewers reach this \
                             node's HTTP-FLV at (IOTHUB_MEDIA_ADVERTISE_HTTP)"
                        ),
                    })
                }
            }
        }
        ("", Some(listen)) => format!("http://{listen}"),
        (given, _) => {
            let rest = given
                .strip_prefix("http://")
                .or_else(|| given.strip_prefix("https://"))
                .unwrap_or_default();
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
                return Err(advertise.invalid(
                    "is not an http:// or https:// base URL without a path (e.g. http://node-1.example:8880)",
                ));
            }
            given.trim_end_matches('/').to_string()
        }
    };
    Ok(MediaConfig {
        http_flv_listen,
        https_flv_listen: listen(
            "https_flv_listen",
            "IOTHUB_MEDIA_HTTPS_FLV_LISTEN",
            m.https_flv_listen,
        )?,
        rtmp_listen: listen("rtmp_listen", "IOTHUB_MEDIA_RTMP_LISTEN", m.rtmp_listen)?,
        rtmps_listen: listen("rtmps_listen", "IOTHUB_MEDIA_RTMPS_LISTEN", m.rtmps_listen)?,
        jt1078_live_listen: listen(
            "jt1078_live_listen",
            "IOTHUB_MEDIA_JT1078_LIVE_LISTEN",
            m.jt1078_live_listen,
        )?,
        jt1078_playback_listen: listen(
            "jt1078_playback_listen",
            "IOTHUB_MEDIA_JT1078_PLAYBACK_LISTEN",
            m.jt1078_playback_listen,
        )?,
        tls_certificate: match certificate.value.trim() {
            "" => None,
            path => Some(PathBuf::from(path)),
        },
        tls_password: pick(
            env,
            "media.tls_password",
            &["IOTHUB_MEDIA_TLS_PASSWORD"],
            m.tls_password,
        )?
        .value,
        public_host: pick(
            env,
            "media.public_host",
            &["IOTHUB_MEDIA_PUBLIC_HOST"],
            m.public_host,
        )?
        .value
        .trim()
        .to_string(),
        public_live_port: port(
            "public_live_port",
            "IOTHUB_MEDIA_PUBLIC_LIVE_PORT",
            m.public_live_port,
        )?,
        public_playback_port: port(
            "public_playback_port",
            "IOTHUB_MEDIA_PUBLIC_PLAYBACK_PORT",
            m.public_playback_port,
        )?,
        advertise_http,
        idle_close: secs(
            env,
            "media.idle_close_secs",
            &["IOTHUB_MEDIA_IDLE_CLOSE"],
            m.idle_close_secs,
        )?,
        start_timeout: secs(
            env,
            "media.start_timeout_secs",
            &["IOTHUB_MEDIA_START_TIMEOUT"],
            m.start_timeout_secs,
        )?,
        gop_max_tags: count(
            "gop_max_tags",
            "IOTHUB_MEDIA_GOP_MAX_TAGS",
            m.gop_max_tags,
            16..=100_000,
        )?,
        gop_max_bytes: count(
            "gop_max_bytes",
            "IOTHUB_MEDIA_GOP_MAX_BYTES",
            m.gop_max_bytes,
            65_536..=1 << 30,
        )?,
        viewer_queue_tags: count(
            "viewer_queue_tags",
            "IOTHUB_MEDIA_VIEWER_QUEUE_TAGS",
            m.viewer_queue_tags,
            16..=100_000,
        )?,
        viewer_lag_limit: secs(
            env,
            "media.viewer_lag_limit_secs",
            &["IOTHUB_MEDIA_VIEWER_LAG_LIMIT"],
            m.viewer_lag_limit_secs,
        )?,
        max_streams: count(
            "max_streams",
            "IOTHUB_MEDIA_MAX_STREAMS",
            m.max_streams,
            1..=1_000_000,
        )?,
        max_viewers: count(
            "max_viewers",
            "IOTHUB_MEDIA_MAX_VIEWERS",
            m.max_viewers,
            1..=1_000_000,
        )?,
        max_frame_bytes: count(
            "max_frame_bytes",
            "IOTHUB_MEDIA_MAX_FRAME_BYTES",
            m.max_frame_bytes,
            65_536..=64 << 20,
        )?,
        audio: audio_policy,
        hevc_enhanced_flv: pick(
            env,
            "media.hevc_enhanced_flv",
            &["IOTHUB_MEDIA_HEVC_ENHANCED_FLV"],
            m.hevc_enhanced_flv,
        )?
        .value,
        publish_secret: pick(
            env,
            "media.publish_secret",
            &["IOTHUB_MEDIA_PUBLISH_SECRET"],
            m.publish_secret,
        )?
        .value,
    })
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn resolve(f: FileConfig, env: &Env<'_>) -> Result<Config, ConfigError> {
    let gate_id = pick(env, "gate_id", &["gateId"], f.gate_id)?;
    if gate_id.value.is_empty()
        || gate_id.value.len() > 128
        || !gate_id
            .value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(gate_id.invalid("must be 1-128 printable characters without spaces"));
    }

    let g = f.gateway;
    let crc = pick(
        env,
        "gateway.crc_policy",
        &["IOTHUB_CRC_POLICY"],
        g.crc_policy,
    )?;
    let crc_policy = match crc.value.trim().to_ascii_lowercase().as_str() {
        "warn" => CrcPolicy::Warn,
        "reject" => CrcPolicy::Reject,
        _ => return Err(crc.invalid("must be \"warn\" or \"reject\"")),
    };
    // The Jimi name sets both listeners; each listener's own key or variable overrides it
    // (the Jimi JT/T 808 gateways run one port with the rule and one without).
    let new_imei_rule = pick(
        env,
        "gateway.new_imei_rule",
        &["newImeiRule"],
        g.new_imei_rule,
    )?
    .value;
    let gateway = GatewayConfig {
        gt06_listen: socket_addr(
            env,
            "gateway.gt06_listen",
            "IOTHUB_GT06_LISTEN",
            g.gt06_listen,
        )?,
        read_timeout: secs(
            env,
            "gateway.read_timeout_secs",
            &["IOTHUB_DEVICE_READ_TIMEOUT"],
            g.read_timeout_secs,
        )?,
        write_timeout: secs(
            env,
            "gateway.write_timeout_secs",
            &["writeTimeOut", "IOTHUB_DEVICE_WRITE_TIMEOUT"],
            g.write_timeout_secs,
        )?,
        connect_timeout: secs(
            env,
            "gateway.connect_timeout_secs",
            &["IOTHUB_DEVICE_LOGIN_TIMEOUT"],
            g.connect_timeout_secs,
        )?,
        crc_policy,
        max_connections: usize::try_from(integer_in(
            env,
            "gateway.max_connections",
            &["IOTHUB_MAX_CONNECTIONS"],
            g.max_connections,
            1..=1_000_000,
        )?)
        .unwrap_or(usize::MAX),
        gt06_new_imei_rule: pick(
            env,
            "gateway.gt06_new_imei_rule",
            &["IOTHUB_GT06_NEW_IMEI_RULE"],
            g.gt06_new_imei_rule.or(Some(new_imei_rule)),
        )?
        .value,
        jt808_new_imei_rule: pick(
            env,
            "gateway.jt808_new_imei_rule",
            &["IOTHUB_JT808_NEW_IMEI_RULE"],
            g.jt808_new_imei_rule.or(Some(new_imei_rule)),
        )?
        .value,
        jt808_listen: socket_addr(
            env,
            "gateway.jt808_listen",
            "IOTHUB_JT808_LISTEN",
            g.jt808_listen,
        )?,
        jt808_auth_grace: secs(
            env,
            "gateway.jt808_auth_grace_secs",
            &["IOTHUB_JT808_AUTH_GRACE"],
            g.jt808_auth_grace_secs,
        )?,
        jt808_accept_unknown_auth: pick(
            env,
            "gateway.jt808_accept_unknown_auth_codes",
            &["IOTHUB_JT808_ACCEPT_UNKNOWN_AUTH"],
            g.jt808_accept_unknown_auth_codes,
        )?
        .value,
        jt808_allow_reregistration: pick(
            env,
            "gateway.jt808_allow_reregistration",
            &["IOTHUB_JT808_ALLOW_REREGISTRATION"],
            g.jt808_allow_reregistration,
        )?
        .value,
        jt808_registrations_per_connection: u32::try_from(integer_in(
            env,
            "gateway.jt808_registrations_per_connection",
            &["IOTHUB_JT808_REGISTRATIONS_PER_CONNECTION"],
            g.jt808_registrations_per_connection,
            1..=1_000,
        )?)
        .unwrap_or(u32::MAX),
        jt808_registrations_per_source_per_minute: u32::try_from(integer_in(
            env,
            "gateway.jt808_registrations_per_source_per_minute",
            &["IOTHUB_JT808_REGISTRATIONS_PER_SOURCE"],
            g.jt808_registrations_per_source_per_minute,
            0..=1_000_000,
        )?)
        .unwrap_or(u32::MAX),
        jt808_unused_code_expiry: Duration::from_secs(
            integer_in(
                env,
                "gateway.jt808_unused_code_expiry_days",
                &["IOTHUB_JT808_UNUSED_CODE_EXPIRY_DAYS"],
                g.jt808_unused_code_expiry_days,
                1..=36_500,
            )? * 86_400,
        ),
        // Linux bounds: TCP_KEEPIDLE and TCP_KEEPINTVL up to 32767 s, TCP_KEEPCNT up to 127.
        keepalive: KeepaliveConfig {
            time: Duration::from_secs(integer_in(
                env,
                "gateway.keepalive_time_secs",
                &["IOTHUB_KEEPALIVE_TIME"],
                g.keepalive_time_secs,
                1..=32_767,
            )?),
            interval: Duration::from_secs(integer_in(
                env,
                "gateway.keepalive_interval_secs",
                &["IOTHUB_KEEPALIVE_INTERVAL"],
                g.keepalive_interval_secs,
                1..=32_767,
            )?),
            retries: integer_in(
                env,
                "gateway.keepalive_retries",
                &["IOTHUB_KEEPALIVE_RETRIES"],
                g.keepalive_retries,
                1..=127,
            )? as u32,
        },
        gt06_proxy_protocol: pick(
            env,
            "gateway.gt06_proxy_protocol",
            &["IOTHUB_GT06_PROXY_PROTOCOL"],
            g.gt06_proxy_protocol,
        )?
        .value,
        jt808_proxy_protocol: pick(
            env,
            "gateway.jt808_proxy_protocol",
            &["IOTHUB_JT808_PROXY_PROTOCOL"],
            g.jt808_proxy_protocol,
        )?
        .value,
    };

    let a = f.api;
    let token = pick(env, "api.token", &["apiToken"], a.token)?;
    // No guessable default: without a configured token the API still runs, with a random
    // token printed at start-up, so the hub is never open to anyone who can reach the port.
    let token_generated = token.value.is_empty();
    let token_value = if token_generated {
        random_token()
    } else {
        token.value
    };
    let default_timeout = secs(
        env,
        "api.default_timeout_secs",
        &["IOTHUB_API_DEFAULT_TIMEOUT"],
        a.default_timeout_secs,
    )?;
    let max_timeout = secs(
        env,
        "api.max_timeout_secs",
        &["IOTHUB_API_MAX_TIMEOUT"],
        a.max_timeout_secs,
    )?;
    if default_timeout > max_timeout {
        return Err(ConfigError::Invalid {
            key: "api.default_timeout_secs".to_string(),
            value: default_timeout.as_secs().to_string(),
            reason: format!(
                "must not exceed api.max_timeout_secs ({})",
                max_timeout.as_secs()
            ),
        });
    }
    // The API adds a margin to max_timeout for its own deadline; keep the sum far from
    // overflow and from timeouts no HTTP client would wait for.
    if max_timeout > Duration::from_secs(3600) {
        return Err(ConfigError::Invalid {
            key: "api.max_timeout_secs".to_string(),
            value: max_timeout.as_secs().to_string(),
            reason: "must be at most 3600".to_string(),
        });
    }
    let api = ApiConfig {
        listen: socket_addr(env, "api.listen", "IOTHUB_API_LISTEN", a.listen)?,
        token: token_value,
        token_generated,
        default_timeout,
        max_timeout,
    };

    let metrics = MetricsConfig {
        listen: socket_addr(
            env,
            "metrics.listen",
            "IOTHUB_METRICS_LISTEN",
            f.metrics.listen,
        )?,
    };

    let s = f.storage;
    let data_dir = pick(env, "storage.data_dir", &["IOTHUB_DATA_DIR"], s.data_dir)?;
    if data_dir.value.trim().is_empty() {
        return Err(data_dir.invalid("must name a directory"));
    }
    let storage = StorageConfig {
        data_dir: PathBuf::from(data_dir.value),
        retention: secs(
            env,
            "storage.retention_secs",
            &["IOTHUB_RETENTION"],
            s.retention_secs,
        )?,
        commit_interval: Duration::from_millis(integer_in(
            env,
            "storage.commit_interval_ms",
            &["IOTHUB_COMMIT_INTERVAL_MS"],
            s.commit_interval_ms,
            0..=1000,
        )?),
    };

    let k = f.kafka;
    let enable = pick(env, "kafka.enable", &["kafkaEnable"], k.enable)?.value;
    let hosts = pick(env, "kafka.hosts", &["kafkaHost"], k.hosts)?;
    if enable && hosts.value.trim().is_empty() {
        return Err(hosts.invalid("must list host:port bootstrap servers when kafka is enabled"));
    }
    if enable {
        if let Some(problem) = kafka_hosts_problem(&hosts.value) {
            return Err(hosts.invalid(problem));
        }
    }
    let topic_prefix = pick(env, "kafka.topic_prefix", &["topicPrefix"], k.topic_prefix)?;
    if !topic_prefix
        .value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(topic_prefix.invalid("may only hold ASCII letters, digits, '.', '_' and '-'"));
    }
    let consumer_group = pick(
        env,
        "kafka.consumer_group",
        &["kafkaConsumerGroup"],
        k.consumer_group,
    )?;
    if consumer_group.value.trim().is_empty() {
        return Err(consumer_group.invalid("must not be empty"));
    }
    let partitions = integer_in(
        env,
        "kafka.partitions",
        &["IOTHUB_KAFKA_PARTITIONS"],
        k.partitions,
        1..=10_000,
    )?;
    let replication_factor = pick(
        env,
        "kafka.replication_factor",
        &["IOTHUB_KAFKA_REPLICATION_FACTOR"],
        k.replication_factor,
    )?;
    if replication_factor.value == 0
        || !(-1..=i64::from(i16::MAX)).contains(&replication_factor.value)
    {
        return Err(replication_factor.invalid("must be -1 (the broker's default) or at least 1"));
    }
    let min_insync_replicas = integer_in(
        env,
        "kafka.min_insync_replicas",
        &["IOTHUB_KAFKA_MIN_INSYNC_REPLICAS"],
        k.min_insync_replicas,
        0..=i16::MAX as u64,
    )?;
    if replication_factor.value > 0 && min_insync_replicas > replication_factor.value as u64 {
        return Err(ConfigError::Invalid {
            key: "kafka.min_insync_replicas".to_string(),
            value: min_insync_replicas.to_string(),
            reason: format!(
                "must not exceed kafka.replication_factor ({}): acks=all could never succeed",
                replication_factor.value
            ),
        });
    }
    let auth_on = pick(env, "kafka.auth", &["kafkaAuthSwitch"], k.auth)?.value;
    let auth_user = pick(env, "kafka.auth_user", &["kafkaAuthUserName"], k.auth_user)?.value;
    let auth_password = pick(
        env,
        "kafka.auth_password",
        &["kafkaAuthPassword"],
        k.auth_password,
    )?
    .value;
    let auth = if auth_on {
        if auth_user.is_empty() {
            return Err(ConfigError::Missing {
                key: "kafkaAuthUserName".to_string(),
                hint: "required when kafkaAuthSwitch is true".to_string(),
            });
        }
        if auth_password.is_empty() {
            return Err(ConfigError::Missing {
                key: "kafkaAuthPassword".to_string(),
                hint: "required when kafkaAuthSwitch is true".to_string(),
            });
        }
        Some((auth_user, auth_password))
    } else {
        None
    };
    let kafka = KafkaConfig {
        enable,
        hosts: hosts.value.trim().to_string(),
        topic_prefix: topic_prefix.value,
        consumer_group: consumer_group.value,
        partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
        replication_factor: i16::try_from(replication_factor.value)
            .ok()
            .filter(|r| *r > 0),
        min_insync_replicas: i32::try_from(min_insync_replicas).ok().filter(|m| *m > 0),
        auth,
        spool_max_events: integer_in(
            env,
            "kafka.spool_max_events",
            &["IOTHUB_KAFKA_SPOOL_MAX"],
            k.spool_max_events,
            1..=u64::MAX,
        )?,
    };

    let r = f.redis;
    let redis_password = redis_password(env, r.password)?;
    let redis = RedisConfig {
        host: non_empty(
            pick(env, "redis.host", &["redisHost"], r.host)?
                .value
                .into(),
        )
        .map(|h| h.trim().to_string()),
        port: integer_in(env, "redis.port", &["redisPort"], r.port, 1..=65_535)?
            .try_into()
            .unwrap_or(6379),
        password: non_empty(Some(redis_password)),
        db: i64::try_from(integer_in(
            env,
            "redis.db",
            &["redisDb", "redisDB", "IOTHUB_REDIS_DB"],
            r.db,
            0..=65_535,
        )?)
        .unwrap_or(0),
        key_prefix: {
            let v = pick(
                env,
                "redis.key_prefix",
                &["IOTHUB_REDIS_PREFIX"],
                r.key_prefix,
            )?;
            if v.value.is_empty()
                || !v
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            {
                return Err(v.invalid("must be non-empty ASCII letters, digits, '.', '_' and '-'"));
            }
            v.value
        },
        lease: Duration::from_secs(integer_in(
            env,
            "redis.lease_secs",
            &["IOTHUB_REDIS_LEASE"],
            r.lease_secs,
            3..=3600,
        )?),
        sentinels: {
            let v = pick(
                env,
                "redis.sentinels",
                &["IOTHUB_REDIS_SENTINELS"],
                r.sentinels,
            )?;
            if let Some(bad) = v.value.iter().find(|a| {
                a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return Err(ConfigError::Invalid {
                    key: v.key.clone(),
                    value: v.value.join(","),
                    reason: format!("{bad:?} is not host:port"),
                });
            }
            v.value
        },
        sentinel_master: {
            let v = pick(
                env,
                "redis.sentinel_master",
                &["IOTHUB_REDIS_SENTINEL_MASTER"],
                r.sentinel_master,
            )?;
            if v.value.trim().is_empty() {
                return Err(v.invalid("must not be empty"));
            }
            v.value
        },
    };

    let c = f.cluster;
    let internal_listen = socket_addr(
        env,
        "cluster.internal_listen",
        "IOTHUB_INTERNAL_LISTEN",
        c.internal_listen,
    )?;
    let advertise = pick(
        env,
        "cluster.internal_advertise",
        &["IOTHUB_INTERNAL_ADVERTISE"],
        c.internal_advertise,
    )?;
    let internal_advertise = match advertise.value.trim() {
        "" if redis.cluster_mode() && internal_listen.ip().is_unspecified() => {
            // Listening on every interface: other nodes reach this one by its host name,
            // which is what container networks (compose service names) resolve.
            match env.get("HOSTNAME").or_else(host_name).map(|h| h.trim().to_string()) {
                Some(host) if !host.is_empty() => format!("{host}:{}", internal_listen.port()),
                _ => {
                    return Err(ConfigError::Missing {
                        key: "cluster.internal_advertise".to_string(),
                        hint: format!(
                            "cluster mode (redis.host is set), cluster.internal_listen is {internal_listen} \
                             and the host name is unknown: set the host:port other nodes reach this node at \
                             (IOTHUB_INTERNAL_ADVERTISE)"
                        ),
                    })
                }
            }
        }
        "" => internal_listen.to_string(),
        given => {
            let ok = given.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(advertise.invalid("is not host:port (e.g. gateway-1:10089)"));
            }
            given.to_string()
        }
    };
    let cluster = ClusterConfig {
        internal_listen,
        internal_advertise,
    };
    if redis.cluster_mode() && api.token_generated {
        return Err(ConfigError::Missing {
            key: "api.token".to_string(),
            hint: "cluster mode (redis.host is set): every node needs the same apiToken, which \
                   also authenticates the calls between nodes"
                .to_string(),
        });
    }

    let p = f.push;
    let min_backoff = secs(
        env,
        "push.min_backoff_secs",
        &["IOTHUB_PUSH_MIN_BACKOFF"],
        p.min_backoff_secs,
    )?;
    let max_backoff = secs(
        env,
        "push.max_backoff_secs",
        &["IOTHUB_PUSH_MAX_BACKOFF"],
        p.max_backoff_secs,
    )?;
    if min_backoff > max_backoff {
        return Err(ConfigError::Invalid {
            key: "push.min_backoff_secs".to_string(),
            value: min_backoff.as_secs().to_string(),
            reason: format!(
                "must not exceed push.max_backoff_secs ({})",
                max_backoff.as_secs()
            ),
        });
    }
    let push = PushConfig {
        url: url(env, "push.url", "pushURL", p.url)?,
        token: pick(env, "push.token", &["pushToken"], p.token)?.value,
        offline_cmd_url: url(
            env,
            "push.offline_cmd_url",
            "offlineCmdPushURL",
            p.offline_cmd_url,
        )?,
        offline_cmd_token: pick(
            env,
            "push.offline_cmd_token",
            &["offlineCmdPushToken"],
            p.offline_cmd_token,
        )?
        .value,
        batch_size: usize::try_from(integer_in(
            env,
            "push.batch_size",
            &["IOTHUB_PUSH_BATCH_SIZE"],
            p.batch_size,
            1..=10_000,
        )?)
        .unwrap_or(100),
        batch_delay: duration(
            env,
            "push.batch_delay_ms",
            &["IOTHUB_PUSH_BATCH_DELAY_MS"],
            p.batch_delay_ms,
            "milliseconds",
            Duration::from_millis,
        )?,
        min_backoff,
        max_backoff,
        // 0 keeps undelivered events until they are delivered: transient failures are then
        // retried for as long as they last.
        max_age: Duration::from_secs(integer_in(
            env,
            "push.max_age_secs",
            &["IOTHUB_PUSH_MAX_AGE"],
            p.max_age_secs,
            0..=u64::MAX,
        )?),
        request_timeout: secs(
            env,
            "push.request_timeout_secs",
            &["IOTHUB_PUSH_REQUEST_TIMEOUT", "readTimeOut"],
            p.request_timeout_secs,
        )?,
        connect_timeout: secs(
            env,
            "push.connect_timeout_secs",
            &["IOTHUB_PUSH_CONNECT_TIMEOUT", "connectTimeout"],
            p.connect_timeout_secs,
        )?,
        dead_letter_after: u32::try_from(integer_in(
            env,
            "push.dead_letter_after",
            &["IOTHUB_PUSH_DEAD_LETTER_AFTER"],
            p.dead_letter_after,
            1..=1000,
        )?)
        .unwrap_or(5),
        dead_letter_max: integer_in(
            env,
            "push.dead_letter_max",
            &["IOTHUB_PUSH_DEAD_LETTER_MAX"],
            p.dead_letter_max,
            1..=u64::MAX,
        )?,
    };

    let worker_threads = integer_in(
        env,
        "runtime.worker_threads",
        &["IOTHUB_WORKER_THREADS"],
        f.runtime.worker_threads,
        0..=1024,
    )?;
    let runtime = RuntimeConfig {
        worker_threads: (worker_threads > 0).then_some(worker_threads as usize),
    };

    let h = f.http;
    let http = HttpConfig {
        header_read_timeout: secs(
            env,
            "http.header_read_timeout_secs",
            &["IOTHUB_HTTP_HEADER_READ_TIMEOUT"],
            h.header_read_timeout_secs,
        )?,
        body_read_timeout: secs(
            env,
            "http.body_read_timeout_secs",
            &["IOTHUB_HTTP_BODY_READ_TIMEOUT"],
            h.body_read_timeout_secs,
        )?,
        idle_timeout: secs(
            env,
            "http.idle_timeout_secs",
            &["IOTHUB_HTTP_IDLE_TIMEOUT"],
            h.idle_timeout_secs,
        )?,
        max_connections: integer_in(
            env,
            "http.max_connections",
            &["IOTHUB_HTTP_MAX_CONNECTIONS"],
            h.max_connections,
            1..=65536,
        )? as usize,
    };

    let media = resolve_media(f.media, env, redis.cluster_mode())?;
    Ok(Config {
        gate_id: gate_id.value,
        gateway,
        api,
        metrics,
        storage,
        kafka,
        push,
        redis,
        cluster,
        runtime,
        http,
        media,
    })
}

/// Why `kafka.hosts` is not a bootstrap server list (`host[:port][,host[:port]]`, each
/// optionally `scheme://`-prefixed as librdkafka accepts), or `None` when it is one. librdkafka
/// itself only logs a bad entry and retries forever, which would look like an outage.
fn kafka_hosts_problem(hosts: &str) -> Option<String> {
    for server in hosts.split(',').map(str::trim) {
        let address = server.split_once("://").map_or(server, |(_, rest)| rest);
        // `[v6]:port`, `host:port`, or a bare host (librdkafka's default port).
        let (host, port) = match address.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, rest)) => match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Some(format!("`{server}` is not [address]:port")),
                },
                None => return Some(format!("`{server}` lacks the closing `]`")),
            },
            None => match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            },
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Some(format!("`{server}` does not name a host"));
        }
        if port.is_some_and(|p| !matches!(p.parse::<u16>(), Ok(1..))) {
            return Some(format!("`{server}` does not end in a port 1..=65535"));
        }
    }
    None
}

/// The kernel's host name (Linux), when the environment does not give `HOSTNAME`.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
}

/// The Jimi services spell the Redis password three ways; two different values set at once
/// are refused rather than guessed between.
fn redis_password(env: &Env<'_>, file: Option<String>) -> Result<String, ConfigError> {
    let names = ["redisPassword", "redisPasswd", "redisPass"];
    let mut found: Option<(&str, String)> = None;
    for name in names {
        if let Some(v) = env.get(name) {
            match &found {
                Some((first, prev)) if *prev != v => {
                    return Err(ConfigError::Invalid {
                        key: name.to_string(),
                        value: "(hidden)".to_string(),
                        reason: format!("differs from {first}; set only one of them"),
                    });
                }
                Some(_) => {}
                None => found = Some((name, v)),
            }
        }
    }
    match found {
        Some((_, v)) => Ok(v),
        None => Ok(pick(env, "redis.password", &[], file)?.value),
    }
}

/// 128 random bits as hex, from the operating system's generator.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // No /dev/urandom: fall back on the std hasher's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(name: &str) -> Option<String> {
        (name == "apiToken").then(|| "secret".to_string())
    }

    #[test]
    fn embedded_defaults_name_every_key() {
        // Every key of the embedded file must be set: a missing one would only show up as a
        // start-up error on a machine whose file lacks it.
        let config = Config::from_toml_str("", &with_token);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn parse_bool_accepts_compose_spellings() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }

    fn cluster_env(
        extra: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            extra
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn cluster_mode_advertises_the_host_name_when_listening_everywhere() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "10.0.0.5"),
            ("HOSTNAME", "gateway-3"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.cluster.internal_advertise, "gateway-3:10089");
    }

    #[test]
    fn cluster_mode_takes_the_advertised_address() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "10.0.0.5"),
            ("IOTHUB_INTERNAL_ADVERTISE", "gateway-2:10089"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.cluster.internal_advertise, "gateway-2:10089");
    }

    #[test]
    fn cluster_mode_advertises_the_http_flv_listener_by_host_name() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "10.0.0.5"),
            ("HOSTNAME", "gateway-3"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.media.advertise_http, "http://gateway-3:8880");
    }

    #[test]
    fn a_specific_http_flv_listen_address_is_its_own_advertised_url() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "127.0.0.1"),
            ("IOTHUB_MEDIA_HTTP_FLV_LISTEN", "127.0.0.1:18880"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.media.advertise_http, "http://127.0.0.1:18880");
    }

    #[test]
    fn the_advertised_media_url_loses_its_trailing_slash() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "10.0.0.5"),
            (
                "IOTHUB_MEDIA_ADVERTISE_HTTP",
                "https://media-1.example:8890/",
            ),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.media.advertise_http, "https://media-1.example:8890");
    }

    #[test]
    fn an_advertised_media_url_with_a_path_is_refused() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "10.0.0.5"),
            (
                "IOTHUB_MEDIA_ADVERTISE_HTTP",
                "http://media-1.example:8880/live",
            ),
        ]);
        let err = Config::from_toml_str("", &env).unwrap_err().to_string();
        assert!(err.contains("IOTHUB_MEDIA_ADVERTISE_HTTP"), "{err}");
        assert!(err.contains("without a path"), "{err}");
    }

    #[test]
    fn a_single_node_advertises_no_media_url() {
        let config = Config::from_toml_str("", &with_token).unwrap();
        assert_eq!(config.media.advertise_http, "");
    }

    #[test]
    fn a_specific_internal_listen_address_is_its_own_advertised_address() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "127.0.0.1"),
            ("IOTHUB_INTERNAL_LISTEN", "127.0.0.1:7001"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(config.cluster.internal_advertise, "127.0.0.1:7001");
    }

    #[test]
    fn cluster_mode_refuses_a_generated_api_token() {
        let env = cluster_env(&[
            ("redisHost", "127.0.0.1"),
            ("IOTHUB_INTERNAL_LISTEN", "127.0.0.1:7001"),
        ]);
        let err = Config::from_toml_str("", &env).unwrap_err().to_string();
        assert!(err.contains("api.token"), "{err}");
    }

    #[test]
    fn an_advertised_address_without_a_port_is_refused() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("redisHost", "127.0.0.1"),
            ("IOTHUB_INTERNAL_ADVERTISE", "gateway-2"),
        ]);
        let err = Config::from_toml_str("", &env).unwrap_err().to_string();
        assert!(err.contains("IOTHUB_INTERNAL_ADVERTISE"), "{err}");
    }

    #[test]
    fn a_lease_under_three_seconds_is_refused() {
        let env = cluster_env(&[("apiToken", "secret"), ("IOTHUB_REDIS_LEASE", "2")]);
        let err = Config::from_toml_str("", &env).unwrap_err().to_string();
        assert!(err.contains("IOTHUB_REDIS_LEASE"), "{err}");
    }

    #[test]
    fn redis_db_is_read_from_the_jimi_name() {
        let env = cluster_env(&[("apiToken", "secret"), ("redisDb", "3")]);
        assert_eq!(Config::from_toml_str("", &env).unwrap().redis.db, 3);
    }

    #[test]
    fn the_proxy_protocol_is_off_on_both_ports_by_default() {
        let config = Config::from_toml_str("", &with_token).unwrap();
        assert_eq!(
            (
                config.gateway.gt06_proxy_protocol,
                config.gateway.jt808_proxy_protocol
            ),
            (false, false)
        );
    }

    #[test]
    fn the_proxy_protocol_is_turned_on_per_port() {
        let env = cluster_env(&[
            ("apiToken", "secret"),
            ("IOTHUB_JT808_PROXY_PROTOCOL", "on"),
        ]);
        let config = Config::from_toml_str("", &env).unwrap();
        assert_eq!(
            (
                config.gateway.gt06_proxy_protocol,
                config.gateway.jt808_proxy_protocol
            ),
            (false, true)
        );
    }

    #[test]
    fn keepalive_defaults_to_60_s_then_every_10_s_5_times() {
        let config = Config::from_toml_str("", &with_token).unwrap();
        assert_eq!(
            config.gateway.keepalive,
            KeepaliveConfig {
                time: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                retries: 5,
            }
        );
    }

    #[test]
    fn keepalive_retries_past_the_kernel_maximum_are_refused() {
        let config = Config::from_toml_str("[gateway]\nkeepalive_retries = 128\n", &with_token);
        assert!(
            matches!(config, Err(ConfigError::Invalid { key, .. }) if key == "gateway.keepalive_retries")
        );
    }
}
