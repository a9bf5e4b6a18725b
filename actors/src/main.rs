//! iothubd: the iothub daemon. Loads the configuration, starts the hub and runs until
//! SIGTERM or SIGINT, then stops gracefully (no new devices, logouts stored, pushes kept).

use std::path::PathBuf;

use clap::Parser;
use iothub_actors::config::Config;
use iothub_actors::publish::spool::Spool;
use iothub_actors::root::Hub;
use iothub_actors::storage::Storage;
use iothub_actors::telemetry;

/// iothub: an IoT hub for GPS trackers and dashcams, compatible with Jimi IoT Hub devices
/// and integrations.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, `config/iothub.toml` is used when present,
    /// else the built-in defaults (the same file, embedded). Environment variables with the
    /// Jimi names (pushURL, kafkaEnable, readTimeOut, ...) override the file.
    #[arg(long, short = 'c', env = "IOTHUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Moves the events Kafka refused for good (parked, see `iothub_kafka_parked_events`)
    /// back to the Kafka spool, for the node's next start to produce them. Run it with the
    /// node stopped (it opens the node's data directory), once Kafka takes them.
    ReplayParked,
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
    if config.api.token_generated {
        tracing::warn!(
            token = %config.api.token,
            "apiToken is not configured: sendInstruct accepts this random token for this run only; set apiToken to keep one"
        );
    }
    let metrics_addr = telemetry::start_metrics(config.metrics.listen).await?;
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
