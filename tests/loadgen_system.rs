//! A small load run through the loadgen library against the real iothubd: 150 GT06
//! trackers (positions in buffered uploads of 3) and 50 JT/T 808 DVRs reporting for five
//! seconds (positions, heartbeats, alarms),
//! an instruction load of 20 sendInstructs per second against them, and the built-in push
//! receiver counting every record per IMEI. Nothing may be lost or duplicated, and every
//! instruction must come back `_code` 100. The same run again on a hub with one worker
//! thread (`IOTHUB_WORKER_THREADS=1`), the setting small machines are advised to try.

use std::time::Duration;

use iothub_loadgen::fleet::{self, FleetConfig, Verifiers};
use iothub_loadgen::instruct::InstructConfig;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::roster::Family;
use iothub_loadgen::Kind;
use iothub_system_tests::{metric_value, Hub, TOKEN};

/// The kinds the hub pushes, each of which the run produces.
const PUSHED: [Kind; 4] = [Kind::Login, Kind::Heartbeat, Kind::Gps, Kind::Alarm];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_with_instructions_loses_nothing() {
    let hub = mixed_fleet_loses_nothing(&[]).await;
    // The default is one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(runtime_workers(&hub).await, cores);
}

/// The hub's `iothub_runtime_workers` gauge (0 when the hub does not export it).
async fn runtime_workers(hub: &Hub) -> usize {
    metric_value(&hub.metrics_text().await, "iothub_runtime_workers", &[]) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_on_one_worker_thread_loses_nothing() {
    let hub = mixed_fleet_loses_nothing(&[("IOTHUB_WORKER_THREADS", "1")]).await;
    assert_eq!(runtime_workers(&hub).await, 1);
}

/// Runs the fleet against a new hub started with `hub_env`; returns the hub, still running.
async fn mixed_fleet_loses_nothing(hub_env: &[(&str, &str)]) -> Hub {
    let rx = PushReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start push receiver");
    let url = rx.url();
    let mut env = vec![("pushURL", url.as_str())];
    env.extend_from_slice(hub_env);
    let hub = Hub::start(&env);

    let mut config = FleetConfig::new(hub.gt06, 150);
    config.gps_interval = Duration::from_secs(1);
    // Positions go as buffered uploads of 3 frames per write: the hub then takes several
    // frames from one read as one batch, which must lose nothing either.
    config.gps_batch = 3;
    config.heartbeat_interval = Duration::from_secs(2);
    config.alarm_interval = Duration::from_secs(3);
    config.dvrs = 50;
    config.dvr_target = hub.jt808;
    config.dvr_location_interval = Duration::from_secs(1);
    config.dvr_heartbeat_interval = Duration::from_secs(2);
    config.dvr_alarm_interval = Duration::from_secs(3);
    config.duration = Duration::from_secs(5);
    config.drain_timeout = Duration::from_secs(30);
    config.progress = false;
    let mut instruct = InstructConfig::new(format!("http://{}", hub.api), TOKEN, 20.0);
    instruct.settle = Duration::from_secs(1);
    instruct.window = Duration::from_secs(2);
    config.instruct = Some(instruct);

    let report = fleet::run(config, Verifiers::push(&rx))
        .await
        .expect("load run");
    let table = report.table();

    for (family, devices) in [(Family::Gt06, 150), (Family::Jt808, 50)] {
        let group = report
            .group(family, false)
            .unwrap_or_else(|| panic!("no {family:?} group:\n{table}"));
        assert_eq!(group.devices, devices, "{table}");
        assert_eq!(group.counters.acked(Kind::Login), devices, "{table}");
        assert_eq!(group.counters.disconnects, 0, "{table}");
        assert!(group.counters.commands_answered > 0, "{table}");
        for kind in PUSHED {
            let verdict = group
                .kind(kind)
                .and_then(|k| k.push)
                .unwrap_or_else(|| panic!("{} {}: no verdict\n{table}", group.label, kind.name()));
            assert!(
                verdict.delivered > 0,
                "{} {}: nothing delivered\n{table}",
                group.label,
                kind.name()
            );
            assert_eq!(
                verdict.lost,
                Some(0),
                "{} {} lost\n{table}",
                group.label,
                kind.name()
            );
            assert_eq!(
                verdict.duplicated,
                0,
                "{} {} duplicated\n{table}",
                group.label,
                kind.name()
            );
        }
    }
    assert_eq!(report.lost(), 0, "{table}");
    assert!(report.push.as_ref().is_some_and(|p| p.complete), "{table}");

    let instructions = report.instructions.as_ref().expect("instruction report");
    // 20 per second for the four seconds before the settle time, less the few due while
    // the fleet was still connecting.
    assert!(instructions.sent >= 50, "{table}");
    assert_eq!(instructions.answered, instructions.sent, "{table}");
    assert_eq!(
        instructions.codes.keys().collect::<Vec<_>>(),
        vec!["100"],
        "{table}"
    );
    assert_eq!(instructions.skipped_in_flight, 0, "{table}");
    // Requests start over the first four seconds: two-second windows, each answer in one.
    let latency = instructions.latency.as_ref().expect("instruction latency");
    assert!(instructions.windows.len() >= 2, "{table}");
    assert_eq!(
        instructions
            .windows
            .iter()
            .map(|w| w.latency.samples)
            .sum::<u64>(),
        latency.samples,
        "{table}"
    );
    hub
}
