//! # iothub-loadgen: pretend to be the devices
//!
//! Simulated GT06 trackers and JT/T 808 terminals built on iothub's own encoders and
//! decoders, a customer push endpoint and a Kafka consumer to count what the hub delivers,
//! and a customer API client to load the instruction path. The system tests use the pieces
//! as a library; the `iothub-loadgen` binary runs whole fleets to size a deployment.
//!
//! # Layout
//! - [`tracker`]: [`SimTracker`], one tracker over a real TCP connection, driven step by step
//!   (`login`, `send_gps`, `send_alarm`, ...) or left to run ([`SimTracker::run_until`]).
//! - [`jt808_terminal`]: [`SimTerminal`], a JT/T 808 (2013 or 2019) terminal or dashcam:
//!   register, authenticate, report, raise ADAS alarms, answer the platform's commands.
//! - [`media`]: [`LiveMedia`], where JT/T 1078 streaming plugs into a simulated dashcam.
//! - [`dvr_stream`]: [`DvrMedia`], a dashcam streaming an H.264 (and G.711A) file as JT/T 1078
//!   packets when the platform asks.
//! - [`movement`]: where a simulated vehicle is: heading, speed, odometer, fix times.
//! - [`frames`]: the uplink (and test-server downlink) frames, via `iothub::codec::gt06`.
//! - [`receiver`]: [`PushReceiver`], an HTTP server accepting `pushURL` posts.
//! - [`kafka`]: [`KafkaVerifier`], a consumer counting the hub's Kafka records per IMEI.
//! - [`roster`]: who takes part in a run: families, IMEIs (Luhn for DVRs), duplicates,
//!   slices per worker process.
//! - [`flv_viewers`]: many HTTP-FLV viewers of one stream: first-frame time, stalls, bytes.
//! - [`fleet`]: a bounded load run of many devices (the `trackers` command).
//! - [`instruct`]: the sendInstruct load: open-loop rate, round-robin targets, latency.
//! - [`workers`]: running a fleet over several processes and adding their counts up.
//! - [`report`]: sent / acked / owed / delivered / lost / duplicated accounting and latency.
//! - [`stats`], [`rate`]: shared counters and connection pacing.
#![forbid(unsafe_code)]

pub mod awaiting;
pub mod dial;
pub mod dvr_stream;
pub mod fleet;
pub mod flv_viewers;
pub mod frames;
pub mod instruct;
pub mod jt808_terminal;
pub mod kafka;
pub mod media;
pub mod movement;
pub mod rate;
pub mod receiver;
pub mod report;
pub mod roster;
pub mod stats;
#[cfg(test)]
mod test_media;
pub mod tracker;
pub mod workers;

pub use dvr_stream::{DvrMedia, DvrMediaConfig, MediaSource};
pub use fleet::{FleetConfig, Verifiers};
pub use instruct::InstructConfig;
pub use jt808_terminal::{
    AdasEvent, BatchKind, Jt808Version, SimTerminal, SimTerminalConfig, TerminalError,
};
pub use kafka::{KafkaConfig, KafkaVerifier};
pub use media::{LiveMedia, LiveStream, PlaybackStream};
pub use movement::{Fix, MovementConfig};
pub use receiver::{FailureMode, PushReceiver, PushRecord, ReceiverConfig};
pub use report::Report;
pub use roster::{Family, Group, Roster};
pub use stats::{Counters, Kind};
pub use tracker::{CommandReplyMode, SimTracker, SimTrackerConfig, TrackerError};
