//! The configuration loader: defaults, file over defaults, environment over file, and
//! start-up errors that name the key an operator has to fix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use iothub::codec::CrcPolicy;
use iothub_actors::config::{Config, ConfigError, EMBEDDED_DEFAULTS};

/// An environment holding `apiToken` (required) plus `vars`.
fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("apiToken".into())
        .or_insert_with(|| "s3cret".into());
    move |k: &str| map.get(k).cloned()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, &env(vars))
}

fn error(text: &str, vars: &[(&str, &str)]) -> String {
    match load(text, vars) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_listen_addresses() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.gateway.gt06_listen, addr("0.0.0.0:21100"));
    assert_eq!(c.gateway.jt808_listen, addr("0.0.0.0:21121"));
    assert_eq!(c.api.listen, addr("0.0.0.0:10088"));
    assert_eq!(c.metrics.listen, addr("0.0.0.0:9100"));
}

#[test]
fn defaults_gateway_timeouts() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.gateway.read_timeout, Duration::from_secs(600));
    assert_eq!(c.gateway.write_timeout, Duration::from_secs(5));
    assert_eq!(c.gateway.connect_timeout, Duration::from_secs(30));
    assert_eq!(c.gateway.crc_policy, CrcPolicy::Warn);
}

/// Trackers heartbeat every 3 to 5 minutes by default: the idle timeout must let one heartbeat
/// be late or lost without cutting the device.
const FIVE_MINUTE_HEARTBEAT: Duration = Duration::from_secs(300);

#[test]
fn the_default_idle_timeout_keeps_a_five_minute_heartbeat_online() {
    let c = load("", &[]).unwrap();
    assert!(c.gateway.read_timeout >= 2 * FIVE_MINUTE_HEARTBEAT);
}

/// The timeouts of the Jimi JT/T 808 gateway compose in the operator's guide, verbatim.
const JIMI_COMPOSE_TIMEOUTS: [(&str, &str); 3] = [
    ("connectTimeout", "5"),
    ("readTimeOut", "5"),
    ("writeTimeOut", "5"),
];

#[test]
fn the_jimi_compose_timeouts_keep_a_five_minute_heartbeat_online() {
    let c = load("", &JIMI_COMPOSE_TIMEOUTS).unwrap();
    assert!(c.gateway.read_timeout >= 2 * FIVE_MINUTE_HEARTBEAT);
}

#[test]
fn the_jimi_compose_timeouts_leave_the_login_timeout_alone() {
    let c = load("", &JIMI_COMPOSE_TIMEOUTS).unwrap();
    assert_eq!(c.gateway.connect_timeout, Duration::from_secs(30));
}

#[test]
fn the_jimi_timeouts_time_the_pushes() {
    let c = load("", &JIMI_COMPOSE_TIMEOUTS).unwrap();
    assert_eq!(
        (c.push.request_timeout, c.push.connect_timeout),
        (Duration::from_secs(5), Duration::from_secs(5))
    );
}

#[test]
fn device_timeouts_have_iothub_names() {
    let c = load(
        "",
        &[
            ("IOTHUB_DEVICE_READ_TIMEOUT", "900"),
            ("IOTHUB_DEVICE_WRITE_TIMEOUT", "8"),
            ("IOTHUB_DEVICE_LOGIN_TIMEOUT", "40"),
        ],
    )
    .unwrap();
    assert_eq!(
        (
            c.gateway.read_timeout,
            c.gateway.write_timeout,
            c.gateway.connect_timeout
        ),
        (
            Duration::from_secs(900),
            Duration::from_secs(8),
            Duration::from_secs(40)
        )
    );
}

#[test]
fn redis_db_takes_the_spelling_of_the_guide() {
    let c = load("", &[("redisDB", "4")]).unwrap();
    assert_eq!(c.redis.db, 4);
}

