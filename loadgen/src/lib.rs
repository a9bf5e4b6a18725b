//! # iothub-loadgen: pretend to be the devices
//!
//! Simulated GT06 trackers and JT/T 808 terminals built on iothub's own encoders and
//! decoders, and a customer push endpoint to receive what the hub delivers. The system tests
//! use them as a library; the `iothub-loadgen` binary runs thousands of devices for
//! benchmarks.
//!
//! # Layout
//! - [`tracker`]: [`SimTracker`], one tracker over a real TCP connection, driven step by step
//!   (`login`, `send_gps`, `send_alarm`, ...) or left to run ([`SimTracker::run_until`]).
//! - [`jt808_terminal`]: [`SimTerminal`], a JT/T 808 (2013 or 2019) terminal or dashcam:
//!   register, authenticate, report, raise ADAS alarms, answer the platform's commands.
//! - [`movement`]: where a simulated vehicle is: heading, speed, odometer, fix times.
//! - [`frames`]: the uplink (and test-server downlink) frames, via `iothub::codec::gt06`.
//! - [`receiver`]: [`PushReceiver`], an HTTP server accepting `pushURL` posts.
//! - [`fleet`]: a bounded load run of many trackers (the `trackers` command).
//! - [`report`]: sent / acked / delivered / lost / duplicated accounting and latency.
//! - [`stats`], [`rate`]: shared counters and connection pacing.
#![forbid(unsafe_code)]

pub mod fleet;
pub mod frames;
pub mod jt808_terminal;
pub mod movement;
pub mod rate;
pub mod receiver;
pub mod report;
pub mod stats;
pub mod tracker;

pub use fleet::FleetConfig;
pub use jt808_terminal::{
    AdasEvent, BatchKind, Jt808Version, SimTerminal, SimTerminalConfig, TerminalError,
};
pub use movement::{Fix, MovementConfig};
pub use receiver::{FailureMode, PushReceiver, PushRecord, ReceiverConfig};
pub use report::Report;
pub use stats::{Counters, Kind};
pub use tracker::{CommandReplyMode, SimTracker, SimTrackerConfig, TrackerError};
