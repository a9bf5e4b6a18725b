//! A device session whose handler panics: ractor skips its `post_stop`, and its reader task
//! must still die with it rather than go on acknowledging the device with no session. The
//! real session over real TCP, on a protocol whose channel panics on a tick.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iothub::channel::gt06::Gt06Channel;
use iothub::channel::{Action, Channel};
use iothub::codec::CrcPolicy;
use iothub::command::{Instruction, InstructionRefusal};
use iothub::imei::Imei;
use iothub::protocol::{Cut, DecodeFailure, Gt06Protocol, Protocol};
use iothub_actors::auth_codes::AuthCodes;
use iothub_actors::config::Config;
use iothub_actors::gateway::registrations::RegistrationLimiter;
use iothub_actors::gateway::session::{DeviceSession, SessionArgs, SessionDeps, SessionMsg};
use iothub_actors::offline::OfflineCommands;
use iothub_actors::publish::Publisher;
use iothub_actors::registry::{Registry, RegistryActor};
use iothub_actors::storage::Storage;
use ractor::Actor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GT06 login (IMEI 0864717003283581) and heartbeat frames of the reference.
const LOGIN: &str = "78780d01086471700328358100093f040d0a";
const HEARTBEAT: &str = "78780a13440604000201baaf540d0a";

fn gt06() -> Gt06Protocol {
    Gt06Protocol::new(
        CrcPolicy::Reject,
        Duration::from_secs(180),
        Duration::from_secs(60),
    )
}

fn bytes(frame: &str) -> Vec<u8> {
    hex::decode(frame).unwrap()
}

/// GT06 whose channel panics on a tick, which only the session handles: a panic in
/// `DeviceSession::handle` with the reader alive and well.
struct TickPanics(Gt06Protocol);

struct TickPanicsChannel(Gt06Channel);

impl Protocol for TickPanics {
    type Frame = iothub::codec::gt06::Frame;
    type Channel = TickPanicsChannel;

    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn decode(&self, buf: &[u8]) -> Result<Option<Cut<Self::Frame>>, DecodeFailure> {
        self.0.decode(buf)
    }
    fn frame_label(&self, frame: &Self::Frame) -> (&'static str, &'static str) {
        self.0.frame_label(frame)
    }
    fn new_channel(&self, now: DateTime<Utc>) -> TickPanicsChannel {
        TickPanicsChannel(self.0.new_channel(now))
    }
}

impl Channel for TickPanicsChannel {
    type Frame = iothub::codec::gt06::Frame;

    fn handle_frame(&mut self, frame: Self::Frame, now: DateTime<Utc>) -> Vec<Action> {
        self.0.handle_frame(frame, now)
    }
    fn handle_instruction(
        &mut self,
        instruction: &Instruction,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        self.0.handle_instruction(instruction, now)
    }
    fn instruction_expired(&mut self, server_flag_id: u32) {
        self.0.instruction_expired(server_flag_id)
    }
    fn handle_tick(&mut self, _now: DateTime<Utc>) -> Vec<Action> {
        panic!("test channel panics on a tick")
    }
    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.0.handle_close(now)
    }
    fn imei(&self) -> Option<Imei> {
        self.0.imei()
    }
}

/// What a session needs, on a fresh embedded store in `dir`.
async fn deps(dir: &std::path::Path) -> Arc<SessionDeps> {
    let toml = format!("[storage]\ndata_dir = {:?}\n", dir.display().to_string());
    let config = Config::from_toml_str(&toml, &|_| None).unwrap();
    let storage = Storage::open(&config.storage).unwrap();
    let publisher = Publisher::start(&config, storage.clone()).await.unwrap();
    let (registry, _) = Actor::spawn(None, RegistryActor, None).await.unwrap();
    Arc::new(SessionDeps {
        registry: Registry {
            actor: registry,
            cluster: None,
        },
        publisher,
        offline: OfflineCommands::open(storage.clone()),
        auth_codes: AuthCodes::open(storage),
        registrations: Arc::new(RegistrationLimiter::new(0)),
        write_timeout: Duration::from_secs(5),
        offline_reply_timeout: Duration::from_secs(5),
    })
}

/// Reads what the device gets within `wait`: `Some(bytes)`, or `None` for a closed
/// connection or silence.
async fn device_reads(device: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, device.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn a_session_that_panics_leaves_no_reader_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let deps = deps(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut device = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let (session, stopped) = Actor::spawn(
        None,
        DeviceSession::<TickPanics>::default(),
        SessionArgs {
            protocol: Arc::new(TickPanics(gt06())),
            stream,
            deps,
            connection_permit: None,
            peer,
        },
    )
    .await
    .unwrap();
    device.write_all(&bytes(LOGIN)).await.unwrap();
    assert!(
        device_reads(&mut device, Duration::from_secs(5))
            .await
            .is_some(),
        "login not acknowledged"
    );
    session.cast(SessionMsg::Tick).unwrap();
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the session did not stop")
        .unwrap();
    device.write_all(&bytes(HEARTBEAT)).await.unwrap();
    assert_eq!(
        device_reads(&mut device, Duration::from_secs(2)).await,
        None
    );
}
