//! # iothub-actors: what the hub does
//!
//! Every actor and all I/O of iothub, on ractor and tokio. The protocol rules live in the
//! pure `iothub` crate; this crate moves bytes, persists events and talks to customers.
//!
//! # Layout
//! - [`root`]: the root supervisor that starts everything in order and stops it in reverse.
//! - [`gateway`]: TCP listener per device protocol, one `DeviceSession` actor per connection
//!   with a reader task and a bounded writer task.
//! - [`registry`]: IMEI -> owning session; newest connection wins, stale deletes are ignored.
//! - [`publish`]: the Publisher: events -> embedded durable log or Kafka, through a bounded queue.
//! - [`push`]: the PushDispatcher: log/Kafka -> the customer's `pushURL`, at least once.
//! - [`auth_codes`]: JT/T 808 authentication codes issued at registration, kept durably.
//! - [`offline`]: instructions queued for offline devices, delivered at their next login.
//! - [`api`]: the instruction API (`POST /api/device/sendInstruct`), health and readiness.
//! - [`health`]: the parts of the node `/ready` reports on (storage, sink, supervised tasks).
//! - [`supervise`]: restarts of the long-running tasks and threads after a panic.
//! - [`config`]: the TOML file and the Jimi environment variables.
//! - [`open_files`]: the open-file limit raised at start and checked against the connection budget.
//! - [`telemetry`]: Prometheus metrics and logging set-up.
//! - [`http_server`]: the server under every HTTP listener, with its timeouts and connection cap.

pub mod api;
pub mod auth_codes;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod health;
pub mod http_server;
pub mod media;
pub mod offline;
pub mod open_files;
pub mod publish;
pub mod push;
pub mod registry;
pub mod root;
pub mod storage;
pub mod supervise;
pub mod telemetry;
pub mod tls;
