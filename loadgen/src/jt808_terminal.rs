//! One simulated JT/T 808 terminal (a tracker or a dashcam) over a real TCP connection:
//! registers, authenticates, reports positions, batches and Su-biao ADAS alarms, and answers
//! the platform's queries and commands the way terminal firmware does. It is the JT/T 808
//! counterpart of [`crate::tracker`]: system tests drive it step by step (`register`,
//! `send_location`, `next_downlink`, ...), the load generator lets it run on its own with
//! [`SimTerminal::run_until`].
//!
//! Every frame is built and read with `iothub::codec::jt808`, so the simulator speaks exactly
//! what the codec under test defines. Like the tracker it reads only while it waits for
//! something, and whatever the platform sent is answered wherever it is read. Every platform
//! message is also kept, with its wire bytes, in a bounded queue
//! ([`SimTerminal::next_downlink`]) so a test can check exactly what the hub sent.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iothub::codec::jt808::{
    self, decode_body, encode_split, imei_to_phone, phone_to_imei, AdasAlarm, AlarmFlags,
    AlarmLabel, Attributes, Auth, AvAttributes, AvResource, BasicLocation, BatchLocation, BcdTime,
    DecodeError, EncodeError, GeneralResponse, Header, Limits, Location, LocationItem, Message,
    Packet, Param, ParamValue, ParamsReply, Phone, PlaybackRequest, Reassembler, Register,
    RegisterLayout, RegisterResponse, ResendRequest, ResourceList, ResourceQuery, SafetyCommon,
    StatusFlags, MAX_BODY_LEN, MAX_FRAME_LEN, MAX_GARBAGE,
};
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
use crate::media::{LiveMedia, LiveStream, PlaybackStream};
use crate::movement::{Fix, MovementConfig, Mover};
use crate::stats::{Counters, Kind, SentLog};

/// Bytes buffered from the platform before the terminal gives up on the stream. The frame
/// cutter refuses more garbage than `MAX_GARBAGE` and frames longer than `MAX_FRAME_LEN`,
/// so a healthy stream never needs more.
const MAX_BUFFERED: usize = MAX_GARBAGE + MAX_FRAME_LEN;

/// The protocol-version byte of a 2019 header: 1 for the first 2019 revision, what the
/// reference peers write.
pub const VERSION_2019: u8 = 1;

/// Parameters a terminal holds: the 0x0104 count field is one byte.
pub const MAX_PARAMS: usize = 255;

/// Bytes per second of recording the simulated dashcam claims in its resource lists
/// (about 512 kbit/s, a D1 main stream).
const RECORDING_BYTES_PER_S: i64 = 64_000;

/// When a resource query has no start time, the recording listed starts this long before
/// now.
const DEFAULT_RECORDING_S: i64 = 600;

/// Su-biao vehicle status (T/JSATL12-2017): bit 0 ACC on, bit 10 positioned.
const VEHICLE_STATUS_ACC_ON: u16 = 1 << 0;
const VEHICLE_STATUS_POSITIONED: u16 = 1 << 10;

/// Message ids of the platform's answers to terminal messages, never answered in turn:
/// 0x8001 general, 0x8004 server time (2019), 0x8100 registration, 0x8800 multimedia
/// upload, 0x9212 Su-biao attachment result.
const PLATFORM_ANSWERS: [u16; 5] = [0x8001, 0x8004, 0x8100, 0x8800, 0x9212];

/// Which header and body layouts the terminal speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jt808Version {
    /// 12-byte header with a BCD\[6\] phone; 2013 register and auth bodies.
    #[default]
    V2013,
    /// 17-byte header with the version byte and a BCD\[10\] phone; 2019 bodies.
    V2019,
}

impl Jt808Version {
    pub fn is_2019(self) -> bool {
        self == Jt808Version::V2019
    }
}

/// The 0x0704 type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// 0: positions collected and sent together.
    Normal,
    /// 1: positions the terminal could not send while out of coverage (blind area).
    BlindArea,
}

impl BatchKind {
    pub fn code(self) -> u8 {
        match self {
            BatchKind::Normal => 0,
            BatchKind::BlindArea => 1,
        }
    }
}

/// One ADAS event for [`SimTerminal::send_adas_alarm`]: what the camera saw. The terminal
/// adds the alarm id, position, time and the Su-biao alarm label itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdasEvent {
    /// 1 forward collision, 2 lane departure, 3 headway, 4 pedestrian, 5 lane change,
    /// 6 road sign over limit, 7 obstacle, 8 ADAS failure, 0x10 road sign, 0x11 capture.
    pub kind: u8,
    /// 1 or 2.
    pub level: u8,
    /// 0 n/a, 1 start, 2 end.
    pub flag: u8,
    pub front_speed_kmh: u8,
    /// 100 ms units.
    pub front_distance: u8,
    /// 1 left, 2 right.
    pub departure: u8,
    pub road_sign_type: u8,
    pub road_sign_value: u8,
    /// Pictures and clips the terminal holds for this alarm (the platform fetches them with
    /// 0x9208 when non-zero).
    pub attachments: u8,
}

impl AdasEvent {
    /// An event of `kind` at `level` with flag "n/a" and no attachments.
    pub fn new(kind: u8, level: u8) -> AdasEvent {
        AdasEvent {
            kind,
            level,
            flag: 0,
            front_speed_kmh: 0,
            front_distance: 0,
            departure: 0,
            road_sign_type: 0,
            road_sign_value: 0,
            attachments: 0,
        }
    }
}

