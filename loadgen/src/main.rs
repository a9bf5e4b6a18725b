//! `iothub-loadgen`: run simulated GT06 trackers and JT/T 808 DVRs against an iothub node
//! (optionally with an instruction load, a push receiver and a Kafka counter, over several
//! worker processes), a standalone push receiver, or many HTTP-FLV viewers of one stream.
//! Every run is bounded in size and time and ends by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use iothub::media::jt1078::Layout;
use iothub_loadgen::dvr_stream::{DvrMedia, DvrMediaConfig, MediaSource};
use iothub_loadgen::fleet::{self, FleetConfig, Verifiers};
use iothub_loadgen::flv_viewers::{self, ViewerConfig};
use iothub_loadgen::instruct::InstructConfig;
use iothub_loadgen::jt808_terminal::Jt808Version;
use iothub_loadgen::kafka::{KafkaConfig, KafkaVerifier};
use iothub_loadgen::receiver::{FailureMode, PushReceiver, ReceiverConfig};
use iothub_loadgen::workers::{WorkerLaunch, WorkerSpec};

#[derive(Debug, Parser)]
#[command(
    name = "iothub-loadgen",
    version,
    about = "Simulated GPS trackers and dashcams, a push receiver, a Kafka counter and an instruction load for load-testing iothub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect simulated GT06 trackers and/or JT/T 808 DVRs to the hub: login, GPS,
    /// heartbeats, alarms, command replies; optionally load the instruction API and verify
    /// every delivery; print progress every second and a final table.
    #[command(visible_alias = "run")]
    Trackers(Box<TrackersArgs>),
    /// Run only the push receiver (answers {"code":0}) and print what arrives every second.
    Receiver(ReceiverArgs),
    /// Pull one HTTP-FLV (or HTTPS-FLV) stream with many concurrent viewers and report
    /// time to first video frame, bytes, key frames, stalls and disconnects.
    View(ViewArgs),
}

#[derive(Debug, Args)]
struct TrackersArgs {
    /// Gateway address of the trackers (the hub's GT06/JIMI listener).
    #[arg(long, default_value = "127.0.0.1:21100")]
    target: SocketAddr,
    /// Number of simulated GT06 trackers (0 for a DVR-only run).
    #[arg(long, visible_alias = "trackers", default_value_t = 100)]
    count: u32,
    /// IMEI of the first tracker; the others count up from it, same number of digits.
    #[arg(long, default_value = "860000000000000")]
    imei_base: String,
    /// Period of GPS reports (0x22) per tracker, e.g. 1s, 500ms, 10s; 0s = none.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    gps_interval: Duration,
    /// GPS fixes per report: more than 1 sends that many 0x22 frames back to back in one
    /// write, a second apart in fix time, like a tracker uploading buffered fixes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    gps_batch: u32,
    /// Period of heartbeats (0x13) per tracker; 0s = none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Period of alarms (0x26) per tracker; 0s = none.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    alarm_interval: Duration,
    /// Alarm byte of the periodic alarms (1 SOS, 2 power cut, 3 vibration, ...).
    #[arg(long, default_value_t = 1)]
    alarm_code: u8,

    /// Number of simulated JT/T 808 DVRs (dashcams).
    #[arg(long, default_value_t = 0)]
    dvrs: u32,
    /// Gateway address of the DVRs (the hub's JT/T 808 listener).
    #[arg(long, default_value = "127.0.0.1:21121")]
    dvr_target: SocketAddr,
    /// JT/T 808 revision the DVRs speak: 2013 (12-byte header) or 2019 (17-byte header).
    #[arg(long, default_value = "2013", value_parser = parse_version)]
    dvr_version: Jt808Version,
    /// First 14 digits of the first DVR IMEI; the others count up, and each gets its Luhn
    /// check digit (the hub maps header phones to IMEIs with newImeiRule).
    #[arg(long, default_value = "86510000000000")]
    dvr_imei_base: String,
    /// Period of location reports (0x0200) per DVR; 0s = none.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    dvr_location_interval: Duration,
    /// Period of heartbeats (0x0002) per DVR; 0s = none.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    dvr_heartbeat_interval: Duration,
    /// Period of alarm reports (0x0200 with an alarm word) per DVR; 0s = none.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    dvr_alarm_interval: Duration,
    /// Alarm word of the periodic DVR alarm reports (bit 0 = emergency).
    #[arg(long, default_value_t = 1)]
    dvr_alarm_word: u32,

