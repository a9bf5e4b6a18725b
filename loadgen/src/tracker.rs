//! One simulated GT06 tracker over a real TCP connection: logs in, reports positions while
//! moving, sends heartbeats and alarms, and answers the server's online commands the way
//! firmware does. System tests drive it step by step (`login`, `send_alarm`, ...); the load
//! generator lets it run on its own with [`SimTracker::run_until`].
//!
//! The tracker reads only when it is waiting for something (an ack, a command, the next
//! timer), like a single-threaded device firmware; frames that arrive meanwhile queue in
//! the socket. Anything the server sends is handled wherever it is read: a 0x80 command is
//! answered even while the tracker waits for a heartbeat ack.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iothub::codec::gt06::{self, DecodeError, Frame, Message, OnlineCommand, MAX_FRAME_LEN};
use iothub::codec::CrcPolicy;
use iothub::event::jimi_time;
use iothub::imei::Imei;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, MissedTickBehavior};

use crate::awaiting::{sleep_until_opt, tick, Awaiting};
use crate::dial::{dial, DialError};
use crate::frames::{self, proto};
use crate::movement::{Fix, MovementConfig, Mover};
use crate::stats::{Counters, Kind, SentLog};

/// Bytes buffered from the server before the tracker gives up on the stream: a few frames'
/// worth. The decoder refuses anything longer than one frame, so this only guards against a
/// decoder that keeps asking for more.
const MAX_BUFFERED: usize = 4 * MAX_FRAME_LEN;

/// Commands kept for [`SimTracker::commands`]; older ones are forgotten.
const MAX_REMEMBERED_COMMANDS: usize = 64;

/// What the tracker answers to a 0x80 online command (in a 0x21 reply).
#[derive(Clone, Default)]
pub enum CommandReplyMode {
    /// `OK! <command>`, like the firmware of the trackers the Jimi guide describes.
    #[default]
    Firmware,
    /// Always this text.
    Fixed(String),
    /// Never answer (to test the server's command timeout).
    Silent,
    /// Computed from the command text.
    With(Arc<dyn Fn(&str) -> String + Send + Sync>),
}

impl fmt::Debug for CommandReplyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandReplyMode::Firmware => f.write_str("Firmware"),
            CommandReplyMode::Fixed(s) => f.debug_tuple("Fixed").field(s).finish(),
            CommandReplyMode::Silent => f.write_str("Silent"),
            CommandReplyMode::With(_) => f.write_str("With(..)"),
        }
    }
}

impl CommandReplyMode {
    /// The reply text for `command`, or `None` when the tracker stays silent.
    pub fn reply_to(&self, command: &str) -> Option<String> {
        match self {
            CommandReplyMode::Firmware => Some(format!("OK! {command}")),
            CommandReplyMode::Fixed(s) => Some(s.clone()),
            CommandReplyMode::Silent => None,
            CommandReplyMode::With(f) => Some(f(command)),
        }
    }
}

/// How a simulated tracker behaves.
#[derive(Debug, Clone)]
pub struct SimTrackerConfig {
    pub imei: Imei,
    /// Local address to bind before connecting, to spread many connections over 127.x.y.z.
    pub source_ip: Option<IpAddr>,
    /// Model code sent in the login (0x100F in the GT06 reference example).
    pub type_id: u16,
    /// Time zone sent in the login, minutes east of UTC.
    pub timezone_minutes: i16,
    /// Heartbeat period in [`SimTracker::run_until`]; zero = none.
    pub heartbeat_every: Duration,
    /// GPS report period in [`SimTracker::run_until`]; zero = none.
    pub gps_every: Duration,
    /// Fixes per GPS report in [`SimTracker::run_until`], written back to back in one write,
    /// as a tracker does that buffers its fixes (no coverage, or an upload-interval setting)
    /// and uploads them together. 1 = one fix per report.
    pub gps_batch: u32,
    /// Alarm period in [`SimTracker::run_until`]; zero = none.
    pub alarm_every: Duration,
    /// Alarm byte of the periodic alarms (1 = SOS).
    pub alarm_code: u8,
    /// How long to wait for an acknowledgement (devices wait 5 s).
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    pub command_reply: CommandReplyMode,
    pub movement: MovementConfig,
    /// Seed of the movement model and timer jitter; derived from the IMEI by [`Self::new`].
    pub seed: u64,
    /// Where counts go; share one among trackers to aggregate a whole run.
    pub counters: Arc<Counters>,
    /// When set, every GPS fix sent is recorded with its send time (push latency).
    pub sent_log: Option<Arc<SentLog>>,
}

