//! iothubd: the iothub daemon. Loads the configuration, starts the hub and runs until
//! SIGTERM or SIGINT, then stops gracefully (no new devices, logouts stored, pushes kept).
//! `iothubd dead-letters list|replay` works on the stopped node's dead-letter store.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use iothub_actors::config::Config;
use iothub_actors::publish::spool::Spool;
use iothub_actors::push::dead_letters;
use iothub_actors::root::Hub;
use iothub_actors::storage::Storage;
use iothub_actors::{open_files, telemetry};

/// iothub: an IoT hub for GPS trackers and dashcams, compatible with Jimi IoT Hub devices
/// and integrations.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, `config/iothub.toml` is used when present,
    /// else the built-in defaults (the same file, embedded). Environment variables with the
    /// Jimi names (pushURL, kafkaEnable, readTimeOut, ...) override the file.
    #[arg(long, short = 'c', env = "IOTHUB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Records the push endpoint refused for good (HTTP 4xx), set aside so their topic kept
    /// moving. Run while iothubd is stopped: the node's database has one user at a time.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Moves the events Kafka refused for good (parked, see `iothub_kafka_parked_events`)
    /// back to the Kafka spool, for the node's next start to produce them. Run it with the
    /// node stopped (it opens the node's data directory), once Kafka takes them.
    ReplayParked,
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// Prints the dead letters, oldest first, one JSON line each.
    List {
        /// Most dead letters printed.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Queues every dead letter again; the next start of iothubd pushes them.
    Replay,
}

fn dead_letter_command(config: &Config, command: &DeadLetterCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let storage = Storage::open(&config.storage)
        .context("cannot open the node's database (is iothubd still running?)")?;
    match command {
        DeadLetterCommand::List { max } => {
            for d in dead_letters::list(&storage, *max)? {
                let line = serde_json::json!({
                    "seq": d.seq,
                    "topic": d.topic.name(),
                    "imei": d.imei.as_str(),
                    "enqueuedMs": d.enqueued_ms,
                    "reason": d.reason,
                    "record": String::from_utf8_lossy(&d.json),
                });
                println!("{line}");
            }
        }
        DeadLetterCommand::Replay => {
            let n = dead_letters::replay(config, &storage)?;
            println!("{n} dead letters queued again");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iothubd: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::DeadLetters(command)) = &cli.command {
        return match dead_letter_command(&config, command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("iothubd: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::ReplayParked) = cli.command {
        return replay_parked(&config);
    }
    // The runtime is built after the configuration is read because its size is configured.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = config.runtime.worker_threads {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("iothubd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("iothubd stopped: {e:#}");
            eprintln!("iothubd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `iothubd replay-parked`.
fn replay_parked(config: &Config) -> std::process::ExitCode {
    let replayed = Storage::open(&config.storage).and_then(|storage| {
        let mut spool = Spool::open(storage, config.kafka.spool_max_events)?;
        Ok(spool.replay_parked()?)
    });
    match replayed {
        Ok(n) => {
            println!(
                "{n} parked events moved to the Kafka spool; the node produces them when it starts"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iothubd: replay-parked: {e:#} (is the node still running?)");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let open_files = open_files::raise_to_hard_limit();
    if config.api.token_generated {
        tracing::warn!(
            token = %config.api.token,
            "apiToken is not configured: sendInstruct accepts this random token for this run only; set apiToken to keep one"
        );
    }
    let metrics_addr = telemetry::start_metrics(config.metrics.listen, config.http).await?;
    check_open_files(open_files, config.gateway.max_connections);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics::gauge!("iothub_runtime_workers").set(workers as f64);
    let mut hub = Hub::start(&config).await?;
    tracing::info!(
        gate_id = %config.gate_id,
        gt06 = %hub.gt06_addr,
        jt808 = %hub.jt808_addr,
        api = %hub.api_addr,
        metrics = %metrics_addr,
        kafka = config.kafka.enable,
        workers,
        "iothubd ready"
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        why = hub.failed() => Some(why),
    };
    hub.shutdown().await;
    if let Some(why) = failed {
        anyhow::bail!("{why}");
    }
    Ok(())
}

/// Reports the open-file limit (as raised at start) and warns when it cannot hold the
/// connection budget: past it, accepts fail and devices wait in the listen backlog.
fn check_open_files(limit: std::io::Result<u64>, budget: usize) {
    let limit = match limit {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit (RLIMIT_NOFILE)");
            return;
        }
    };
    metrics::gauge!("iothub_open_files_limit").set(limit as f64);
    let budget = budget as u64;
    match open_files::shortfall(budget, limit) {
        None => tracing::info!(open_files_limit = limit, max_connections = budget, "open-file limit holds the connection budget"),
        Some(short) => tracing::warn!(
            open_files_limit = limit,
            max_connections = budget,
            reserved = open_files::RESERVED_FILES,
            short,
            "the open-file limit cannot hold gateway.max_connections plus the files reserved for storage, Kafka, Redis and HTTP: \
             past about {} device connections accepts will fail; raise the hard limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -Hn) or lower gateway.max_connections",
            limit.saturating_sub(open_files::RESERVED_FILES)
        ),
    }
}