#[test]
fn new_imei_rule_sets_both_ports() {
    let c = load("", &[("newImeiRule", "false")]).unwrap();
    assert_eq!(
        (c.gateway.gt06_new_imei_rule, c.gateway.jt808_new_imei_rule),
        (false, false)
    );
}

#[test]
fn new_imei_rule_is_set_per_port() {
    let c = load(
        "",
        &[
            ("newImeiRule", "true"),
            ("IOTHUB_JT808_NEW_IMEI_RULE", "false"),
        ],
    )
    .unwrap();
    assert_eq!(
        (c.gateway.gt06_new_imei_rule, c.gateway.jt808_new_imei_rule),
        (true, false)
    );
}

#[test]
fn jt808_registration_policy_defaults_to_safety() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        (
            c.gateway.jt808_accept_unknown_auth,
            c.gateway.jt808_allow_reregistration,
            c.gateway.jt808_registrations_per_connection,
            c.gateway.jt808_unused_code_expiry,
        ),
        (false, false, 3, Duration::from_secs(7 * 86_400))
    );
}

#[test]
fn defaults_api() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.api.token, "s3cret");
    assert_eq!(c.api.default_timeout, Duration::from_secs(30));
    assert_eq!(c.api.max_timeout, Duration::from_secs(120));
}

#[test]
fn defaults_storage_kafka_redis() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.storage.data_dir, Path::new("data"));
    assert_eq!(c.storage.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.storage.commit_interval, Duration::from_millis(25));
    assert!(!c.kafka.enable);
    assert_eq!(c.kafka.hosts, "127.0.0.1:9092");
    assert_eq!(c.kafka.topic_prefix, "iothub");
    assert_eq!(c.kafka.consumer_group, "iothub-push");
    assert_eq!(c.kafka.auth, None);
    assert_eq!(c.redis.host, None);
    assert_eq!(c.redis.port, 6379);
    assert_eq!(c.redis.password, None);
}

#[test]
fn defaults_push() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.push.url, "");
    assert_eq!(c.push.batch_size, 100);
    assert_eq!(c.push.batch_delay, Duration::from_millis(200));
    assert_eq!(c.push.min_backoff, Duration::from_secs(1));
    assert_eq!(c.push.max_backoff, Duration::from_secs(60));
    assert_eq!(c.push.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.push.request_timeout, Duration::from_secs(10));
}

#[test]
fn commit_interval_comes_from_its_variable() {
    let c = load("", &[("IOTHUB_COMMIT_INTERVAL_MS", "0")]).unwrap();
    assert_eq!(c.storage.commit_interval, Duration::ZERO);
}

#[test]
fn a_commit_interval_over_a_second_is_refused_by_name() {
    let err = error("", &[("IOTHUB_COMMIT_INTERVAL_MS", "5000")]);
    assert!(err.contains("IOTHUB_COMMIT_INTERVAL_MS"), "{err}");
}

#[test]
fn worker_threads_default_to_one_per_core() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.runtime.worker_threads, None);
}

#[test]
fn worker_threads_come_from_their_variable() {
    let c = load("", &[("IOTHUB_WORKER_THREADS", "1")]).unwrap();
    assert_eq!(c.runtime.worker_threads, Some(1));
}

#[test]
fn worker_threads_come_from_the_file() {
    let c = load("[runtime]\nworker_threads = 3\n", &[]).unwrap();
    assert_eq!(c.runtime.worker_threads, Some(3));
}

#[test]
fn too_many_worker_threads_are_refused_by_name() {
    let err = error("", &[("IOTHUB_WORKER_THREADS", "5000")]);
    assert!(err.contains("IOTHUB_WORKER_THREADS"), "{err}");
}

#[test]
fn embedded_defaults_are_the_repository_file() {
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/iothub.toml"),
    )
    .unwrap();
    assert_eq!(file, EMBEDDED_DEFAULTS);
}

