//! Cluster mode end to end: several real iothubd nodes sharing one real Redis (routes and
//! node leases), one real Kafka-protocol broker (tansu) and one customer, with devices
//! dialling through a real nginx stream balancer. Each test breaks one piece the way
//! production breaks it (a second node claiming a taken name, a device moving, a node
//! killed, Redis lost, Kafka lost) and checks what the devices, the customer and Redis see.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use iothub::imei::Imei;
use iothub_loadgen::jt808_terminal::{Jt808Version, SimTerminal, SimTerminalConfig, TerminalError};
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig, TrackerError};
use iothub_system_tests::cluster::{
    acked_by_imei, missing, run_node_expecting_exit, Cluster, Fleet, Nginx, RedisServer, Route,
    TrackerLog,
};
use iothub_system_tests::free_port;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Node and route lease of every test: short, so that expiry is observable quickly.
const LEASE: Duration = Duration::from_secs(6);

/// One cluster at a time: each test runs several hubs, a broker, Redis and nginx, and checks
/// timings (acknowledgements within 5 s, leases of 6 s) that two clusters sharing two cores
/// would blur. Taken by every test, whatever `--test-threads` says.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An IMEI no device of any test uses.
const UNKNOWN_IMEI: &str = "864717003299999";

/// A tracker that only does what the test tells it to (no timers of its own).
fn quiet_tracker(imei: &str) -> SimTrackerConfig {
    let mut config = SimTrackerConfig::new(Imei::parse(imei).expect("test IMEI"));
    config.heartbeat_every = Duration::ZERO;
    config.gps_every = Duration::ZERO;
    config
}

fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

/// `data._code` of a sendInstruct answer.
fn code(answer: &Value) -> &str {
    answer["data"]["_code"].as_str().unwrap_or("")
}

/// Asserts a delivered instruction: envelope code 0, `_code` 100, the device's firmware
/// reply, and the owning node named in `_gateId`.
fn assert_delivered(answer: &Value, imei: &str, command: &str, flag: u32, owner: &str) {
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(
        code(answer),
        "100",
        "instruction to {imei} not delivered: {answer}"
    );
    assert_eq!(
        answer["data"]["_content"],
        format!("OK! {command}"),
        "{answer}"
    );
    assert_eq!(answer["data"]["_imei"], imei, "{answer}");
    assert_eq!(answer["data"]["_serverFlagId"], flag, "{answer}");
    assert_eq!(
        answer["data"]["_gateId"], owner,
        "_gateId is not the owning node: {answer}"
    );
}

/// Waits until every IMEI has a route whose gate satisfies `accept`; returns the routes.
async fn wait_routes(
    cluster: &Cluster,
    imeis: &[String],
    within: Duration,
    what: &str,
    accept: impl Fn(&Route) -> bool,
) -> HashMap<String, Route> {
    let deadline = Instant::now() + within;
    let mut routes = HashMap::new();
    for imei in imeis {
        let left = deadline.saturating_duration_since(Instant::now());
        let route = cluster.wait_route(imei, left, what, &accept).await;
        routes.insert(imei.clone(), route);
    }
    routes
}

fn failures(logs: &[TrackerLog]) -> Vec<(String, Vec<String>)> {
    logs.iter()
        .filter(|l| !l.failures.is_empty())
        .map(|l| (l.imei.clone(), l.failures.clone()))
        .collect()
}

fn acked_counts(logs: &[TrackerLog]) -> HashMap<String, usize> {
    logs.iter()
        .map(|l| (l.imei.clone(), l.acked.len()))
        .collect()
}

/// Every acknowledged alarm is in Kafka, read by a consumer of our own from the beginning.
async fn assert_all_acked_in_kafka(cluster: &Cluster, logs: &[TrackerLog]) {
    let acked = acked_by_imei(logs);
    let total: usize = acked.values().map(BTreeSet::len).sum();
    let seen = cluster
        .kafka_alarm_times(&acked, Duration::from_secs(60))
        .await;
    let lost = missing(&seen, &acked);
    assert!(
        lost.is_empty(),
        "{} of {total} acknowledged alarms missing from Kafka topic {}.alarm: {lost:?}",
        lost.values().map(Vec::len).sum::<usize>(),
        cluster.settings.topic_prefix
    );
}

