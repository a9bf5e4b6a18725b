//! # iothub: what the hub knows
//!
//! Pure protocol and domain code of iothub. Nothing here opens a socket, spawns a task or
//! reads a clock: callers pass bytes and the current time in, and get frames, events and
//! actions out. That keeps every protocol rule testable with hex vectors and no runtime.
//!
//! # Layout
//! - [`codec`]: bytes <-> frames for each device protocol (`codec::gt06`, ...).
//! - [`channel`]: one state machine per connection and protocol; `(state, input) -> Vec<Action>`.
//! - [`event`]: what devices tell us, shaped as the Jimi push records customers already parse.
//! - [`command`]: instructions from the customer API, their `_code` answers.
//! - [`imei`]: the device identity every registry entry, push and stream key uses.
//! - [`protocol`]: the table the generic connection driver reads: codec + channel per protocol.
#![forbid(unsafe_code)]

pub mod channel;
pub mod codec;
pub mod command;
pub mod event;
pub mod imei;
pub mod media;
pub mod protocol;