/// How a simulated terminal behaves.
#[derive(Debug, Clone)]
pub struct SimTerminalConfig {
    pub imei: Imei,
    pub version: Jt808Version,
    /// Derive the header phone under Jimi's `newImeiRule` (the first 14 IMEI digits as a
    /// 48-bit number in the 6 phone bytes), or write the IMEI as BCD digits. Must match the
    /// hub's setting for the hub to see this IMEI.
    pub new_imei_rule: bool,
    /// Local address to bind before connecting, to spread many connections over 127.x.y.z.
    pub source_ip: Option<IpAddr>,
    /// 0x0100 fields. Province and city are the GB/T 2260 code halves.
    pub province: u16,
    pub city: u16,
    /// 5 bytes at most in 2013, 11 in 2019.
    pub manufacturer: String,
    /// 20 bytes at most in 2013, 30 in 2019.
    pub model: String,
    /// 7 bytes at most in 2013, 30 in 2019; the last 7 IMEI digits by default.
    pub terminal_id: String,
    /// 0 no plate (then `plate` is the VIN), 1 blue, 2 yellow, 3 black, 4 white, 9 other.
    pub plate_color: u8,
    pub plate: String,
    /// A code kept from an earlier registration: [`SimTerminal::connect_and_login`] then
    /// authenticates at once, as a terminal does after a reconnect.
    pub auth_code: Option<String>,
    /// Sent in the 2019 0x0102 and as firmware version in 0x0107.
    pub software_version: String,
    /// 0x0107 fields.
    pub hardware_version: String,
    /// SIM ICCID, 20 digits.
    pub iccid: String,
    /// 0x0107 terminal type bits (bit0 passenger, bit2 freight, bit6 has recorder...).
    pub terminal_type: u16,
    /// Video channels reported in 0x1003.
    pub video_channels: u8,
    /// The parameter set reported in 0x0104 and changed by 0x8103. Server address (0x0013)
    /// and, in 2013, TCP port (0x0018) are added at connect time from the address dialled
    /// when missing.
    pub params: Vec<Param>,
    /// Answer platform messages as firmware does (0x0104, 0x0201, 0x1205, 0x0001...). Off:
    /// they are only queued for [`SimTerminal::next_downlink`].
    pub auto_answer: bool,
    /// The 0x1206 result reported right after answering a 0x9206 file upload command (the
    /// simulator transfers nothing); `None` never reports, as an upload that hangs.
    pub file_upload_result: Option<u8>,
    /// Wireless signal strength sent in item 0x30.
    pub signal: u8,
    /// Heartbeat period in [`SimTerminal::run_until`]; zero = none. Parameter 0x0001 from
    /// the platform changes it.
    pub heartbeat_every: Duration,
    /// Location report period in [`SimTerminal::run_until`]; zero = none. Parameter 0x0029
    /// from the platform changes it.
    pub location_every: Duration,
    /// Period of alarm reports in [`SimTerminal::run_until`]: a 0x0200 whose alarm word is
    /// `alarm_word`, counted as [`Kind::Alarm`]; zero = none.
    pub alarm_every: Duration,
    /// Alarm word of the periodic alarm reports (bit 0 = emergency).
    pub alarm_word: u32,
    /// Told about every live audio/video request (0x9101) and control (0x9102), playback
    /// request (0x9201) and control (0x9202) the terminal accepts; `None`: nothing streams
    /// (see [`crate::media`]).
    pub live_media: Option<Arc<dyn LiveMedia>>,
    /// How long to wait for a 0x8001/0x8100 answer.
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long one frame may take to be written before the socket counts as stuck.
    pub write_timeout: Duration,
    /// Platform messages kept for [`SimTerminal::next_downlink`]; the oldest goes first.
    pub downlink_capacity: usize,
    pub movement: MovementConfig,
    /// Seed of the movement model and timer jitter; derived from the IMEI by [`Self::new`].
    pub seed: u64,
    /// Where counts go; share one among terminals to aggregate a whole run.
    pub counters: Arc<Counters>,
    /// When set, every fix sent in 0x0200 or 0x0704 is recorded with its send time.
    pub sent_log: Option<Arc<SentLog>>,
}

impl SimTerminalConfig {
    /// Defaults of a Shenzhen-registered 4G dashcam: phone under `newImeiRule` (the hub's
    /// default), heartbeat every 30 s, location every 10 s.
    pub fn new(imei: Imei, version: Jt808Version) -> SimTerminalConfig {
        let seed = imei.as_str().parse::<u64>().unwrap_or(0);
        let heartbeat_every = Duration::from_secs(30);
        let location_every = Duration::from_secs(10);
        let ack_timeout = Duration::from_secs(5);
        let province = 44;
        let city = 300;
        let plate_color = 1;
        let plate = "粤B12345".to_owned();
        let params = vec![
            dword(0x0001, heartbeat_every.as_secs()),
            dword(0x0002, ack_timeout.as_secs()),
            dword(0x0003, 3),
            // Report by time, every `location_every`.
            dword(0x0020, 0),
            dword(0x0029, location_every.as_secs()),
            dword(0x0055, 120),
            dword(0x0056, 10),
            Param {
                id: 0x0081,
                value: ParamValue::Word(province),
            },
            Param {
                id: 0x0082,
                value: ParamValue::Word(city),
            },
            Param {
                id: 0x0083,
                value: ParamValue::Text(plate.clone()),
            },
            Param {
                id: 0x0084,
                value: ParamValue::Byte(plate_color),
            },
        ];
        SimTerminalConfig {
            imei,
            version,
            new_imei_rule: true,
            source_ip: None,
            province,
            city,
            manufacturer: "SIMTR".to_owned(),
            model: "SIM-DVR-4G".to_owned(),
            terminal_id: last_digits(&imei),
            plate_color,
            plate,
            auth_code: None,
            software_version: "1.0.0".to_owned(),
            hardware_version: "HW1.0".to_owned(),
            iccid: "89860000000000000000".to_owned(),
            terminal_type: 0,
            video_channels: 4,
            params,
            auto_answer: true,
            file_upload_result: Some(0),
            signal: 25,
            heartbeat_every,
            location_every,
            alarm_every: Duration::ZERO,
            alarm_word: 1,
            live_media: None,
            ack_timeout,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            downlink_capacity: 64,
            movement: MovementConfig::default(),
            seed,
            counters: Arc::new(Counters::new()),
            sent_log: None,
        }
    }
}

fn dword(id: u32, value: u64) -> Param {
    Param {
        id,
        value: ParamValue::Dword(u32::try_from(value).unwrap_or(u32::MAX)),
    }
}

/// The last 7 IMEI digits, left-padded with `0`: the default terminal id, and the id in
/// every Su-biao alarm label.
fn last_digits(imei: &Imei) -> String {
    let s = imei.as_str();
    format!("{:0>7}", &s[s.len().saturating_sub(7)..])
}

/// The header phone through which the hub sees `imei`: [`imei_to_phone`] gives the digits
/// (hex nibbles under `newImeiRule`), written as 6 bytes in 2013 and 10 in 2019. `None`
/// when the IMEI has no such phone (a bad Luhn digit under the rule; more than 12 digits
/// in a 2013 header without it) or the phone would not map back to the same IMEI.
pub fn phone_for(imei: &Imei, new_imei_rule: bool, version: Jt808Version) -> Option<Phone> {
    let digits = imei_to_phone(imei, new_imei_rule)?;
    let wide = version.is_2019();
    let phone = if digits.bytes().all(|c| c.is_ascii_digit()) {
        Phone::from_digits(&digits, wide)?
    } else {
        // Hex nibbles (the rule's 48-bit number): 12 of them, i.e. 6 bytes.
        if digits.len() != 12 {
            return None;
        }
        let mut bytes = [0u8; 10];
        let at = if wide { 4 } else { 0 };
        for (i, slot) in bytes[at..at + 6].iter_mut().enumerate() {
            *slot = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Phone::from_bytes(&bytes[..at + 6])?
    };
    (phone_to_imei(&phone.digits(), new_imei_rule) == Some(*imei)).then_some(phone)
}

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("platform closed the connection")]
    Closed,
    #[error("undecodable frame from the platform: {0}")]
    Decode(#[from] DecodeError),
    #[error("platform sent {0} bytes without a complete frame")]
    Garbage(usize),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("IMEI {imei} has no {version:?} header phone (newImeiRule {new_imei_rule})")]
    NoPhone {
        imei: Imei,
        version: Jt808Version,
        new_imei_rule: bool,
    },
    #[error("fix time {0} cannot be written as a BCD time (years 2000..=2099)")]
    TimeOutOfRange(DateTime<Utc>),
    #[error("a 0x0704 batch needs at least one fix")]
    EmptyBatch,
    #[error("no auth code: register first or configure one")]
    NoAuthCode,
    #[error("registration refused with result {0} (1 vehicle registered, 2 vehicle unknown, 3 terminal registered, 4 terminal unknown)")]
    RegisterRefused(u8),
    #[error("platform answered 0x{msg_id:04x} serial {serial} with result {result} (1 failure, 2 message error, 3 not supported)")]
    Rejected {
        msg_id: u16,
        serial: u16,
        result: u8,
    },
    #[error("no answer to 0x{msg_id:04x} serial {serial} within {timeout:?}")]
    AckTimeout {
        msg_id: u16,
        serial: u16,
        timeout: Duration,
    },
    #[error("socket write did not finish within {0:?}")]
    WriteTimeout(Duration),
}