    /// H.264 Annex-B file the streaming DVRs send, as JT/T 1078 packets, when the platform
    /// asks (0x9101 live, 0x9201 playback); without it no DVR streams. Make one with
    /// `ffmpeg -f lavfi -i testsrc=size=352x288:rate=15 -t 10 -c:v libx264 -profile:v
    /// baseline -pix_fmt yuv420p -g 15 -bsf:v h264_mp4toannexb -f h264 v.264`.
    #[arg(long)]
    media_video: Option<PathBuf>,
    /// Raw G.711A file (8 kHz mono: `-c:a pcm_alaw -ar 8000 -ac 1 -f alaw`) sent as audio in
    /// 320-byte (40 ms) frames when the request includes audio.
    #[arg(long, requires = "media_video")]
    media_audio: Option<PathBuf>,
    /// JT/T 1078 packet header: 2016 (6-byte SIM) or 2019 (10-byte SIM).
    #[arg(long, default_value = "2016", value_parser = parse_layout)]
    media_layout: Layout,
    /// Largest packet body; longer frames are sent as first/middle/last subpackages.
    #[arg(long, default_value_t = 950)]
    media_max_body: usize,
    /// Put the HiSilicon header (00 01 NN 00) in front of every audio frame.
    #[arg(long)]
    media_hisilicon: bool,
    /// Video frames per second of the streams.
    #[arg(long, default_value_t = 15.0)]
    media_fps: f64,
    /// Longest a stream lasts, in seconds (a playback also ends with its time range).
    #[arg(long, default_value_t = 60)]
    media_seconds: u64,
    /// Most bytes one stream sends.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    media_max_bytes: u64,
    /// Most streams at once; further requests are refused and counted.
    #[arg(long, default_value_t = 10_000)]
    media_max_streams: usize,
    /// How many DVRs (the first ones) stream when asked (default: all of them).
    #[arg(long, requires = "media_video")]
    media_dvrs: Option<u32>,

    /// Extra devices that reuse the IMEI of another device of the run on purpose, spread
    /// evenly over the fleet: the hub's "newest connection wins" makes each pair take the
    /// connection from each other; those takeovers are counted, not reported as errors.
    #[arg(long, default_value_t = 0)]
    duplicate_imeis: u32,

    /// How long the devices stay connected; the run then stops by itself.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// New connections per second (first connects and reconnects) of the whole run, shared
    /// among --workers; 0 = as fast as possible (a connect storm).
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Local source addresses, round-robin: a range 127.0.1.1-127.0.1.50, an address, or a
    /// comma-separated list. Each source address allows about 28,000 connections to one
    /// port; with --workers each worker takes its own part of the list.
    #[arg(long)]
    source_ips: Option<String>,
    /// How long a device waits for an acknowledgement (devices wait 5 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Pause before a device whose connection dropped reconnects...
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// ...plus a random part up to this, so that devices cut off together come back spread.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconnect_jitter: Duration,

    /// Run a push receiver here (the hub's pushURL must point at it) and account for every
    /// delivery: sent / acked / delivered / lost / duplicated per kind, GPS push latency.
    /// The command exits non-zero when anything was lost.
    #[arg(long)]
    push_listen: Option<SocketAddr>,
    /// Count the hub's Kafka records too (or instead): brokers host:port[,host:port]. A
    /// consumer group of its own reads {prefix}.gps/.hb/.alarm/.event from their end at the
    /// start of the run. The command exits non-zero when anything was lost.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// The hub's topicPrefix.
    #[arg(long, default_value = "iothub")]
    kafka_topic_prefix: String,
    /// Consumer group of the Kafka counter (default: a new one per run).
    #[arg(long)]
    kafka_group: Option<String>,
    /// After the run, how long to wait for outstanding deliveries.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,

    /// sendInstruct requests per second during the run (0 = none), round-robin over the
    /// online devices: proNo 128 STATUS# to trackers, proNo 33028 to DVRs. Open-loop: a
    /// request is never delayed by slow answers; one due while --instruct-max-in-flight
    /// are out, or while no device is free, is skipped and counted.
    #[arg(long, default_value_t = 0.0)]
    instruct_rate: f64,
    /// Base URL of the hub's instruction API.
    #[arg(long, default_value = "http://127.0.0.1:10088")]
    api: String,
    /// The hub's apiToken (required with --instruct-rate).
    #[arg(long, env = "IOTHUB_LOADGEN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// timeOut of each sendInstruct (whole seconds, 1..=120).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    instruct_timeout: Duration,
    /// Most sendInstruct requests waiting for an answer at once.
    #[arg(long, default_value_t = 256)]
    instruct_max_in_flight: usize,
    /// No sendInstruct starts this long before the end of the run, so the last ones are
    /// answered while the devices are still connected.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    instruct_settle: Duration,
    /// No sendInstruct starts before this much of the run has passed, so the latency is
    /// measured on a connected fleet rather than during its login storm.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    instruct_warmup: Duration,
    /// The sendInstruct latency is also reported per window of this length on the run's
    /// clock (whole seconds, at least 1s), so a soak shows whether it drifts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    instruct_window: Duration,

