//! Configuration: a TOML file (`config/iothub.toml`, every key documented there), overridden by
//! the environment variable names of the Jimi compose files, so an operator can swap
//! containers without rewriting their compose file. Invalid values stop start-up with a
//! message naming the key and the value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use iothub::codec::CrcPolicy;

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// GT06/JIMI listener, default 0.0.0.0:21100.
    pub gt06_listen: SocketAddr,
    /// `readTimeOut`: close a connection that sent nothing for this long.
    pub read_timeout: Duration,
    /// `writeTimeOut`: give up on a write that does not complete in this time.
    pub write_timeout: Duration,
    /// `connectTimeout`: close a connection that does not log in within this time.
    pub connect_timeout: Duration,
    pub crc_policy: CrcPolicy,
    /// Most concurrent device connections per listener.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Instruction API, default 0.0.0.0:10088.
    pub listen: SocketAddr,
    /// `apiToken`: the `token` every sendInstruct request must carry.
    pub token: String,
    /// Default `timeOut` when the request has none.
    pub default_timeout: Duration,
    /// Upper bound accepted for `timeOut`.
    pub max_timeout: Duration,
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
    /// `kafkaAuthSwitch`, `kafkaAuthUserName`, `kafkaAuthPassword`: SASL/PLAIN when set.
    pub auth: Option<(String, String)>,
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
    /// Events older than this that still could not be delivered are dropped and counted.
    pub max_age: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
}