pub type Result<T> = std::result::Result<T, TerminalError>;

/// One message received from the platform.
#[derive(Debug, Clone, PartialEq)]
pub struct Downlink {
    /// For a subpackaged message, the first package's header without the package fields.
    pub header: Header,
    pub message: Message,
    /// The frame as received, flags and escapes included; for a subpackaged message every
    /// package's frame, in arrival order.
    pub raw: Vec<u8>,
}

/// What reading one frame from the platform amounted to.
#[derive(Debug, Clone, PartialEq)]
enum Inbound {
    Response(GeneralResponse),
    Registered(RegisterResponse),
    Other,
}

/// An uplink awaiting its 0x8001: message id, serial, and the kind it counts as.
#[derive(Debug, Clone, Copy)]
struct Pending {
    msg_id: u16,
    serial: u16,
    kind: Option<Kind>,
}

/// The frames of the last uplink that went out in packages, kept for a 0x8003 request.
#[derive(Debug, Clone)]
struct SplitUplink {
    first_serial: u16,
    frames: Vec<Vec<u8>>,
}

/// Wire bytes of a downlink message still being reassembled, keyed like the reassembler
/// groups packages: (message id, total).
struct PartialRaw {
    msg_id: u16,
    total: u16,
    raw: Vec<u8>,
}

/// What a platform message is answered with.
enum Reply {
    General(u8),
    Message(u16, Message),
    /// 0x0001 first, then a message of its own (0x9206: accepted, then 0x1206).
    GeneralThen(u8, u16, Message),
    Resend(Vec<Vec<u8>>),
}

/// A connected simulated terminal.
pub struct SimTerminal {
    config: SimTerminalConfig,
    phone: Phone,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    local_addr: SocketAddr,
    buf: Vec<u8>,
    /// Serial of the next frame; JT/T 808 counts from 0 and wraps.
    next_serial: u16,
    mover: Mover,
    rng: SmallRng,
    pending: Awaiting<Pending>,
    downlinks: VecDeque<Downlink>,
    downlinks_dropped: u64,
    reassembler: Reassembler,
    partial_raw: Vec<PartialRaw>,
    last_split: Option<SplitUplink>,
    auth_code: Option<String>,
    authenticated: bool,
    /// Su-biao alarm id: one cyclic counter over every alarm type.
    next_alarm_id: u32,
    /// Time and sequence of the last alarm label: the sequence counts alarms of one second.
    last_label: Option<(BcdTime, u8)>,
    /// Set when 0x8103 changed the heartbeat or report period; the run loop re-arms.
    timers_changed: bool,
}

impl fmt::Debug for SimTerminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTerminal")
            .field("imei", &self.config.imei)
            .field("phone", &self.phone)
            .field("version", &self.config.version)
            .field("local_addr", &self.local_addr)
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