    /// Run the devices in this many worker processes (this binary, started again), each
    /// with its own slice of devices and source addresses and under 20,000 open files; the
    /// push receiver, Kafka counter, instruction load, progress and report stay here.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Internal: run as worker i of K, writing JSON lines for the parent.
    #[arg(long, hide = true)]
    worker: Option<WorkerSpec>,

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

#[derive(Debug, Args)]
struct ViewArgs {
    /// The stream: http://host:8880/<channel>/<imei>.flv (JT/T 1078 live),
    /// .../<channel>/<imei>.history.flv (playback), .../live/<channel>/<imei>.flv (JIMI);
    /// https:// needs --ca-file.
    #[arg(long)]
    url: String,
    /// Concurrent viewers.
    #[arg(long, default_value_t = 10)]
    viewers: u32,
    /// How long the viewers watch, in seconds; the run then stops by itself.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// PEM file of the certificate authorities to trust for https:// (only these).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Local source addresses, round-robin over the viewers: a range 127.0.1.1-127.0.1.50,
    /// an address, or a comma-separated list (about 28,000 connections per address).
    #[arg(long)]
    source_ips: Option<String>,
    /// New connections per second over all viewers; 0 = all at once.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Longest wait for the connection, TLS handshake and response head.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// A gap longer than this without any FLV tag counts as a stall.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    stall_gap: Duration,
    /// Pause before a viewer whose stream ended connects again.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// Each viewer watches one stream and does not connect again when it ends.
    #[arg(long)]
    no_reconnect: bool,
    /// Write the report (with per-viewer counts) as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// No progress lines, only the summary.
    #[arg(long)]
    quiet: bool,
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
            Command::Trackers(args) => trackers(*args).await,
            Command::Receiver(args) => receiver(args).await,
            Command::View(args) => view(args).await,
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

fn parse_layout(s: &str) -> Result<Layout, String> {
    match s.trim() {
        "2016" => Ok(Layout::Sim6),
        "2019" => Ok(Layout::Sim10),
        other => Err(format!("{other:?}: expected 2016 or 2019")),
    }
}

fn parse_version(s: &str) -> Result<Jt808Version, String> {
    match s.trim() {
        "2013" => Ok(Jt808Version::V2013),
        "2019" => Ok(Jt808Version::V2019),
        other => Err(format!("{other:?}: expected 2013 or 2019")),
    }
}

/// Each device is a socket: raise the soft open-files limit to the hard limit. Whether the
/// run then fits is checked before anything connects.
fn raise_nofile() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
}

fn fleet_config(args: &TrackersArgs) -> anyhow::Result<FleetConfig> {
    let mut config = FleetConfig::new(args.target, args.count);
    config.imei_base = args.imei_base.clone();
    config.gps_interval = args.gps_interval;
    config.gps_batch = args.gps_batch;
    config.heartbeat_interval = args.heartbeat_interval;
    config.alarm_interval = args.alarm_interval;
    config.alarm_code = args.alarm_code;
    config.dvrs = args.dvrs;
    config.dvr_target = args.dvr_target;
    config.dvr_version = args.dvr_version;
    config.dvr_imei_base = args.dvr_imei_base.clone();
    config.dvr_location_interval = args.dvr_location_interval;
    config.dvr_heartbeat_interval = args.dvr_heartbeat_interval;
    config.dvr_alarm_interval = args.dvr_alarm_interval;
    config.dvr_alarm_word = args.dvr_alarm_word;
    config.duplicate_imeis = args.duplicate_imeis;
    config.duration = args.duration;
    config.connect_rate = args.connect_rate;
    config.source_ips = match &args.source_ips {
        Some(spec) => fleet::parse_source_ips(spec).context("--source-ips")?,
        None => Vec::new(),
    };
    config.ack_timeout = args.ack_timeout;
    config.reconnect_delay = args.reconnect_delay;
    config.reconnect_jitter = args.reconnect_jitter;
    config.drain_timeout = args.drain_timeout;
    config.progress = !args.quiet;
    Ok(config)
}

/// The DVRs' media, when `--media-video` is given.
fn dvr_media(args: &TrackersArgs, config: &FleetConfig) -> anyhow::Result<Option<DvrMedia>> {
    let Some(video) = &args.media_video else {
        return Ok(None);
    };
    let mut media = DvrMediaConfig::new(args.media_layout);
    media.max_body = args.media_max_body;
    media.fps = args.media_fps;
    media.duration = Duration::from_secs(args.media_seconds);
    media.max_bytes = args.media_max_bytes;
    media.max_streams = args.media_max_streams;
    media.source_ips = config.source_ips.clone();
    media.validate()?;
    let source = MediaSource::load(video, args.media_audio.as_deref(), args.media_hisilicon)?;
    Ok(Some(DvrMedia::new(media, Arc::new(source))?))
}

async fn trackers(args: TrackersArgs) -> anyhow::Result<ExitCode> {
    raise_nofile();
    let mut config = fleet_config(&args)?;
    let media = dvr_media(&args, &config)?;
    if let Some(m) = &media {
        if args.workers > 1 {
            bail!("--media-video runs in one process: leave out --workers");
        }
        config.live_media = Some(Arc::new(m.clone()));
        config.media_dvrs = args.media_dvrs.unwrap_or(args.dvrs);
    }
    if let Some(spec) = args.worker {
        // A worker runs devices only: the parent receives, counts, instructs and reports.
        fleet::run_worker(config, spec).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.instruct_rate > 0.0 {
        let Some(token) = args.api_token.clone() else {
            bail!("--api-token is required with --instruct-rate");
        };
        let mut instruct = InstructConfig::new(args.api.clone(), token, args.instruct_rate);
        instruct.timeout = args.instruct_timeout;
        instruct.max_in_flight = args.instruct_max_in_flight;
        instruct.settle = args.instruct_settle;
        instruct.warmup = args.instruct_warmup;
        instruct.window = args.instruct_window;
        config.instruct = Some(instruct);
    } else if args.instruct_rate < 0.0 || !args.instruct_rate.is_finite() {
        bail!("--instruct-rate must be a number >= 0");
    }
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.workers > 1 {
        config.workers = Some(WorkerLaunch {
            exe: std::env::current_exe().context("--workers: cannot find this program")?,
            args: std::env::args_os().skip(1).collect(),
            count: args.workers,
        });
    }
    // Refuse bad flags before a receiver or a consumer starts.
    config.roster()?;
    config.validate()?;

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
    let kafka = match &args.kafka_brokers {
        Some(brokers) => {
            let mut kc = KafkaConfig::new(brokers.clone(), args.kafka_topic_prefix.clone());
            kc.group = args.kafka_group.clone();
            let k = KafkaVerifier::start(kc).await?;
            println!(
                "counting Kafka records of {} on {}",
                k.topics().join(", "),
                k.brokers()
            );
            Some(k)
        }
        None => None,
    };
    let verifiers = Verifiers {
        push: receiver.as_ref(),
        kafka: kafka.as_ref(),
    };
    let report = fleet::run(config, verifiers).await;
    if let Some(k) = kafka {
        k.stop().await;
    }
    let report = report?;
    print!("{}", report.table());
    if let Some(m) = &media {
        // The DVRs are gone: close what still streams, and give it a moment to count.
        m.stop_all();
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while m.streaming() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        print!("{}", m.report().table());
    }
    if let Some(path) = &args.report_json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("--report-json {}", path.display()))?;
    }
    if report.counters.connects_established == 0 {
        eprintln!("iothub-loadgen: no device could connect");
        return Ok(ExitCode::FAILURE);
    }
    let lost = report.lost();
    if lost > 0 {
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

async fn view(args: ViewArgs) -> anyhow::Result<ExitCode> {
    raise_nofile();
    let url = args
        .url
        .parse()
        .with_context(|| format!("--url {}", args.url))?;
    let mut config = ViewerConfig::new(url, args.viewers, Duration::from_secs(args.seconds));
    config.ca_file = args.ca_file;
    config.source_ips = match &args.source_ips {
        Some(spec) => fleet::parse_source_ips(spec).context("--source-ips")?,
        None => Vec::new(),
    };
    config.connect_rate = args.connect_rate;
    config.connect_timeout = args.connect_timeout;
    config.stall_gap = args.stall_gap;
    config.reconnect_delay = (!args.no_reconnect).then_some(args.reconnect_delay);
    config.progress = !args.quiet;
    let report = flv_viewers::run(config).await?;
    print!("{}", report.table());
    if let Some(path) = &args.report_json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("--report-json {}", path.display()))?;
    }
    if report.first_frame.is_none() {
        eprintln!("iothub-loadgen: no viewer received a video frame");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