/// The harness itself: Redis comes back empty on the same port, and nginx passes bytes to the
/// live backend while the other refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_redis_restarts_empty_and_nginx_skips_a_dead_backend() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut redis = tokio::task::block_in_place(RedisServer::start);
    let mut conn = redis.connection().await.expect("connect to the test Redis");
    let _: () = redis::cmd("SET")
        .arg("harness:key")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("SET");
    redis.stop();
    assert!(
        redis.connection().await.is_err(),
        "Redis still answers after stop"
    );
    tokio::task::block_in_place(|| redis.restart());
    let mut conn = redis.connection().await.expect("connect after restart");
    let kept: Option<String> = redis::cmd("GET")
        .arg("harness:key")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(kept, None, "a restarted test Redis must come back empty");

    let live = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let live_addr = live.local_addr().expect("backend address");
    let dead_addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let nginx =
        tokio::task::block_in_place(|| Nginx::start(&[("svc", vec![dead_addr, live_addr])]));
    for i in 0..4u8 {
        let mut client = tokio::net::TcpStream::connect(nginx.addr("svc"))
            .await
            .expect("connect to nginx");
        client.write_all(&[i]).await.expect("write through nginx");
        let (mut backend, _) = tokio::time::timeout(Duration::from_secs(5), live.accept())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connection {i} never reached the live backend:\n{}",
                    nginx.logs()
                )
            })
            .expect("accept");
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), backend.read_exact(&mut byte))
            .await
            .expect("bytes through nginx in time")
            .expect("read");
        assert_eq!(byte[0], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_id_held_by_a_live_node_is_refused() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("collide", 1, LEASE).await;
    let holder = cluster.nodes[0].gate_id.clone();
    let node_key = cluster.node_key(&holder);
    let (before, ttl) = cluster
        .hash_with_ttl(&node_key)
        .await
        .expect("read Redis")
        .unwrap_or_else(|| panic!("live node {holder} has no {node_key} in Redis"));
    assert_eq!(
        before.get("addr"),
        Some(&cluster.nodes[0].internal.to_string()),
        "{node_key}: {before:?}"
    );
    let instance = before.get("instance").cloned().unwrap_or_default();
    assert!(
        !instance.is_empty(),
        "{node_key} has no instance: {before:?}"
    );
    assert!(
        ttl > 0 && ttl <= lease_ms(),
        "{node_key} must carry the node lease ({LEASE:?}) as TTL; PTTL = {ttl}"
    );

    // Same gateId, its own internal port (so that only the name can be the reason to refuse).
    let internal = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let env = cluster.settings.node_env(&holder, internal);
    let refusal =
        tokio::task::block_in_place(|| run_node_expecting_exit(&env, Duration::from_secs(30)))
            .unwrap_or_else(|output| {
                panic!("a second node with gateId {holder} kept running for 30 s:\n{output}")
            });
    assert!(
        !refusal.status.success(),
        "a second node with gateId {holder} exited with success:\n{}",
        refusal.output
    );
    assert!(
        refusal
            .output
            .lines()
            .any(|l| l.contains("gateId") && l.contains(holder.as_str())),
        "no line of the refusal names gateId and {holder}:\n{}",
        refusal.output
    );

    // The holder keeps its identity and keeps serving.
    let (after, _) = cluster
        .hash_with_ttl(&node_key)
        .await
        .expect("read Redis")
        .unwrap_or_else(|| panic!("{node_key} vanished after a refused duplicate"));
    assert_eq!(after, before, "the refused node changed {node_key}");
    let answer = cluster
        .instruct(Some(0), UNKNOWN_IMEI, "STATUS#", 1, 5)
        .await;
    assert_eq!(code(&answer), "301", "{answer}");
    assert_eq!(answer["data"]["_gateId"], holder.as_str(), "{answer}");

    // Dead and its lease run out, the name is free again.
    cluster.kill_node(0);
    let deadline = Instant::now() + LEASE + Duration::from_secs(3);
    loop {
        let seen = cluster.hash_with_ttl(&node_key).await.expect("read Redis");
        if seen.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{node_key} of a killed node still present {:?} after the kill: {seen:?}",
            LEASE + Duration::from_secs(3)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let successor = cluster.add_node(&holder);
    let (fields, _) = cluster
        .hash_with_ttl(&node_key)
        .await
        .expect("read Redis")
        .unwrap_or_else(|| panic!("the successor {holder} did not register {node_key}"));
    assert_eq!(
        fields.get("addr"),
        Some(&cluster.nodes[successor].internal.to_string()),
        "{fields:?}"
    );
    assert_ne!(
        fields.get("instance"),
        Some(&instance),
        "a new process must register a new instance: {fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instruction_sent_to_any_node_reaches_the_device_on_its_owner() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("route", 3, LEASE).await;
    for node in &cluster.nodes {
        let key = cluster.node_key(&node.gate_id);
        let (fields, ttl) = cluster
            .hash_with_ttl(&key)
            .await
            .expect("read Redis")
            .unwrap_or_else(|| panic!("node {} not registered as {key}", node.gate_id));
        assert_eq!(
            fields.get("addr"),
            Some(&node.internal.to_string()),
            "{key}: {fields:?}"
        );
        assert!(ttl > 0 && ttl <= lease_ms(), "{key}: PTTL {ttl}");
    }

    let imei = "864717003290001";
    let mut tracker = SimTracker::connect_and_login(cluster.gt06_balanced(), quiet_tracker(imei))
        .await
        .expect("login through nginx");
    let route = cluster
        .wait_route(imei, Duration::from_secs(10), "a gate", |r| {
            !r.gate.is_empty()
        })
        .await;
    let owner = cluster
        .node_of(&route.gate)
        .unwrap_or_else(|| panic!("route gate names no node of the cluster: {route:?}"));
    assert!(
        route.ttl_ms > 0 && route.ttl_ms <= lease_ms(),
        "a route carries the lease as TTL: {route:?}"
    );

    // Every node, owner or not, and the balanced API reach the device.
    let senders = [
        Some((owner + 1) % 3),
        Some((owner + 2) % 3),
        Some(owner),
        None,
    ];
    for (flag, sender) in (7u32..).zip(senders) {
        let command = format!("STATUS{flag}#");
        let (answer, received) = tokio::join!(
            cluster.instruct(sender, imei, &command, flag, 10),
            tracker.next_command(Duration::from_secs(15)),
        );
        let received = received
            .expect("the device's connection")
            .unwrap_or_else(|| {
                panic!("instruction via node {sender:?} never reached the device: {answer}")
            });
        assert_eq!(
            (received.server_flag, received.command.as_str()),
            (flag, command.as_str())
        );
        assert_delivered(&answer, imei, &command, flag, &route.gate);
    }

    // A device nobody owns has no route, whichever node is asked.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let answer = cluster
            .instruct(Some(i), UNKNOWN_IMEI, "STATUS#", 1, 5)
            .await;
        assert_eq!(
            code(&answer),
            "301",
            "unknown IMEI via {}: {answer}",
            node.gate_id
        );
        assert_eq!(answer["data"]["_gateId"], node.gate_id.as_str(), "{answer}");
    }
    tracker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_to_another_node_moves_its_route_there() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("takeover", 2, LEASE).await;
    let (a, b) = (
        cluster.nodes[0].gate_id.clone(),
        cluster.nodes[1].gate_id.clone(),
    );
    let imei = "864717003290002";

    let mut on_a = SimTracker::connect_and_login(cluster.nodes[0].hub.gt06, quiet_tracker(imei))
        .await
        .expect("login at A");
    let first = cluster
        .wait_route(imei, Duration::from_secs(10), "gate = A", |r| r.gate == a)
        .await;
    let mut on_b = SimTracker::connect_and_login(cluster.nodes[1].hub.gt06, quiet_tracker(imei))
        .await
        .expect("login at B");
    let second = cluster
        .wait_route(imei, Duration::from_secs(10), "gate = B", |r| r.gate == b)
        .await;

    // A closes the connection it no longer owns.
    let old = on_a.next_command(Duration::from_secs(10)).await;
    assert!(
        matches!(old, Err(TrackerError::Closed | TrackerError::Io(_))),
        "A's connection still open 10 s after the device moved to B: {old:?} (routes {first:?} then {second:?})"
    );

    // An instruction given to A goes to B, where the device now is.
    let (answer, received) = tokio::join!(
        cluster.instruct(Some(0), imei, "WHERE#", 21, 10),
        on_b.next_command(Duration::from_secs(15)),
    );
    let received = received
        .expect("B's connection")
        .unwrap_or_else(|| panic!("instruction via A never reached the device on B: {answer}"));
    assert_eq!(
        (received.server_flag, received.command.as_str()),
        (21, "WHERE#")
    );
    assert_delivered(&answer, imei, "WHERE#", 21, &b);
    on_b.send_heartbeat()
        .await
        .expect("B keeps serving the device");

    // A renewal period later A has not claimed the route back.
    tokio::time::sleep(LEASE / 2).await;
    let route = cluster.route(imei).await.expect("read Redis");
    assert!(
        route.as_ref().is_some_and(|r| r.gate == b && r.ttl_ms > 0),
        "route after half a lease: {route:?} (expected gate {b})"
    );
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instruction_queued_at_one_node_is_delivered_at_a_login_on_another() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("offline", 2, LEASE).await;
    let imei = "864717003290003";

    let answer = cluster
        .instruct_with(Some(0), imei, "RESET#", 31, 5, true)
        .await;
    assert_eq!(code(&answer), "301", "{answer}");
    assert_eq!(
        answer["msg"],
        "The device is offline or timed out, and the command is converted to an offline command",
        "{answer}"
    );

    let mut on_b = SimTracker::connect_and_login(cluster.nodes[1].hub.gt06, quiet_tracker(imei))
        .await
        .expect("login at B");
    let received = on_b
        .next_command(Duration::from_secs(15))
        .await
        .expect("B's connection")
        .unwrap_or_else(|| panic!("the instruction queued at A never reached the device at B"));
    assert_eq!(
        (received.server_flag, received.command.as_str()),
        (31, "RESET#")
    );
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jt808_code_issued_at_one_node_authenticates_at_another() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("authcode", 2, LEASE).await;
    // Under newImeiRule a JT/T phone carries the IMEI's first 14 digits in hex.
    let imei = Imei::parse("869247060001762").unwrap();
    let config = || SimTerminalConfig::new(imei, Jt808Version::V2013);

    let mut at_a = SimTerminal::connect(cluster.nodes[0].hub.jt808, config())
        .await
        .expect("connect to A");
    let code = at_a.register().await.expect("registered at A");
    at_a.close().await;

    // B knows the code A issued: a different one is refused, not taken as a new terminal's.
    let mut wrong = config();
    wrong.auth_code = Some(format!("{code}-not"));
    match SimTerminal::connect_and_login(cluster.nodes[1].hub.jt808, wrong).await {
        Err(TerminalError::Rejected { msg_id, result, .. }) => {
            assert_eq!((msg_id, result), (0x0102, 1));
        }
        Err(e) => panic!("expected a refusal with result 1 at B, got {e}"),
        Ok(t) => {
            t.close().await;
            panic!("B accepted a code that differs from the one A issued")
        }
    }

    let mut right = config();
    right.auth_code = Some(code);
    let at_b = SimTerminal::connect_and_login(cluster.nodes[1].hub.jt808, right)
        .await
        .expect("the code A issued authenticates at B");
    assert!(at_b.is_authenticated());
    at_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_devices_move_to_the_survivors_and_nothing_acknowledged_is_lost() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("failover", 3, LEASE).await;
    let imeis: Vec<String> = (0..30).map(|i| format!("8647170033{i:05}")).collect();
    let devices: Vec<(String, std::net::SocketAddr)> = imeis
        .iter()
        .map(|imei| (imei.clone(), cluster.gt06_balanced()))
        .collect();
    let fleet = Fleet::start(&devices, Duration::from_millis(500));
    fleet.wait_all_logged_in(Duration::from_secs(20)).await;
    let routes = wait_routes(&cluster, &imeis, Duration::from_secs(10), "a gate", |r| {
        !r.gate.is_empty()
    })
    .await;

    // The victim: the node holding the most devices.
    let mut per_gate: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (imei, route) in &routes {
        per_gate
            .entry(route.gate.clone())
            .or_default()
            .push(imei.clone());
    }
    let (victim_gate, on_victim) = per_gate
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(g, v)| (g.clone(), v.clone()))
        .expect("at least one routed device");
    let victim = cluster
        .node_of(&victim_gate)
        .unwrap_or_else(|| panic!("route gate {victim_gate} names no node"));
    let before_kill = fleet.snapshot();
    let logins_before: HashMap<String, u32> = before_kill
        .iter()
        .map(|l| (l.imei.clone(), l.logins))
        .collect();
    let acked_before = acked_counts(&before_kill);
    assert_all_acked_pushed(&cluster, &before_kill, Duration::from_secs(30)).await;

    cluster.kill_node(victim);
    let killed_at = Instant::now();
    let live: BTreeSet<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.is_alive())
        .map(|n| n.gate_id.clone())
        .collect();

    // Every route points at a live node again, through the devices' own reconnections.
    let converged = wait_routes(
        &cluster,
        &imeis,
        Duration::from_secs(20),
        "a live gate",
        |r| live.contains(&r.gate),
    )
    .await;
    let convergence = killed_at.elapsed();

    // The dead node's identity runs out with its lease.
    let node_key = cluster.node_key(&victim_gate);
    let deadline = killed_at + LEASE + Duration::from_secs(3);
    while cluster
        .hash_with_ttl(&node_key)
        .await
        .expect("read Redis")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "{node_key} of the killed node still in Redis {:?} after the kill",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Instructions reach every device again, given to the live nodes in turn.
    let live_nodes: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| cluster.nodes[i].is_alive())
        .collect();
    for (k, imei) in imeis.iter().enumerate() {
        let sender = live_nodes[k % live_nodes.len()];
        let flag = 100 + u32::try_from(k).unwrap_or(0);
        let answer = cluster
            .instruct(Some(sender), imei, "STATUS#", flag, 10)
            .await;
        let owner = cluster
            .route(imei)
            .await
            .expect("read Redis")
            .map(|r| r.gate)
            .unwrap_or_default();
        assert_delivered(&answer, imei, "STATUS#", flag, &owner);
    }

    let logs = fleet.stop().await;
    for log in &logs {
        let moved = on_victim.contains(&log.imei);
        if moved {
            assert!(
                log.logins > logins_before[&log.imei],
                "{} was on the killed node but never logged in again: {log:?}",
                log.imei
            );
            assert!(
                log.acked.len() > acked_before[&log.imei],
                "{} was not acknowledged after moving: {log:?}",
                log.imei
            );
        } else {
            assert_eq!(
                (log.logins, log.failures.len()),
                (1, 0),
                "{} was on a surviving node and lost its connection: {log:?}",
                log.imei
            );
        }
        assert_eq!(
            log.commands, 1,
            "instructions received by {}: {log:?}",
            log.imei
        );
    }
    for (imei, route) in &converged {
        assert_ne!(route.gate, victim_gate, "{imei}");
    }
    eprintln!(
        "failover: {} of 30 devices on {victim_gate}; routes converged {convergence:?} after the kill",
        on_victim.len()
    );
    assert_all_acked_in_kafka(&cluster, &logs).await;
    // The killed node's push consumers held some partitions: once its identity expires the
    // survivors rejoin the group, get those partitions and push what it had not.
    assert_all_acked_pushed(&cluster, &logs, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_keeps_devices_served_and_an_empty_redis_is_refilled() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("redis-outage", 2, LEASE).await;
    let (g0, g1) = (
        cluster.nodes[0].gate_id.clone(),
        cluster.nodes[1].gate_id.clone(),
    );
    let (x, y) = ("864717003290010".to_string(), "864717003290011".to_string());
    let fleet = Fleet::start(
        &[
            (x.clone(), cluster.nodes[0].hub.gt06),
            (y.clone(), cluster.nodes[1].hub.gt06),
        ],
        Duration::from_millis(300),
    );
    fleet.wait_all_logged_in(Duration::from_secs(10)).await;
    cluster
        .wait_route(&x, Duration::from_secs(10), "gate = node 0", |r| {
            r.gate == g0
        })
        .await;
    cluster
        .wait_route(&y, Duration::from_secs(10), "gate = node 1", |r| {
            r.gate == g1
        })
        .await;
    let answer = cluster.instruct(Some(0), &y, "STATUS#", 1, 10).await;
    assert_delivered(&answer, &y, "STATUS#", 1, &g1);
    cluster
        .wait_metric_on_live_nodes("iothub_redis_up", 1.0, Duration::from_secs(5))
        .await;

    cluster.redis.stop();
    cluster
        .wait_metric_on_live_nodes("iothub_redis_up", 0.0, LEASE + Duration::from_secs(4))
        .await;
    let at_stop = acked_counts(&fleet.snapshot());

    // Cross-node routing needs Redis: an explicit answer, well before the instruction's timeout.
    let asked = Instant::now();
    let answer = cluster.instruct(Some(0), &y, "STATUS#", 2, 10).await;
    let took = asked.elapsed();
    assert_eq!(
        code(&answer),
        "301",
        "cross-node instruction with Redis down: {answer}"
    );
    let msg = answer["data"]["_msg"].as_str().unwrap_or("");
    assert!(
        msg.to_lowercase().contains("redis"),
        "data._msg must say Redis is the reason (it is {msg:?}): {answer}"
    );
    assert!(
        took < Duration::from_secs(10),
        "answer took {took:?}, as long as the instruction's own timeout"
    );

    // Devices already connected keep being acknowledged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = fleet.snapshot();
    for log in &during {
        assert!(
            log.acked.len() >= at_stop[&log.imei] + 3 && log.failures.is_empty(),
            "{} not acknowledged while Redis is down: {} acked at the stop, now {log:?}",
            log.imei,
            at_stop[&log.imei]
        );
    }

    // An empty Redis comes back: the nodes claim their devices again within about a lease.
    tokio::task::block_in_place(|| cluster.redis.restart());
    let restarted = Instant::now();
    let within = LEASE * 2;
    cluster
        .wait_route(&x, within, "gate = node 0 after the Redis restart", |r| {
            r.gate == g0
        })
        .await;
    cluster
        .wait_route(&y, within, "gate = node 1 after the Redis restart", |r| {
            r.gate == g1
        })
        .await;
    let reclaimed = restarted.elapsed();
    for gate in [&g0, &g1] {
        let key = cluster.node_key(gate);
        let node = cluster.hash_with_ttl(&key).await.expect("read Redis");
        assert!(
            node.is_some(),
            "{key} not registered again after the Redis restart"
        );
    }
    cluster
        .wait_metric_on_live_nodes("iothub_redis_up", 1.0, within)
        .await;
    let answer = cluster.instruct(Some(0), &y, "STATUS#", 3, 10).await;
    assert_delivered(&answer, &y, "STATUS#", 3, &g1);
    let answer = cluster.instruct(Some(1), &x, "STATUS#", 4, 10).await;
    assert_delivered(&answer, &x, "STATUS#", 4, &g0);

    let logs = fleet.stop().await;
    assert!(failures(&logs).is_empty(), "{:?}", failures(&logs));
    for log in &logs {
        assert_eq!(
            log.logins, 1,
            "{} reconnected during the Redis outage: {log:?}",
            log.imei
        );
    }
    eprintln!("redis outage: routes re-claimed {reclaimed:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_kafka_keeps_devices_acknowledged_and_loses_nothing() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("kafka-outage", 2, LEASE).await;
    let imeis: Vec<String> = (0..4).map(|i| format!("86471700329002{i}")).collect();
    let devices: Vec<(String, std::net::SocketAddr)> = imeis
        .iter()
        .map(|imei| (imei.clone(), cluster.gt06_balanced()))
        .collect();
    let fleet = Fleet::start(&devices, Duration::from_millis(300));
    fleet.wait_all_logged_in(Duration::from_secs(10)).await;
    let routes = wait_routes(&cluster, &imeis, Duration::from_secs(10), "a gate", |r| {
        !r.gate.is_empty()
    })
    .await;
    cluster
        .wait_metric_on_live_nodes("iothub_kafka_up", 1.0, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    tokio::task::block_in_place(|| cluster.kafka.stop());
    let at_stop = acked_counts(&fleet.snapshot());
    cluster
        .wait_metric_on_live_nodes("iothub_kafka_up", 0.0, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = fleet.snapshot();
    for log in &during {
        assert!(
            log.acked.len() >= at_stop[&log.imei] + 3 && log.failures.is_empty(),
            "{} not acknowledged while Kafka is down: {} acked at the stop, now {log:?}",
            log.imei,
            at_stop[&log.imei]
        );
    }

    tokio::task::block_in_place(|| cluster.kafka.restart());
    cluster
        .wait_metric_on_live_nodes("iothub_kafka_up", 1.0, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Instructions still cross nodes.
    let imei = &imeis[0];
    let owner = &routes[imei].gate;
    let owner_index = cluster.node_of(owner).expect("owner is a node");
    let answer = cluster
        .instruct(Some(1 - owner_index), imei, "STATUS#", 5, 10)
        .await;
    assert_delivered(&answer, imei, "STATUS#", 5, owner);

    let logs = fleet.stop().await;
    assert!(failures(&logs).is_empty(), "{:?}", failures(&logs));
    for log in &logs {
        assert_eq!(
            log.logins, 1,
            "{} reconnected during the Kafka outage: {log:?}",
            log.imei
        );
    }
    assert_all_acked_in_kafka(&cluster, &logs).await;

    // The customer gets every acknowledged alarm too, once the spool has drained.
    assert_all_acked_pushed(&cluster, &logs, Duration::from_secs(60)).await;
}

/// Waits until the push receiver has every alarm the trackers had acknowledged (matched per
/// IMEI by `alarmTime`), and fails naming the missing ones.
async fn assert_all_acked_pushed(cluster: &Cluster, logs: &[TrackerLog], within: Duration) {
    let acked = acked_by_imei(logs);
    let pushed_times = |view: &iothub_loadgen::receiver::ReceiverView<'_>| {
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for record in view.records("/pushalarm") {
            if let (Some(imei), Some(time)) =
                (&record.imei, record.record["msg"]["alarmTime"].as_str())
            {
                seen.entry(imei.clone())
                    .or_default()
                    .insert(time.to_string());
            }
        }
        seen
    };
    let drained = cluster
        .receiver
        .wait_for(|v| missing(&pushed_times(v), &acked).is_empty(), within)
        .await;
    assert!(
        drained,
        "acknowledged alarms never pushed to the customer: {:?}",
        cluster.receiver.view(|v| missing(&pushed_times(v), &acked))
    );
}