#[test]
fn missing_api_token_is_replaced_by_a_random_one() {
    let a = Config::from_toml_str("", &|_: &str| None).unwrap();
    let b = Config::from_toml_str("", &|_: &str| None).unwrap();
    assert!(a.api.token_generated);
    assert_eq!(a.api.token.len(), 32);
    assert_ne!(a.api.token, b.api.token, "generated tokens must not repeat");
}

#[test]
fn configured_api_token_is_not_marked_generated() {
    let c =
        Config::from_toml_str("", &|k: &str| (k == "apiToken").then(|| "t".to_string())).unwrap();
    assert!(!c.api.token_generated);
    assert_eq!(c.api.token, "t");
}

#[test]
fn file_overrides_defaults_key_by_key() {
    let c = load("[gateway]\nread_timeout_secs = 240\n", &[]).unwrap();
    assert_eq!(c.gateway.read_timeout, Duration::from_secs(240));
    assert_eq!(c.gateway.write_timeout, Duration::from_secs(5));
}

#[test]
fn jimi_environment_names_override_the_file() {
    let c = load(
        "gate_id = \"from-file\"\n[gateway]\nread_timeout_secs = 240\n",
        &[
            ("gateId", "tracker-gate-v1-93"),
            ("readTimeOut", "60"),
            ("writeTimeOut", "7"),
            ("connectTimeout", "9"),
            ("kafkaEnable", "true"),
            ("kafkaHost", "kafka:9092"),
            ("kafkaConsumerGroup", "v541h-group"),
            ("topicPrefix", "jimi"),
            ("pushURL", "http://10.0.0.5:8080/api"),
            ("pushToken", "pt"),
            ("offlineCmdPushURL", "http://10.0.0.5/pushinstructresponse"),
            ("offlineCmdPushToken", "ot"),
            ("redisHost", "redis"),
            ("redisPort", "6380"),
            ("redisPasswd", "jimi@123"),
            ("newImeiRule", "false"),
            ("apiToken", "api-secret"),
        ],
    )
    .unwrap();
    assert_eq!(c.gate_id, "tracker-gate-v1-93");
    assert_eq!(c.gateway.read_timeout, Duration::from_secs(240));
    assert_eq!(c.push.request_timeout, Duration::from_secs(60));
    assert_eq!(c.gateway.write_timeout, Duration::from_secs(7));
    assert_eq!(c.push.connect_timeout, Duration::from_secs(9));
    assert!(c.kafka.enable);
    assert_eq!(c.kafka.hosts, "kafka:9092");
    assert_eq!(c.kafka.consumer_group, "v541h-group");
    assert_eq!(c.kafka.topic_prefix, "jimi");
    assert_eq!(c.push.url, "http://10.0.0.5:8080/api");
    assert_eq!(c.push.token, "pt");
    assert_eq!(
        c.push.offline_cmd_url,
        "http://10.0.0.5/pushinstructresponse"
    );
    assert_eq!(c.push.offline_cmd_token, "ot");
    assert_eq!(c.redis.host.as_deref(), Some("redis"));
    assert_eq!(c.redis.port, 6380);
    assert_eq!(c.redis.password.as_deref(), Some("jimi@123"));
    assert!(!c.gateway.jt808_new_imei_rule);
}

#[test]
fn iothub_environment_names_override_the_file() {
    let c = load(
        "",
        &[
            ("IOTHUB_GT06_LISTEN", "127.0.0.1:0"),
            ("IOTHUB_JT808_LISTEN", "127.0.0.1:21122"),
            ("IOTHUB_JT808_AUTH_GRACE", "3"),
            ("IOTHUB_JT808_ACCEPT_UNKNOWN_AUTH", "false"),
            ("IOTHUB_API_LISTEN", "127.0.0.1:18088"),
            ("IOTHUB_METRICS_LISTEN", "[::1]:9200"),
            ("IOTHUB_DATA_DIR", "/var/lib/iothub"),
        ],
    )
    .unwrap();
    assert_eq!(c.gateway.gt06_listen, addr("127.0.0.1:0"));
    assert_eq!(c.gateway.jt808_listen, addr("127.0.0.1:21122"));
    assert_eq!(c.gateway.jt808_auth_grace, Duration::from_secs(3));
    assert!(!c.gateway.jt808_accept_unknown_auth);
    assert_eq!(c.api.listen, addr("127.0.0.1:18088"));
    assert_eq!(c.metrics.listen, addr("[::1]:9200"));
    assert_eq!(c.storage.data_dir, Path::new("/var/lib/iothub"));
}

