//! `iothub-loadgen`: run simulated trackers against an iothub gateway, or a standalone push
//! receiver. Every run is bounded in size and time and ends by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use iothub_loadgen::fleet::{self, FleetConfig};
use iothub_loadgen::receiver::{FailureMode, PushReceiver, ReceiverConfig};

#[derive(Debug, Parser)]
#[command(
    name = "iothub-loadgen",
    version,
    about = "Simulated GPS trackers and a push receiver for load-testing iothub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect simulated GT06 trackers to a gateway: login, GPS, heartbeats, alarms, command
    /// replies; print progress every second and a final table.
    Trackers(TrackersArgs),
    /// Run only the push receiver (answers {"code":0}) and print what arrives every second.
    Receiver(ReceiverArgs),
}

#[derive(Debug, Args)]
struct TrackersArgs {
    /// Gateway address (the hub's GT06/JIMI listener).
    #[arg(long, default_value = "127.0.0.1:21100")]
    target: SocketAddr,
    /// Number of simulated trackers.
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// IMEI of the first tracker; the others count up from it, same number of digits.
    #[arg(long, default_value = "860000000000000")]
    imei_base: String,
    /// Period of GPS reports (0x22) per tracker, e.g. 1s, 500ms, 10s; 0s = none.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    gps_interval: Duration,
    /// Period of heartbeats (0x13) per tracker; 0s = none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Period of alarms (0x26) per tracker; 0s = none.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    alarm_interval: Duration,
    /// Alarm byte of the periodic alarms (1 SOS, 2 power cut, 3 vibration, ...).
    #[arg(long, default_value_t = 1)]
    alarm_code: u8,
    /// How long the trackers stay connected; the run then stops by itself.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// New connections per second (first connects and reconnects); 0 = as fast as possible.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Local source addresses, round-robin: a range 127.0.1.1-127.0.1.50, an address, or a
    /// comma-separated list. Each source address allows about 28,000 connections to one port.
    #[arg(long)]
    source_ips: Option<String>,
    /// How long a tracker waits for an acknowledgement (devices wait 5 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Pause before a tracker whose connection dropped reconnects.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// Run a push receiver here (the hub's pushURL must point at it) and account for every
    /// delivery: sent / acked / delivered / lost / duplicated per kind, GPS push latency.
    /// The command exits non-zero when anything was lost.
    #[arg(long)]
    push_listen: Option<SocketAddr>,
    /// After the run, how long to wait for outstanding deliveries.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// No progress lines, only the final table.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Path of the offline-command callback (offlineCmdPushURL = http://<listen><path>).
    #[arg(long, default_value = "/offlineCallback")]
    offline_callback_path: String,
    /// How long to run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Answer every push with HTTP 500 (fault injection).
    #[arg(long, conflicts_with = "fail_code")]
    fail_500: bool,
    /// Answer every push with {"code":1} (fault injection).
    #[arg(long)]
    fail_code: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iothub-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trackers(args) => trackers(args).await,
            Command::Receiver(args) => receiver(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iothub-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each tracker is a socket: raise the soft open-files limit to the hard limit.
fn raise_nofile(wanted: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => eprintln!(
            "warning: open-files limit is {limit}, fewer than the {wanted} this run needs; raise `ulimit -n`"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
}

async fn trackers(args: TrackersArgs) -> anyhow::Result<ExitCode> {
    raise_nofile(u64::from(args.count) + 256);
    let mut config = FleetConfig::new(args.target, args.count);
    config.imei_base = args.imei_base;
    config.gps_interval = args.gps_interval;
    config.heartbeat_interval = args.heartbeat_interval;
    config.alarm_interval = args.alarm_interval;
    config.alarm_code = args.alarm_code;
    config.duration = args.duration;
    config.connect_rate = args.connect_rate;
    config.source_ips = match &args.source_ips {
        Some(spec) => fleet::parse_source_ips(spec).context("--source-ips")?,
        None => Vec::new(),
    };
    config.ack_timeout = args.ack_timeout;
    config.reconnect_delay = args.reconnect_delay;
    config.drain_timeout = args.drain_timeout;
    config.progress = !args.quiet;

    let receiver = match args.push_listen {
        Some(addr) => {
            let r = PushReceiver::start(addr)
                .await
                .with_context(|| format!("--push-listen {addr}"))?;
            println!(
                "push receiver listening on {} (set the hub's pushURL to it)",
                r.url()
            );
            Some(r)
        }
        None => None,
    };
    let report = fleet::run(config, receiver.as_ref()).await?;
    print!("{}", report.table());
    if let Some(path) = &args.report_json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if report.counters.connects_established == 0 {
        eprintln!(
            "iothub-loadgen: no tracker could connect to {}",
            report.target
        );
        return Ok(ExitCode::FAILURE);
    }
    let lost = report.lost();
    if receiver.is_some() && lost > 0 {
        eprintln!("iothub-loadgen: {lost} records were not delivered");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    let mut config = ReceiverConfig::new(args.listen);
    config.offline_callback_path = args.offline_callback_path;
    let receiver = PushReceiver::start_with(config)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    if args.fail_500 {
        receiver.set_failure_mode(FailureMode::Http500);
    } else if args.fail_code {
        receiver.set_failure_mode(FailureMode::CodeOne);
    }
    println!(
        "push receiver on {} (offline callback {})",
        receiver.url(),
        receiver.offline_callback_url()
    );
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let line = receiver.view(|v| {
            [
                "/pushevent",
                "/pushhb",
                "/pushgps",
                "/pushalarm",
                "/pushlbs",
                "/pushInstructResponse",
            ]
            .iter()
            .map(|e| {
                format!(
                    "{}={} (dup {})",
                    e.trim_start_matches('/'),
                    v.count(e),
                    v.duplicates(e)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
        });
        println!(
            "requests={} rejected={} malformed={} {line}",
            receiver.requests(),
            receiver.rejected(),
            receiver.bad_requests()
        );
    }
    Ok(ExitCode::SUCCESS)
}