impl SimTrackerConfig {
    /// Defaults of a VL03-like tracker: GMT+8, GPS every 10 s, heartbeat every 60 s.
    pub fn new(imei: Imei) -> SimTrackerConfig {
        let seed = imei.as_str().parse::<u64>().unwrap_or(0);
        SimTrackerConfig {
            imei,
            source_ip: None,
            type_id: 0x100F,
            timezone_minutes: 480,
            heartbeat_every: Duration::from_secs(60),
            gps_every: Duration::from_secs(10),
            gps_batch: 1,
            alarm_every: Duration::ZERO,
            alarm_code: 1,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            command_reply: CommandReplyMode::Firmware,
            movement: MovementConfig::default(),
            seed,
            counters: Arc::new(Counters::new()),
            sent_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("undecodable frame from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("server sent {0} bytes without a complete frame")]
    Garbage(usize),
    #[error("no {kind} acknowledgement for serial {serial} within {timeout:?}")]
    AckTimeout {
        kind: &'static str,
        serial: u16,
        timeout: Duration,
    },
    #[error("no {0} from the server within the timeout")]
    Timeout(&'static str),
}

pub type Result<T> = std::result::Result<T, TrackerError>;

/// What reading one frame from the server amounted to.
#[derive(Debug, Clone, PartialEq)]
enum Inbound {
    Ack { protocol: u8, serial: Option<u16> },
    Command(OnlineCommand),
    Time(DateTime<Utc>),
    Other,
}

/// An uplink awaiting its acknowledgement: protocol number and serial.
#[derive(Debug, Clone, Copy)]
struct Pending {
    protocol: u8,
    serial: u16,
}

/// A connected simulated tracker.
pub struct SimTracker {
    config: SimTrackerConfig,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    local_addr: SocketAddr,
    buf: Vec<u8>,
    /// Serial of the next frame; the device counts from 1 after boot.
    next_serial: u16,
    mover: Mover,
    rng: SmallRng,
    pending: Awaiting<Pending>,
    commands: VecDeque<OnlineCommand>,
    logged_in: bool,
}

impl fmt::Debug for SimTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTracker")
            .field("imei", &self.config.imei)
            .field("local_addr", &self.local_addr)
            .field("logged_in", &self.logged_in)
            .finish()
    }
}

impl SimTracker {
    /// Opens the TCP connection (from `config.source_ip` when set). Does not log in.
    pub async fn connect(addr: SocketAddr, config: SimTrackerConfig) -> Result<SimTracker> {
        let counters = config.counters.clone();
        counters.connects_attempted.fetch_add(1, Ordering::Relaxed);
        let connected = Self::open(addr, &config).await;
        let stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                counters.connects_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        counters
            .connects_established
            .fetch_add(1, Ordering::Relaxed);
        let local_addr = stream.local_addr()?;
        // Frames are small and each one is a message: do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mover = Mover::new(config.movement.clone(), config.seed);
        let rng = SmallRng::seed_from_u64(config.seed ^ 0x5EED_0F71_AC00);
        Ok(SimTracker {
            config,
            reader,
            writer,
            local_addr,
            buf: Vec::with_capacity(256),
            next_serial: 1,
            mover,
            rng,
            pending: Awaiting::default(),
            commands: VecDeque::new(),
            logged_in: false,
        })
    }

    async fn open(addr: SocketAddr, config: &SimTrackerConfig) -> Result<tokio::net::TcpStream> {
        dial(addr, config.source_ip, config.connect_timeout)
            .await
            .map_err(|e| match e {
                DialError::Io(source) => TrackerError::Connect { addr, source },
                DialError::TimedOut => TrackerError::ConnectTimeout(addr),
            })
    }

    /// Connects and logs in.
    pub async fn connect_and_login(
        addr: SocketAddr,
        config: SimTrackerConfig,
    ) -> Result<SimTracker> {
        let mut tracker = SimTracker::connect(addr, config).await?;
        tracker.login().await?;
        Ok(tracker)
    }

    pub fn imei(&self) -> Imei {
        self.config.imei
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.config.counters
    }

    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// Online commands received so far (the latest 64), oldest first.
    pub fn commands(&self) -> impl Iterator<Item = &OnlineCommand> {
        self.commands.iter()
    }

    /// Serial the next frame will carry.
    pub fn next_serial(&self) -> u16 {
        self.next_serial
    }

    fn take_serial(&mut self) -> u16 {
        let serial = self.next_serial;
        // Wraps to 1: serial 0 is what servers use for their own frames.
        self.next_serial = serial.checked_add(1).unwrap_or(1);
        serial
    }

    /// The next fix of the movement model, at the current time.
    pub fn next_fix(&mut self) -> Fix {
        self.mover.fix_at(Utc::now())
    }

    /// Sends 0x01 login and waits for its acknowledgement.
    pub async fn login(&mut self) -> Result<()> {
        let serial = self.take_serial();
        let bytes = frames::login(
            self.config.imei,
            self.config.type_id,
            self.config.timezone_minutes,
            serial,
        );
        self.write(Kind::Login, &bytes).await?;
        self.await_ack(proto::LOGIN, serial).await?;
        if !self.logged_in {
            self.logged_in = true;
            self.config.counters.online.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends a 0x13 heartbeat and waits for its acknowledgement.
    pub async fn send_heartbeat(&mut self) -> Result<()> {
        let serial = self.take_serial();
        self.write(Kind::Heartbeat, &frames::heartbeat(serial))
            .await?;
        self.await_ack(proto::HEARTBEAT, serial).await
    }

    /// Sends a 0x22 GPS report (no acknowledgement expected) and returns its serial.
    pub async fn send_gps(&mut self, fix: Fix) -> Result<u16> {
        let serial = self.take_serial();
        self.write(Kind::Gps, &frames::gps(&fix, serial)).await?;
        self.log_sent(&fix);
        Ok(serial)
    }

    /// Sends one 0x22 report per fix, all in one write (a buffered upload); returns the
    /// serial of the first.
    pub async fn send_gps_batch(&mut self, fixes: &[Fix]) -> Result<u16> {
        let first = self.next_serial;
        let mut bytes = Vec::with_capacity(fixes.len() * 40);
        for fix in fixes {
            let serial = self.take_serial();
            bytes.extend_from_slice(&frames::gps(fix, serial));
        }
        self.writer.write_all(&bytes).await?;
        let counters = &self.config.counters;
        for fix in fixes {
            counters.add_sent(Kind::Gps);
            self.log_sent(fix);
        }
        counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(first)
    }

    fn log_sent(&self, fix: &Fix) {
        if let Some(log) = &self.config.sent_log {
            log.record(
                (self.config.imei.as_str().to_owned(), jimi_time(fix.time)),
                Instant::now().into_std(),
            );
        }
    }

    /// The fixes of one buffered upload: `n` of them, a second apart, the last one now.
    fn buffered_fixes(&mut self, n: u32) -> Vec<Fix> {
        let now = Utc::now();
        (0..n)
            .map(|i| {
                self.mover
                    .fix_at(now - chrono::Duration::seconds(i64::from(n - 1 - i)))
            })
            .collect()
    }

    /// Sends a 0x26 alarm with alarm byte `code` and waits for its acknowledgement.
    pub async fn send_alarm(&mut self, code: u8, fix: Fix) -> Result<()> {
        let serial = self.take_serial();
        self.write(Kind::Alarm, &frames::alarm(code, &fix, serial))
            .await?;
        self.await_ack(proto::ALARM, serial).await
    }

    /// Sends a 0x8A time request and returns the server's time.
    pub async fn request_time(&mut self) -> Result<DateTime<Utc>> {
        let serial = self.take_serial();
        self.write(Kind::TimeRequest, &frames::time_request(serial))
            .await?;
        let deadline = Instant::now() + self.config.ack_timeout;
        loop {
            match self.read_and_handle(deadline).await? {
                Some(Inbound::Time(t)) => return Ok(t),
                Some(_) => continue,
                None => return Err(TrackerError::Timeout("0x8A time reply")),
            }
        }
    }

    /// Writes arbitrary bytes (a hand-made frame, garbage, half a frame) to the server.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).await?;
        self.config
            .counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Waits up to `timeout` for the server's next online command; it has been answered
    /// (per [`CommandReplyMode`]) when this returns.
    pub async fn next_command(&mut self, timeout: Duration) -> Result<Option<OnlineCommand>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_and_handle(deadline).await? {
                Some(Inbound::Command(cmd)) => return Ok(Some(cmd)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Behaves like a device until `deadline`: heartbeats and GPS reports (and alarms when
    /// configured) on their periods, first ones at a random offset so that many trackers do
    /// not fire together; answers commands; counts missing acks. Returns at `deadline`, or
    /// with the error that ended the connection.
    pub async fn run_until(&mut self, deadline: Instant) -> Result<()> {
        let mut heartbeat = self.ticker(self.config.heartbeat_every);
        let mut gps = self.ticker(self.config.gps_every);
        let mut alarm = self.ticker(self.config.alarm_every);
        loop {
            let next_expiry = self.pending.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = tick(&mut heartbeat) => {
                    let serial = self.take_serial();
                    self.write(Kind::Heartbeat, &frames::heartbeat(serial)).await?;
                    self.expect_ack(proto::HEARTBEAT, serial);
                }
                _ = tick(&mut gps) => {
                    if self.config.gps_batch > 1 {
                        let fixes = self.buffered_fixes(self.config.gps_batch);
                        self.send_gps_batch(&fixes).await?;
                    } else {
                        let fix = self.next_fix();
                        self.send_gps(fix).await?;
                    }
                }
                _ = tick(&mut alarm) => {
                    let fix = self.next_fix();
                    let serial = self.take_serial();
                    let code = self.config.alarm_code;
                    self.write(Kind::Alarm, &frames::alarm(code, &fix, serial)).await?;
                    self.expect_ack(proto::ALARM, serial);
                }
                _ = sleep_until_opt(next_expiry) => self.expire_pending(),
                read = self.reader.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        return Err(TrackerError::Closed);
                    }
                    while let Some(frame) = self.decode_buffered()? {
                        self.handle(frame).await?;
                    }
                }
            }
        }
    }

    /// Closes the connection (FIN), as a device that powers off cleanly.
    pub async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }

    fn ticker(&mut self, period: Duration) -> Option<tokio::time::Interval> {
        if period.is_zero() {
            return None;
        }
        let offset = self.rng.random_range(0..period.as_millis().max(1) as u64);
        let mut interval =
            tokio::time::interval_at(Instant::now() + Duration::from_millis(offset), period);
        // After a stall, carry on at the period instead of bursting the missed reports.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(interval)
    }

    async fn write(&mut self, kind: Kind, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).await?;
        let counters = &self.config.counters;
        counters.add_sent(kind);
        counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn expect_ack(&mut self, protocol: u8, serial: u16) {
        let deadline = Instant::now() + self.config.ack_timeout;
        self.pending.push(
            Pending { protocol, serial },
            deadline,
            &self.config.counters,
        );
    }

    fn expire_pending(&mut self) {
        self.pending.expire(Instant::now(), &self.config.counters);
    }

    async fn await_ack(&mut self, protocol: u8, serial: u16) -> Result<()> {
        let deadline = Instant::now() + self.config.ack_timeout;
        loop {
            match self.read_and_handle(deadline).await? {
                Some(Inbound::Ack {
                    protocol: p,
                    serial: s,
                }) if p == protocol && s == Some(serial) => return Ok(()),
                Some(_) => continue,
                None => {
                    self.config
                        .counters
                        .ack_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(TrackerError::AckTimeout {
                        kind: Kind::from_protocol(protocol).map_or("unknown", Kind::name),
                        serial,
                        timeout: self.config.ack_timeout,
                    });
                }
            }
        }
    }

    /// Reads and handles one frame; `None` when `deadline` passes first.
    async fn read_and_handle(&mut self, deadline: Instant) -> Result<Option<Inbound>> {
        let frame = match tokio::time::timeout_at(deadline, self.next_frame()).await {
            Ok(frame) => frame?,
            Err(_) => return Ok(None),
        };
        self.handle(frame).await.map(Some)
    }

    /// Next frame from the server. Cancel-safe: bytes read stay in the buffer.
    async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.decode_buffered()? {
                return Ok(frame);
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err(TrackerError::Closed);
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<Frame>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match gt06::decode(&self.buf, CrcPolicy::Reject) {
            Ok(Some(decoded)) => {
                let consumed = decoded.consumed.min(self.buf.len());
                self.buf.drain(..consumed);
                Ok(Some(decoded.frame))
            }
            Ok(None) if self.buf.len() > MAX_BUFFERED => {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(TrackerError::Garbage(self.buf.len()))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<Inbound> {
        let counters = self.config.counters.clone();
        match frame.message {
            Message::Ack => {
                if let Some(kind) = Kind::from_protocol(frame.protocol) {
                    counters.add_acked(kind);
                }
                if let Some(serial) = frame.serial {
                    self.pending
                        .forget(|p| p.protocol == frame.protocol && p.serial == serial);
                }
                Ok(Inbound::Ack {
                    protocol: frame.protocol,
                    serial: frame.serial,
                })
            }
            Message::OnlineCommand(cmd) => {
                counters.commands_received.fetch_add(1, Ordering::Relaxed);
                if let Some(text) = self.config.command_reply.reply_to(&cmd.command) {
                    let serial = self.take_serial();
                    let bytes = frames::command_reply(cmd.server_flag, &text, serial);
                    self.write(Kind::CommandReply, &bytes).await?;
                    counters.commands_answered.fetch_add(1, Ordering::Relaxed);
                }
                if self.commands.len() >= MAX_REMEMBERED_COMMANDS {
                    self.commands.pop_front();
                }
                self.commands.push_back(cmd.clone());
                Ok(Inbound::Command(cmd))
            }
            Message::TimeReply(time) => {
                counters.time_replies.fetch_add(1, Ordering::Relaxed);
                counters.add_acked(Kind::TimeRequest);
                self.pending.forget(|p| p.protocol == proto::TIME);
                Ok(Inbound::Time(time))
            }
            _ => {
                counters.unexpected_frames.fetch_add(1, Ordering::Relaxed);
                Ok(Inbound::Other)
            }
        }
    }
}

impl Drop for SimTracker {
    fn drop(&mut self) {
        if self.logged_in {
            self.config.counters.online.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_reply_echoes_the_command() {
        assert_eq!(
            CommandReplyMode::Firmware.reply_to("STATUS#"),
            Some("OK! STATUS#".to_owned())
        );
    }

    #[test]
    fn silent_mode_does_not_reply() {
        assert_eq!(CommandReplyMode::Silent.reply_to("STATUS#"), None);
    }

    #[test]
    fn custom_reply_sees_the_command() {
        let mode = CommandReplyMode::With(Arc::new(|c: &str| c.to_lowercase()));
        assert_eq!(mode.reply_to("DYD,000000#"), Some("dyd,000000#".to_owned()));
    }
}