#[test]
fn kafka_auth_from_environment() {
    let c = load(
        "",
        &[
            ("kafkaAuthSwitch", "1"),
            ("kafkaAuthUserName", "admin"),
            ("kafkaAuthPassword", "123456"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.auth, Some(("admin".into(), "123456".into())));
}

#[test]
fn kafka_auth_without_user_names_the_key() {
    let e = error("", &[("kafkaAuthSwitch", "true")]);
    assert!(e.starts_with("kafkaAuthUserName: missing"), "{e}");
}

#[test]
fn bad_seconds_value_names_key_and_value() {
    assert_eq!(
        error("", &[("readTimeOut", "abc")]),
        r#"readTimeOut: "abc" is not a number of seconds"#
    );
}

#[test]
fn zero_timeout_is_refused() {
    assert_eq!(
        error("", &[("writeTimeOut", "0")]),
        r#"writeTimeOut: "0" must be at least 1 (seconds)"#
    );
}

#[test]
fn bad_boolean_names_key() {
    let e = error("", &[("kafkaEnable", "sometimes")]);
    assert!(
        e.starts_with(r#"kafkaEnable: "sometimes" is not a boolean"#),
        "{e}"
    );
}

#[test]
fn bad_listen_address_names_key() {
    let e = error("", &[("IOTHUB_API_LISTEN", "10088")]);
    assert!(
        e.starts_with(r#"IOTHUB_API_LISTEN: "10088" is not an ip:port"#),
        "{e}"
    );
}

#[test]
fn bad_file_value_names_toml_key() {
    let e = error("[gateway]\ncrc_policy = \"maybe\"\n", &[]);
    assert!(
        e.starts_with(r#"gateway.crc_policy: "maybe" must be"#),
        "{e}"
    );
}

#[test]
fn wrong_type_in_file_names_key() {
    let e = error("[gateway]\nread_timeout_secs = \"abc\"\n", &[]);
    assert!(e.contains("read_timeout_secs"), "{e}");
}

#[test]
fn unknown_key_is_rejected() {
    let e = error("[gateway]\nread_timeout = 60\n", &[]);
    assert!(e.contains("unknown field `read_timeout`"), "{e}");
}

#[test]
fn unknown_section_is_rejected() {
    let e = error("[mqtt]\nport = 1883\n", &[]);
    assert!(e.contains("unknown field `mqtt`"), "{e}");
}

#[test]
fn push_url_must_be_http() {
    let e = error("", &[("pushURL", "ftp://host/x")]);
    assert!(
        e.starts_with(r#"pushURL: "ftp://host/x" is not an http"#),
        "{e}"
    );
}

#[test]
fn default_timeout_above_max_is_refused() {
    let e = error("[api]\ndefault_timeout_secs = 200\n", &[]);
    assert!(
        e.starts_with("api.default_timeout_secs: \"200\" must not exceed"),
        "{e}"
    );
}

#[test]
fn conflicting_redis_password_spellings_are_refused() {
    let e = error("", &[("redisPassword", "a"), ("redisPasswd", "b")]);
    assert!(e.starts_with("redisPasswd:"), "{e}");
    assert!(
        e.contains("(hidden)"),
        "passwords stay out of messages: {e}"
    );
}

#[test]
fn agreeing_redis_password_spellings_are_fine() {
    let c = load("", &[("redisPassword", "a"), ("redisPass", "a")]).unwrap();
    assert_eq!(c.redis.password.as_deref(), Some("a"));
}

#[test]
fn missing_file_names_the_path() {
    let e = Config::load(Some(Path::new("/nonexistent/iothub.toml"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/iothub.toml"), "{e}");
}

#[test]
fn defaults_http() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.http.max_connections, 1024);
}

#[test]
fn http_bounds_come_from_the_file_and_the_environment() {
    let c = load(
        "[http]\nheader_read_timeout_secs = 3\nmax_connections = 7\n",
        &[
            ("IOTHUB_HTTP_BODY_READ_TIMEOUT", "4"),
            ("IOTHUB_HTTP_IDLE_TIMEOUT", "5"),
        ],
    )
    .unwrap();
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(3));
    assert_eq!(c.http.body_read_timeout, Duration::from_secs(4));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.http.max_connections, 7);
}

#[test]
fn http_header_timeout_of_zero_is_refused_by_name() {
    let err = error("", &[("IOTHUB_HTTP_HEADER_READ_TIMEOUT", "0")]);
    assert!(err.contains("IOTHUB_HTTP_HEADER_READ_TIMEOUT"), "{err}");
}

#[test]
fn http_connection_cap_of_zero_is_refused_by_name() {
    let err = error("[http]\nmax_connections = 0\n", &[]);
    assert!(err.contains("http.max_connections"), "{err}");
}

#[test]
fn kafka_durability_defaults_to_the_brokers_own() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        (c.kafka.replication_factor, c.kafka.min_insync_replicas),
        (None, None)
    );
}

#[test]
fn kafka_durability_of_the_production_recommendation() {
    let c = load(
        "[kafka]\nreplication_factor = 3\nmin_insync_replicas = 2\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        (c.kafka.replication_factor, c.kafka.min_insync_replicas),
        (Some(3), Some(2))
    );
}

#[test]
fn kafka_replication_factor_from_the_environment() {
    let c = load("", &[("IOTHUB_KAFKA_REPLICATION_FACTOR", "3")]).unwrap();
    assert_eq!(c.kafka.replication_factor, Some(3));
}

#[test]
fn kafka_replication_factor_of_zero_is_refused() {
    let e = error("[kafka]\nreplication_factor = 0\n", &[]);
    assert!(e.contains("kafka.replication_factor"), "{e}");
}

#[test]
fn kafka_min_insync_above_the_replication_factor_is_refused() {
    let e = error(
        "[kafka]\nreplication_factor = 2\nmin_insync_replicas = 3\n",
        &[],
    );
    assert!(e.contains("kafka.min_insync_replicas"), "{e}");
}

#[test]
fn push_dead_letter_after_defaults_to_five() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.push.dead_letter_after, 5);
}

#[test]
fn push_dead_letter_after_of_zero_is_refused() {
    let e = error("[push]\ndead_letter_after = 0\n", &[]);
    assert!(e.contains("push.dead_letter_after"), "{e}");
}

#[test]
fn redis_sentinels_from_the_environment_turn_cluster_mode_on() {
    let c = load(
        "",
        &[("IOTHUB_REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379")],
    )
    .unwrap();
    assert_eq!(c.redis.sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
    assert!(c.redis.cluster_mode());
}

#[test]
fn redis_sentinel_master_defaults_to_mymaster() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.redis.sentinel_master, "mymaster");
}

#[test]
fn redis_sentinel_without_a_port_is_refused() {
    let e = error("[redis]\nsentinels = [\"10.0.0.1\"]\n", &[]);
    assert!(e.contains("redis.sentinels"), "{e}");
}

#[test]
fn push_dead_letter_max_from_the_environment() {
    let c = load("", &[("IOTHUB_PUSH_DEAD_LETTER_MAX", "500")]).unwrap();
    assert_eq!(c.push.dead_letter_max, 500);
}

#[test]
fn push_max_age_of_zero_keeps_events_until_delivered() {
    let c = load("[push]\nmax_age_secs = 0\n", &[]).unwrap();
    assert_eq!(c.push.max_age, Duration::ZERO);
}