impl SimTerminal {
    /// Opens the TCP connection (from `config.source_ip` when set). Neither registers nor
    /// authenticates.
    pub async fn connect(addr: SocketAddr, mut config: SimTerminalConfig) -> Result<SimTerminal> {
        let phone = phone_for(&config.imei, config.new_imei_rule, config.version).ok_or(
            TerminalError::NoPhone {
                imei: config.imei,
                version: config.version,
                new_imei_rule: config.new_imei_rule,
            },
        )?;
        let counters = config.counters.clone();
        counters.connects_attempted.fetch_add(1, Ordering::Relaxed);
        let stream = match open(addr, &config).await {
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
        add_server_params(&mut config.params, addr, config.version);
        let mover = Mover::new(config.movement.clone(), config.seed);
        let rng = SmallRng::seed_from_u64(config.seed ^ 0x5EED_0808_7E7E);
        let auth_code = config.auth_code.clone();
        Ok(SimTerminal {
            config,
            phone,
            reader,
            writer,
            local_addr,
            buf: Vec::with_capacity(512),
            next_serial: 0,
            mover,
            rng,
            pending: Awaiting::default(),
            downlinks: VecDeque::new(),
            downlinks_dropped: 0,
            reassembler: Reassembler::new(reassembly_limits()),
            partial_raw: Vec::new(),
            last_split: None,
            auth_code,
            authenticated: false,
            next_alarm_id: 0,
            last_label: None,
            timers_changed: false,
        })
    }

    /// Connects, registers unless the config carries an auth code, and authenticates.
    pub async fn connect_and_login(
        addr: SocketAddr,
        config: SimTerminalConfig,
    ) -> Result<SimTerminal> {
        let mut terminal = SimTerminal::connect(addr, config).await?;
        if terminal.auth_code.is_none() {
            terminal.register().await?;
        }
        terminal.authenticate().await?;
        Ok(terminal)
    }

    pub fn imei(&self) -> Imei {
        self.config.imei
    }

    /// The phone every header carries.
    pub fn phone(&self) -> Phone {
        self.phone
    }

    pub fn version(&self) -> Jt808Version {
        self.config.version
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.config.counters
    }

    /// The auth code from the last 0x8100 (or the configured one).
    pub fn auth_code(&self) -> Option<&str> {
        self.auth_code.as_deref()
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The parameter set as 0x0104 reports it.
    pub fn params(&self) -> &[Param] {
        &self.config.params
    }

    /// Serial the next frame will carry.
    pub fn next_serial(&self) -> u16 {
        self.next_serial
    }

    /// Platform messages forgotten because the downlink queue was full.
    pub fn downlinks_dropped(&self) -> u64 {
        self.downlinks_dropped
    }

    /// The next fix of the movement model, at the current time.
    pub fn next_fix(&mut self) -> Fix {
        self.mover.fix_at(Utc::now())
    }

    /// Sends 0x0100 in the layout of the configured version and waits for the 0x8100
    /// answering it; keeps and returns the auth code.
    pub async fn register(&mut self) -> Result<String> {
        let c = &self.config;
        let register = Register {
            layout: if c.version.is_2019() {
                RegisterLayout::V2019
            } else {
                RegisterLayout::V2013
            },
            province: c.province,
            city: c.city,
            manufacturer: c.manufacturer.clone(),
            model: c.model.clone(),
            terminal_id: c.terminal_id.clone(),
            plate_color: c.plate_color,
            plate: c.plate.clone(),
        };
        let serial = self
            .send_message(0x0100, &Message::Register(register), None)
            .await?;
        let deadline = Instant::now() + self.config.ack_timeout;
        loop {
            match self.read_and_handle(deadline).await? {
                Some(Inbound::Registered(r)) if r.reply_serial == serial => {
                    if r.result != 0 {
                        self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return Err(TerminalError::RegisterRefused(r.result));
                    }
                    let code = r.auth_code.unwrap_or_default();
                    self.auth_code = Some(code.clone());
                    return Ok(code);
                }
                Some(_) => continue,
                None => {
                    self.config
                        .counters
                        .ack_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(TerminalError::AckTimeout {
                        msg_id: 0x0100,
                        serial,
                        timeout: self.config.ack_timeout,
                    });
                }
            }
        }
    }

    /// Sends 0x0102 (2019 adds IMEI and software version) and waits for the 0x8001
    /// answering it; a non-zero result is [`TerminalError::Rejected`].
    pub async fn authenticate(&mut self) -> Result<()> {
        let auth_code = self.auth_code.clone().ok_or(TerminalError::NoAuthCode)?;
        let v2019 = self.config.version.is_2019();
        let auth = Auth {
            auth_code,
            imei: v2019.then(|| self.config.imei.as_str().to_owned()),
            software_version: v2019.then(|| self.config.software_version.clone()),
        };
        self.request(0x0102, &Message::Auth(auth), Some(Kind::Login))
            .await?;
        if !self.authenticated {
            self.authenticated = true;
            self.config.counters.online.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends a 0x0002 heartbeat and waits for its 0x8001.
    pub async fn send_heartbeat(&mut self) -> Result<()> {
        self.request(0x0002, &Message::Heartbeat, Some(Kind::Heartbeat))
            .await
            .map(|_| ())
    }

    /// Sends a 0x0200 report of `fix` with `alarm_word` and the standard items (0x01
    /// mileage, 0x30 signal, 0x31 satellites) followed by `extra` (an extra item with one of
    /// those ids replaces the standard one); waits for its 0x8001 and returns its serial.
    pub async fn send_location(
        &mut self,
        fix: &Fix,
        alarm_word: u32,
        extra: &[LocationItem],
    ) -> Result<u16> {
        let location = self.location(fix, alarm_word, extra)?;
        let serial = self
            .request(0x0200, &Message::Location(location), Some(Kind::Gps))
            .await?;
        self.log_sent(fix);
        Ok(serial)
    }

    /// Sends the fixes as one 0x0704 batch (each with the standard items, no alarm); waits
    /// for its 0x8001 and returns its serial. The batch must fit one packet (about two
    /// dozen fixes).
    pub async fn send_batch(&mut self, fixes: &[Fix], kind: BatchKind) -> Result<u16> {
        if fixes.is_empty() {
            return Err(TerminalError::EmptyBatch);
        }
        let items = fixes
            .iter()
            .map(|f| self.location(f, 0, &[]))
            .collect::<Result<Vec<_>>>()?;
        let batch = BatchLocation {
            kind: kind.code(),
            items,
        };
        let serial = self
            .request(0x0704, &Message::BatchLocation(batch), Some(Kind::Gps))
            .await?;
        for fix in fixes {
            self.log_sent(fix);
        }
        Ok(serial)
    }

    /// Sends a 0x0200 report of `fix` carrying a 0x64 ADAS item for `event`, with the
    /// Su-biao alarm label (terminal id = last 7 IMEI digits, fix time, sequence within
    /// that second, attachment count); waits for its 0x8001 and returns the label, which
    /// names the alarm in a later 0x9208.
    pub async fn send_adas_alarm(&mut self, fix: &Fix, event: AdasEvent) -> Result<AlarmLabel> {
        let time = bcd_time(fix.time)?;
        let seq = match self.last_label {
            Some((t, seq)) if t == time => seq.wrapping_add(1),
            _ => 0,
        };
        self.last_label = Some((time, seq));
        let mut terminal_id = [0u8; 7];
        for (slot, digit) in terminal_id
            .iter_mut()
            .zip(last_digits(&self.config.imei).bytes())
        {
            *slot = digit;
        }
        let label = AlarmLabel {
            terminal_id,
            time,
            seq,
            attachments: event.attachments,
            reserved: 0,
        };
        let alarm_id = self.next_alarm_id;
        self.next_alarm_id = alarm_id.wrapping_add(1);
        let basic = self.basic(fix, 0)?;
        let adas = AdasAlarm {
            alarm_id,
            flag: event.flag,
            kind: event.kind,
            level: event.level,
            front_speed_kmh: event.front_speed_kmh,
            front_distance: event.front_distance,
            departure: event.departure,
            road_sign_type: event.road_sign_type,
            road_sign_value: event.road_sign_value,
            common: SafetyCommon {
                speed_kmh: fix.speed_kmh,
                altitude_m: basic.altitude_m,
                latitude_e6: basic.latitude_e6,
                longitude_e6: basic.longitude_e6,
                time,
                vehicle_status: VEHICLE_STATUS_ACC_ON | VEHICLE_STATUS_POSITIONED,
                label,
            },
        };
        let location = self.location(fix, 0, &[LocationItem::Adas(adas)])?;
        self.request(0x0200, &Message::Location(location), Some(Kind::Alarm))
            .await?;
        Ok(label)
    }

    /// Sends 0x0003 and waits for its 0x8001; the terminal is no longer authenticated.
    pub async fn send_logout(&mut self) -> Result<()> {
        self.request(0x0003, &Message::Logout, None).await?;
        if self.authenticated {
            self.authenticated = false;
            self.config.counters.online.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes arbitrary bytes (a hand-made frame, garbage, half a frame) to the platform.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write(bytes).await
    }

    /// The oldest platform message not yet taken, waiting up to `timeout` for one to
    /// arrive; it has been answered (when `auto_answer` is on) by the time it is returned.
    pub async fn next_downlink(&mut self, timeout: Duration) -> Result<Option<Downlink>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.downlinks.pop_front() {
                return Ok(Some(d));
            }
            if self.read_and_handle(deadline).await?.is_none() {
                return Ok(None);
            }
        }
    }

    /// The oldest platform message with id `msg_id`, waiting up to `timeout`; others stay
    /// queued.
    pub async fn next_downlink_of(
        &mut self,
        msg_id: u16,
        timeout: Duration,
    ) -> Result<Option<Downlink>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self
                .downlinks
                .iter()
                .position(|d| d.header.msg_id == msg_id)
            {
                return Ok(self.downlinks.remove(at));
            }
            if self.read_and_handle(deadline).await?.is_none() {
                return Ok(None);
            }
        }
    }

    /// Behaves like a terminal until `deadline`: heartbeats and location reports (and alarm
    /// reports when configured) on their periods, the first at a random offset so that many
    /// terminals do not fire together; answers the platform meanwhile; counts missing
    /// answers. Returns at `deadline`, or with the error that ended the connection.
    pub async fn run_until(&mut self, deadline: Instant) -> Result<()> {
        let mut heartbeat = self.ticker(self.config.heartbeat_every);
        let mut location = self.ticker(self.config.location_every);
        let mut alarm = self.ticker(self.config.alarm_every);
        loop {
            if self.timers_changed {
                self.timers_changed = false;
                heartbeat = self.ticker(self.config.heartbeat_every);
                location = self.ticker(self.config.location_every);
            }
            let next_expiry = self.pending.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = tick(&mut heartbeat) => {
                    let kind = Some(Kind::Heartbeat);
                    let serial = self.send_message(0x0002, &Message::Heartbeat, kind).await?;
                    self.expect_answer(0x0002, serial, kind);
                }
                _ = tick(&mut location) => {
                    let fix = self.next_fix();
                    let report = Message::Location(self.location(&fix, 0, &[])?);
                    let kind = Some(Kind::Gps);
                    let serial = self.send_message(0x0200, &report, kind).await?;
                    self.expect_answer(0x0200, serial, kind);
                    self.log_sent(&fix);
                }
                _ = tick(&mut alarm) => {
                    let fix = self.next_fix();
                    let word = self.config.alarm_word;
                    let report = Message::Location(self.location(&fix, word, &[])?);
                    let kind = Some(Kind::Alarm);
                    let serial = self.send_message(0x0200, &report, kind).await?;
                    self.expect_answer(0x0200, serial, kind);
                    // The hub pushes the position of an alarm report too.
                    self.log_sent(&fix);
                }
                _ = sleep_until_opt(next_expiry) => self.expire_pending(),
                read = self.reader.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return Err(TerminalError::Closed);
                    }
                    while let Some((packet, raw)) = self.decode_buffered()? {
                        self.handle(packet, &raw).await?;
                    }
                }
            }
        }
    }

    /// Closes the connection (FIN), as a terminal that powers off without logging out.
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

    fn header(&self, msg_id: u16, serial: u16) -> Header {
        Header {
            msg_id,
            version: self.config.version.is_2019().then_some(VERSION_2019),
            phone: self.phone,
            serial,
            package: None,
            version_flag_mismatch: false,
        }
    }

    fn basic(&self, fix: &Fix, alarm_word: u32) -> Result<BasicLocation> {
        let mut status = StatusFlags::ACC | StatusFlags::POSITIONED;
        // The movement model reports GPS + BeiDou fixes, like the dashcams it imitates.
        status |= StatusFlags::GPS | StatusFlags::BEIDOU;
        if fix.latitude < 0.0 {
            status |= StatusFlags::SOUTH;
        }
        if fix.longitude < 0.0 {
            status |= StatusFlags::WEST;
        }
        Ok(BasicLocation {
            alarm: AlarmFlags(alarm_word),
            status: StatusFlags(status),
            latitude_e6: micro_degrees(fix.latitude, 90.0),
            longitude_e6: micro_degrees(fix.longitude, 180.0),
            // The movement model is flat: every fix is at sea level.
            altitude_m: 0,
            speed_dkmh: u16::from(fix.speed_kmh) * 10,
            course: fix.course % 360,
            time: bcd_time(fix.time)?,
        })
    }

    /// A 0x0200 body for `fix`: basic block, standard items, then `extra`.
    fn location(&self, fix: &Fix, alarm_word: u32, extra: &[LocationItem]) -> Result<Location> {
        let standard = [
            LocationItem::Mileage(fix.odometer_m / 100),
            LocationItem::Signal(self.config.signal),
            LocationItem::Satellites(fix.satellites),
        ];
        let mut items: Vec<LocationItem> = standard
            .into_iter()
            .filter(|s| extra.iter().all(|e| e.id() != s.id()))
            .collect();
        items.extend_from_slice(extra);
        Ok(Location {
            basic: self.basic(fix, alarm_word)?,
            items,
            trailing: Vec::new(),
        })
    }

    fn log_sent(&self, fix: &Fix) {
        if let Some(log) = &self.config.sent_log {
            log.record(
                (self.config.imei.as_str().to_owned(), jimi_time(fix.time)),
                Instant::now().into_std(),
            );
        }
    }

    /// Sends a message the platform answers with 0x8001 and waits for that answer.
    async fn request(&mut self, msg_id: u16, message: &Message, kind: Option<Kind>) -> Result<u16> {
        let serial = self.send_message(msg_id, message, kind).await?;
        self.expect_answer(msg_id, serial, kind);
        let deadline = Instant::now() + self.config.ack_timeout;
        loop {
            match self.read_and_handle(deadline).await? {
                Some(Inbound::Response(g)) if g.reply_id == msg_id && g.reply_serial == serial => {
                    if accepted(msg_id, g.result) {
                        return Ok(serial);
                    }
                    return Err(TerminalError::Rejected {
                        msg_id,
                        serial,
                        result: g.result,
                    });
                }
                Some(_) => continue,
                None => {
                    self.pending
                        .forget(|p| p.msg_id == msg_id && p.serial == serial);
                    self.config
                        .counters
                        .ack_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(TerminalError::AckTimeout {
                        msg_id,
                        serial,
                        timeout: self.config.ack_timeout,
                    });
                }
            }
        }
    }

    /// Encodes and writes `message` with the next serial, in packages when its body is
    /// longer than one packet holds (packages take consecutive serials); returns the first
    /// serial. `kind` is what it counts as in the run's counters.
    async fn send_message(
        &mut self,
        msg_id: u16,
        message: &Message,
        kind: Option<Kind>,
    ) -> Result<u16> {
        let serial = self.next_serial;
        let frames = encode_split(&self.header(msg_id, serial), message, MAX_BODY_LEN)?;
        // At most 1023 packages of 1023 bytes fit the body sizes this terminal writes.
        self.next_serial = serial.wrapping_add(frames.len() as u16);
        for frame in &frames {
            self.write(frame).await?;
        }
        if let Some(kind) = kind {
            self.config.counters.add_sent(kind);
        }
        if frames.len() > 1 {
            self.last_split = Some(SplitUplink {
                first_serial: serial,
                frames,
            });
        }
        Ok(serial)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let timeout = self.config.write_timeout;
        match tokio::time::timeout(timeout, self.writer.write_all(bytes)).await {
            Ok(written) => written?,
            Err(_) => {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(TerminalError::WriteTimeout(timeout));
            }
        }
        self.config
            .counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn expect_answer(&mut self, msg_id: u16, serial: u16, kind: Option<Kind>) {
        let deadline = Instant::now() + self.config.ack_timeout;
        let pending = Pending {
            msg_id,
            serial,
            kind,
        };
        self.pending.push(pending, deadline, &self.config.counters);
    }

    fn expire_pending(&mut self) {
        self.pending.expire(Instant::now(), &self.config.counters);
    }

    /// A 0x8001 arrived: the uplink it answers is no longer pending.
    fn settle(&mut self, g: &GeneralResponse) {
        let Some(answered) = self
            .pending
            .take(|p| p.msg_id == g.reply_id && p.serial == g.reply_serial)
        else {
            // An answer to a package of a split uplink, or one that came after its timeout.
            return;
        };
        let kind = answered.kind;
        let counters = &self.config.counters;
        if accepted(g.reply_id, g.result) {
            if let Some(kind) = kind {
                counters.add_acked(kind);
            }
        } else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads and handles one frame; `None` when `deadline` passes first.
    async fn read_and_handle(&mut self, deadline: Instant) -> Result<Option<Inbound>> {
        let (packet, raw) = match tokio::time::timeout_at(deadline, self.next_packet()).await {
            Ok(next) => next?,
            Err(_) => return Ok(None),
        };
        self.handle(packet, &raw).await.map(Some)
    }

    /// Next packet from the platform and its wire bytes. Cancel-safe: bytes read stay in
    /// the buffer.
    async fn next_packet(&mut self) -> Result<(Packet, Vec<u8>)> {
        loop {
            if let Some(next) = self.decode_buffered()? {
                return Ok(next);
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(TerminalError::Closed);
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<(Packet, Vec<u8>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match jt808::decode(&self.buf, CrcPolicy::Reject) {
            Ok(Some(decoded)) => {
                let consumed = decoded.consumed.min(self.buf.len());
                let raw = self.buf[decoded.skipped.min(consumed)..consumed].to_vec();
                self.buf.drain(..consumed);
                Ok(Some((decoded.packet, raw)))
            }
            Ok(None) if self.buf.len() > MAX_BUFFERED => {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(TerminalError::Garbage(self.buf.len()))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    async fn handle(&mut self, packet: Packet, raw: &[u8]) -> Result<Inbound> {
        let Packet {
            header, message, ..
        } = packet;
        match (header.package, message) {
            (Some(package), Message::Fragment(slice)) => {
                self.handle_package(header, package.total, &slice, raw)
                    .await
            }
            (_, message) => {
                self.handle_message(header, message, raw.to_vec(), false)
                    .await
            }
        }
    }

    /// One package of a subpackaged downlink. JT/T 1078 §4.1: the receiver answers every
    /// package on its own, so each gets a 0x0001; the whole message is handled (and gets
    /// its dedicated answer, if it has one) when its last package arrives.
    async fn handle_package(
        &mut self,
        header: Header,
        total: u16,
        slice: &[u8],
        raw: &[u8],
    ) -> Result<Inbound> {
        if self.config.auto_answer {
            self.answer_general(&header, 0).await?;
        }
        let msg_id = header.msg_id;
        match self
            .partial_raw
            .iter_mut()
            .find(|p| p.msg_id == msg_id && p.total == total)
        {
            Some(p) => p.raw.extend_from_slice(raw),
            None => self.partial_raw.push(PartialRaw {
                msg_id,
                total,
                raw: raw.to_vec(),
            }),
        }
        let now = Utc::now();
        let pushed = self.reassembler.push(&header, slice, now);
        for gap in self.reassembler.poll(now) {
            if gap.expired {
                self.take_partial_raw(gap.header.msg_id, gap.total);
            }
        }
        match pushed {
            Ok(None) => Ok(Inbound::Other),
            Ok(Some(whole)) => {
                let raw = self.take_partial_raw(msg_id, total);
                let message = decode_body(&whole.header, &whole.body);
                self.handle_message(whole.header, message, raw, true).await
            }
            Err(_) => {
                // Refused by the reassembly limits: the message is lost, as on a device
                // short of memory; the platform will time out on it.
                self.take_partial_raw(msg_id, total);
                self.config.counters.errors.fetch_add(1, Ordering::Relaxed);
                Ok(Inbound::Other)
            }
        }
    }

    fn take_partial_raw(&mut self, msg_id: u16, total: u16) -> Vec<u8> {
        match self
            .partial_raw
            .iter()
            .position(|p| p.msg_id == msg_id && p.total == total)
        {
            Some(at) => self.partial_raw.swap_remove(at).raw,
            None => Vec::new(),
        }
    }

    async fn handle_message(
        &mut self,
        header: Header,
        message: Message,
        raw: Vec<u8>,
        subpackaged: bool,
    ) -> Result<Inbound> {
        let inbound = match &message {
            Message::PlatformResponse(g) => {
                self.settle(g);
                Inbound::Response(*g)
            }
            Message::RegisterResponse(r) => Inbound::Registered(r.clone()),
            Message::Invalid { .. } if PLATFORM_ANSWERS.contains(&header.msg_id) => {
                self.config
                    .counters
                    .unexpected_frames
                    .fetch_add(1, Ordering::Relaxed);
                Inbound::Other
            }
            _ if PLATFORM_ANSWERS.contains(&header.msg_id) => Inbound::Other,
            _ if header.msg_id < 0x8000 => {
                // A terminal message id coming from the platform: nothing to answer.
                self.config
                    .counters
                    .unexpected_frames
                    .fetch_add(1, Ordering::Relaxed);
                Inbound::Other
            }
            command => {
                let counters = self.config.counters.clone();
                counters.commands_received.fetch_add(1, Ordering::Relaxed);
                if self.config.auto_answer {
                    let reply = self.reply_to(&header, command);
                    if self.send_reply(&header, reply, subpackaged).await? {
                        counters.commands_answered.fetch_add(1, Ordering::Relaxed);
                    }
                    self.tell_live_media(command);
                }
                Inbound::Other
            }
        };
        self.queue_downlink(Downlink {
            header,
            message,
            raw,
        });
        Ok(inbound)
    }

    /// Hands an accepted 0x9101, 0x9102, 0x9201 or 0x9202 to the configured [`LiveMedia`],
    /// once its answer is on the wire.
    fn tell_live_media(&self, message: &Message) {
        let Some(media) = &self.config.live_media else {
            return;
        };
        match message {
            Message::LiveRequest(request) => media.start(LiveStream {
                imei: self.config.imei,
                phone: self.phone,
                request: request.clone(),
            }),
            Message::LiveControl(control) => media.control(self.config.imei, *control),
            Message::PlaybackRequest(request) => media.playback(PlaybackStream {
                imei: self.config.imei,
                phone: self.phone,
                request: request.clone(),
            }),
            Message::PlaybackControl(control) => media.playback_control(self.config.imei, *control),
            _ => {}
        }
    }

    fn queue_downlink(&mut self, downlink: Downlink) {
        if self.config.downlink_capacity == 0 {
            self.downlinks_dropped += 1;
            return;
        }
        while self.downlinks.len() >= self.config.downlink_capacity {
            self.downlinks.pop_front();
            self.downlinks_dropped += 1;
        }
        self.downlinks.push_back(downlink);
    }

    /// What firmware answers to a platform message.
    fn reply_to(&mut self, header: &Header, message: &Message) -> Reply {
        let reply_serial = header.serial;
        match message {
            Message::QueryAllParams => Reply::Message(
                0x0104,
                Message::ParamsReply(ParamsReply {
                    reply_serial,
                    params: self.config.params.clone(),
                }),
            ),
            Message::QueryParams(ids) => Reply::Message(
                0x0104,
                Message::ParamsReply(ParamsReply {
                    reply_serial,
                    params: ids
                        .iter()
                        .filter_map(|id| self.config.params.iter().find(|p| p.id == *id))
                        .cloned()
                        .collect(),
                }),
            ),
            Message::SetParams(params) => {
                Reply::General(if self.apply_params(params) { 0 } else { 1 })
            }
            Message::QueryAttributes => Reply::Message(0x0107, self.attributes()),
            Message::LocationQuery => {
                let fix = self.next_fix();
                match self.location(&fix, 0, &[]) {
                    Ok(location) => Reply::Message(
                        0x0201,
                        Message::LocationReply {
                            reply_serial,
                            location,
                        },
                    ),
                    // Only a clock outside 2000..=2099 gets here.
                    Err(_) => Reply::General(1),
                }
            }
            Message::QueryAvAttributes => Reply::Message(0x1003, self.av_attributes()),
            // JT/T 1078 §5.6.3: a playback request is answered with the resource list of
            // what will be played.
            Message::PlaybackRequest(p) => Reply::Message(
                0x1205,
                Message::ResourceList(ResourceList {
                    reply_serial,
                    items: playback_resources(p, Utc::now()),
                }),
            ),
            Message::ResourceQuery(q) => Reply::Message(
                0x1205,
                Message::ResourceList(ResourceList {
                    reply_serial,
                    items: query_resources(q, Utc::now()),
                }),
            ),
            Message::FileUpload(_) => match self.config.file_upload_result {
                Some(result) => Reply::GeneralThen(
                    0,
                    0x1206,
                    Message::FileUploadResult {
                        reply_serial,
                        result,
                    },
                ),
                None => Reply::General(0),
            },
            Message::ResendRequest(r) => self.resend(r),
            Message::Invalid { .. } => Reply::General(2),
            // 0x8105, 0x8300, 0x8801, 0x9101, 0x9102, 0x9202, 0x9207, 0x9208 and ids the
            // codec does not model: accepted. Media connections are the configured
            // `live_media`'s; attachment connections are not simulated.
            _ => Reply::General(0),
        }
    }

    /// Sends `reply`; returns whether anything was sent. The general answer of a
    /// subpackaged message was already given package by package.
    async fn send_reply(&mut self, to: &Header, reply: Reply, subpackaged: bool) -> Result<bool> {
        let kind = Some(Kind::CommandReply);
        match reply {
            Reply::General(_) if subpackaged => Ok(true),
            Reply::General(result) => {
                self.answer_general(to, result).await?;
                Ok(true)
            }
            Reply::Message(msg_id, message) => {
                self.send_message(msg_id, &message, kind).await?;
                Ok(true)
            }
            Reply::GeneralThen(result, msg_id, message) => {
                if !subpackaged {
                    self.answer_general(to, result).await?;
                }
                let serial = self.send_message(msg_id, &message, kind).await?;
                // 0x1206 is answered by the platform's 0x8001.
                self.expect_answer(msg_id, serial, kind);
                Ok(true)
            }
            Reply::Resend(frames) => {
                for frame in &frames {
                    self.write(frame).await?;
                }
                Ok(true)
            }
        }
    }

    async fn answer_general(&mut self, to: &Header, result: u8) -> Result<()> {
        let response = Message::TerminalResponse(GeneralResponse {
            reply_serial: to.serial,
            reply_id: to.msg_id,
            result,
        });
        self.send_message(0x0001, &response, Some(Kind::CommandReply))
            .await
            .map(|_| ())
    }

    /// 0x8103: replaces parameters with the same id and adds the others; refuses the whole
    /// set (false) when the terminal would hold more than [`MAX_PARAMS`]. Heartbeat (0x0001)
    /// and report (0x0029) intervals take effect in the run loop.
    fn apply_params(&mut self, params: &[Param]) -> bool {
        let held = &self.config.params;
        let mut new_ids: Vec<u32> = params
            .iter()
            .map(|p| p.id)
            .filter(|id| held.iter().all(|h| h.id != *id))
            .collect();
        new_ids.sort_unstable();
        new_ids.dedup();
        if held.len() + new_ids.len() > MAX_PARAMS {
            return false;
        }
        for p in params {
            match self.config.params.iter_mut().find(|h| h.id == p.id) {
                Some(h) => h.value = p.value.clone(),
                None => self.config.params.push(p.clone()),
            }
            match (p.id, &p.value) {
                (0x0001, ParamValue::Dword(s)) => {
                    self.config.heartbeat_every = Duration::from_secs(u64::from(*s));
                    self.timers_changed = true;
                }
                (0x0029, ParamValue::Dword(s)) => {
                    self.config.location_every = Duration::from_secs(u64::from(*s));
                    self.timers_changed = true;
                }
                _ => {}
            }
        }
        true
    }

    fn attributes(&self) -> Message {
        let c = &self.config;
        Message::Attributes(Attributes {
            terminal_type: c.terminal_type,
            manufacturer: c.manufacturer.clone(),
            model: c.model.clone(),
            terminal_id: c.terminal_id.clone(),
            iccid: c.iccid.clone(),
            hardware_version: c.hardware_version.clone(),
            firmware_version: c.software_version.clone(),
            // GPS + BeiDou, as the status word of every report says.
            gnss: 0b0000_0011,
            // TD-LTE, with GPRS fallback.
            comm: 0b0010_0001,
        })
    }

    fn av_attributes(&self) -> Message {
        Message::AvAttributes(AvAttributes {
            // G.711A mono, 8 kHz, 16 bit, 320-byte frames (40 ms): the usual dashcam audio.
            audio_codec: 6,
            audio_channels: 1,
            sample_rate: 0,
            sample_bits: 1,
            audio_frame_len: 320,
            audio_output: true,
            // H.264.
            video_codec: 98,
            max_audio_channels: 1,
            max_video_channels: self.config.video_channels,
        })
    }

    /// 0x8003: the packages asked for, if they belong to the last split uplink; otherwise
    /// a failure answer.
    fn resend(&self, request: &ResendRequest) -> Reply {
        match &self.last_split {
            Some(split) if split.first_serial == request.original_serial => {
                let frames: Vec<Vec<u8>> = request
                    .indexes
                    .iter()
                    .filter_map(|&i| split.frames.get(usize::from(i).checked_sub(1)?))
                    .cloned()
                    .collect();
                if frames.is_empty() {
                    Reply::General(1)
                } else {
                    Reply::Resend(frames)
                }
            }
            _ => Reply::General(1),
        }
    }
}

impl Drop for SimTerminal {
    fn drop(&mut self) {
        if self.authenticated {
            self.config.counters.online.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn open(addr: SocketAddr, config: &SimTerminalConfig) -> Result<tokio::net::TcpStream> {
    dial(addr, config.source_ip, config.connect_timeout)
        .await
        .map_err(|e| match e {
            DialError::Io(source) => TerminalError::Connect { addr, source },
            DialError::TimedOut => TerminalError::ConnectTimeout(addr),
        })
}

/// Adds the server address (0x0013) and, in 2013, the TCP port (0x0018) the terminal
/// dialled, unless the parameter set already names them. 2019 writes `host:port` in 0x0013
/// and has no 0x0018.
fn add_server_params(params: &mut Vec<Param>, addr: SocketAddr, version: Jt808Version) {
    let has = |params: &[Param], id| params.iter().any(|p: &Param| p.id == id);
    if !has(params, 0x0013) && params.len() < MAX_PARAMS {
        let server = if version.is_2019() {
            addr.to_string()
        } else {
            addr.ip().to_string()
        };
        params.push(Param {
            id: 0x0013,
            value: ParamValue::Text(server),
        });
    }
    if !version.is_2019() && !has(params, 0x0018) && params.len() < MAX_PARAMS {
        params.push(dword(0x0018, u64::from(addr.port())));
    }
}

/// Reassembly bounds for the few subpackaged downlinks a platform sends (long texts,
/// parameter sets): far below the hub's, a terminal has little memory.
fn reassembly_limits() -> Limits {
    Limits {
        max_packages: 64,
        max_bytes: 64 * 1024,
        max_concurrent: 2,
        resend_after: chrono::Duration::seconds(10),
        timeout: chrono::Duration::seconds(30),
    }
}

/// Whether a 0x8001 result accepts the uplink: 0, or 4 ("alarm handling confirmed") for a
/// location report or batch, which may carry alarms.
fn accepted(msg_id: u16, result: u8) -> bool {
    result == 0 || (result == 4 && matches!(msg_id, 0x0200 | 0x0704))
}

fn bcd_time(t: DateTime<Utc>) -> Result<BcdTime> {
    BcdTime::from_utc(t).ok_or(TerminalError::TimeOutOfRange(t))
}

/// Unsigned 1e-6 degrees of a signed coordinate, clamped to `limit`. NaN becomes 0 (it
/// must be caught first: `f64::min` would turn it into `limit`).
fn micro_degrees(degrees: f64, limit: f64) -> u32 {
    if degrees.is_nan() {
        return 0;
    }
    (degrees.abs().min(limit) * 1e6).round() as u32
}

fn is_zero_time(t: &BcdTime) -> bool {
    t.0 == [0; 6]
}

/// The simulated recordings matching `q`: one file of the queried channel over the queried
/// span (an open start = the last ten minutes, an open end = up to now), or nothing when
/// the span is empty or unreadable.
fn query_resources(q: &ResourceQuery, now: DateTime<Utc>) -> Vec<AvResource> {
    let (Some(now_bcd), Some(default_start)) = (
        BcdTime::from_utc(now),
        BcdTime::from_utc(now - chrono::Duration::seconds(DEFAULT_RECORDING_S)),
    ) else {
        return Vec::new();
    };
    let start = if is_zero_time(&q.start) {
        default_start
    } else {
        q.start
    };
    let end = if is_zero_time(&q.end) { now_bcd } else { q.end };
    let (Some(from), Some(to)) = (start.naive(), end.naive()) else {
        return Vec::new();
    };
    let seconds = (to - from).num_seconds();
    if seconds <= 0 {
        return Vec::new();
    }
    let size = u32::try_from(seconds.saturating_mul(RECORDING_BYTES_PER_S)).unwrap_or(u32::MAX);
    vec![AvResource {
        // 0 means "all channels" in a query; the file is on the first one.
        channel: q.channel.max(1),
        start,
        end,
        alarm: q.alarm,
        // 3 means "audio or video" in a query; the file holds both.
        av_type: if q.av_type == 3 { 0 } else { q.av_type },
        // 0 means "any" in a query; the file is on the main stream and main storage.
        stream: q.stream.max(1),
        storage: q.storage.max(1),
        size,
    }]
}

/// The recordings a playback request plays: those a query with its channel, span and
/// stream filters lists (an end of zero means "play on", i.e. up to now).
fn playback_resources(p: &PlaybackRequest, now: DateTime<Utc>) -> Vec<AvResource> {
    let query = ResourceQuery {
        channel: p.channel,
        start: p.start,
        end: p.end,
        alarm: 0,
        av_type: p.av_type,
        stream: p.stream,
        storage: p.storage,
    };
    query_resources(&query, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn imei(s: &str) -> Imei {
        Imei::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn phone_under_the_rule_is_the_48_bit_number() {
        let phone = phone_for(&imei("869247060001762"), true, Jt808Version::V2013);
        assert_eq!(
            phone.map(|p| p.as_bytes().to_vec()),
            Some(vec![0x4f, 0x0e, 0xbc, 0x39, 0x2d, 0x30])
        );
    }

    #[test]
    fn phone_under_the_rule_is_widened_for_2019() {
        let phone = phone_for(&imei("869247060001762"), true, Jt808Version::V2019);
        assert_eq!(
            phone.map(|p| p.digits()),
            Some("000000004f0ebc392d30".to_owned())
        );
    }

    #[test]
    fn phone_without_the_rule_is_bcd() {
        let phone = phone_for(&imei("13912345678"), false, Jt808Version::V2013);
        assert_eq!(phone.map(|p| p.digits()), Some("013912345678".to_owned()));
    }

    #[test]
    fn fifteen_digits_without_the_rule_need_the_2019_header() {
        assert_eq!(
            phone_for(&imei("869247060001762"), false, Jt808Version::V2013),
            None
        );
        assert_eq!(
            phone_for(&imei("869247060001762"), false, Jt808Version::V2019).map(|p| p.digits()),
            Some("00000869247060001762".to_owned())
        );
    }

    #[test]
    fn bad_luhn_digit_has_no_phone_under_the_rule() {
        assert_eq!(
            phone_for(&imei("869247060001763"), true, Jt808Version::V2013),
            None
        );
    }

    #[test]
    fn leading_zeros_do_not_survive_the_old_rule() {
        assert_eq!(
            phone_for(&imei("0013912345678"), false, Jt808Version::V2019),
            None
        );
    }

    #[test]
    fn label_id_is_the_last_seven_digits() {
        assert_eq!(last_digits(&imei("869247060001762")), "0001762");
        assert_eq!(last_digits(&imei("12345")), "0012345");
    }

    #[test]
    fn coordinates_are_clamped_and_unsigned() {
        assert_eq!(micro_degrees(-22.543_1, 90.0), 22_543_100);
        assert_eq!(micro_degrees(200.0, 180.0), 180_000_000);
        assert_eq!(micro_degrees(f64::NAN, 90.0), 0);
    }

    #[test]
    fn alarm_confirmation_accepts_only_reports() {
        assert!(accepted(0x0200, 4));
        assert!(!accepted(0x0002, 4));
        assert!(!accepted(0x0102, 1));
    }

    #[test]
    fn unbounded_query_lists_the_last_ten_minutes() {
        let now = Utc
            .with_ymd_and_hms(2025, 3, 1, 8, 30, 0)
            .single()
            .unwrap_or_default();
        let q = ResourceQuery {
            channel: 0,
            start: BcdTime::default(),
            end: BcdTime::default(),
            alarm: 0,
            av_type: 3,
            stream: 0,
            storage: 0,
        };
        let items = query_resources(&q, now);
        assert_eq!(items.len(), 1);
        // 16:20:00 to 16:30:00 GMT+8.
        assert_eq!(
            items[0].start,
            BcdTime([0x25, 0x03, 0x01, 0x16, 0x20, 0x00])
        );
        assert_eq!(items[0].end, BcdTime([0x25, 0x03, 0x01, 0x16, 0x30, 0x00]));
        assert_eq!(items[0].channel, 1);
        assert_eq!(items[0].size, 600 * 64_000);
    }

    #[test]
    fn reversed_span_lists_nothing() {
        let now = Utc::now();
        let q = ResourceQuery {
            channel: 1,
            start: BcdTime([0x25, 0x03, 0x01, 0x16, 0x30, 0x00]),
            end: BcdTime([0x25, 0x03, 0x01, 0x16, 0x20, 0x00]),
            alarm: 0,
            av_type: 0,
            stream: 1,
            storage: 1,
        };
        assert!(query_resources(&q, now).is_empty());
    }

    #[test]
    fn dialled_server_fills_missing_params_in_2013() {
        let mut params = Vec::new();
        let addr: SocketAddr = "10.1.2.3:7611".parse().unwrap_or_else(|e| panic!("{e}"));
        add_server_params(&mut params, addr, Jt808Version::V2013);
        assert_eq!(
            params,
            vec![
                Param {
                    id: 0x0013,
                    value: ParamValue::Text("10.1.2.3".to_owned())
                },
                Param {
                    id: 0x0018,
                    value: ParamValue::Dword(7611)
                },
            ]
        );
    }

    #[test]
    fn dialled_server_is_host_and_port_in_2019() {
        let mut params = Vec::new();
        let addr: SocketAddr = "10.1.2.3:7611".parse().unwrap_or_else(|e| panic!("{e}"));
        add_server_params(&mut params, addr, Jt808Version::V2019);
        assert_eq!(
            params,
            vec![Param {
                id: 0x0013,
                value: ParamValue::Text("10.1.2.3:7611".to_owned())
            }]
        );
    }
}
