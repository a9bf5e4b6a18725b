//! GT06 (Concox/Jimi "JIMI protocol") messages as typed values.
//! Field meanings: `shared` GT06 reference; units are stated on each field.

use chrono::{DateTime, Utc};

use crate::imei::Imei;

/// One decoded frame: the envelope plus the message it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `78 78` (false) or `79 79` (true, 2-byte length).
    pub extended: bool,
    /// Protocol number as on the wire (0x01 login, 0x13 heartbeat, ...).
    pub protocol: u8,
    /// Information serial number; `None` for frames that carry none (WiFi 0x69/0x17).
    pub serial: Option<u16>,
    /// `Some(false)` when the CRC did not verify (and the policy let the frame through);
    /// `None` when the frame has no CRC.
    pub crc_ok: Option<bool>,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 0x01.
    Login(Login),
    /// 0x13 status/heartbeat and 0x23 heartbeat with battery voltage.
    Heartbeat(Heartbeat),
    /// 0x10/0x11/0x12/0x22/0x37/0xA0 and the other GPS+LBS reports.
    Location(Location),
    /// 0x16/0x26/0x27/0x19 alarms.
    Alarm(Alarm),
    /// 0x18/0x28 multi-cell LBS.
    Lbs(LbsReport),
    /// 0x2C/0x69/0x17(WiFi) LBS + WiFi.
    Wifi(WifiReport),
    /// 0x15 (old) and 0x21 (new) replies to an online command.
    CommandReply(CommandReply),
    /// 0x80 online command (server to device).
    OnlineCommand(OnlineCommand),
    /// 0x8A time request (empty body).
    TimeRequest,
    /// 0x8A time reply (server to device).
    TimeReply(DateTime<Utc>),
    /// 0x94 information transmission: sub-type and its raw data.
    Info { sub_type: u8, data: Vec<u8> },
    /// Generic acknowledgement `78 78 05 <proto> <serial> <crc> 0d 0a` (server to device).
    Ack,
    /// Any other protocol number: content kept raw, logged and counted by the caller.
    Unknown { content: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub imei: Imei,
    /// Model code, when the frame carries it.
    pub type_id: Option<u16>,
    /// Device time zone in minutes east of UTC, from the extension word.
    pub timezone_minutes: Option<i16>,
    /// Low 2 bits of the extension word (language select), when present.
    pub language: Option<u8>,
}

/// The terminal-information byte shared by status, heartbeat and alarm messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TerminalInfo(pub u8);

impl TerminalInfo {
    pub fn armed(self) -> bool {
        self.0 & 0x01 != 0
    }
    pub fn acc_on(self) -> bool {
        self.0 & 0x02 != 0
    }
    pub fn charging(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// Bits 3..=5: 0 normal, 1 shock, 2 power cut, 3 low battery, 4 SOS.
    pub fn alarm_bits(self) -> u8 {
        (self.0 >> 3) & 0x07
    }
    pub fn gps_positioned(self) -> bool {
        self.0 & 0x40 != 0
    }
    pub fn oil_cut(self) -> bool {
        self.0 & 0x80 != 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub terminal_info: TerminalInfo,
    /// 0x13: voltage level 0..=6. 0x23: `None` (see `battery_volts`).
    pub voltage_level: Option<u8>,
    /// 0x23: battery voltage in volts (WORD x 0.01 V).
    pub battery_volts: Option<f64>,
    /// 0..=4.
    pub gsm_signal: u8,
    pub alarm_code: u8,
    pub language: u8,
}

/// The 18-byte GPS block.
#[derive(Debug, Clone, PartialEq)]
pub struct Gps {
    /// Fix time as sent (binary YY MM DD hh mm ss), read as UTC.
    pub time: DateTime<Utc>,
    pub satellites: u8,
    /// Signed decimal degrees (south negative).
    pub latitude: f64,
    /// Signed decimal degrees (west negative).
    pub longitude: f64,
    pub speed_kmh: u8,
    /// 0..=359, 0 = north, clockwise.
    pub course: u16,
    /// Course/status bit 12.
    pub positioned: bool,
    /// Course/status bit 13: differential positioning (else real-time).
    pub differential: bool,
    /// ACC from course/status bit 15 when bit 14 says it is present.
    pub acc: Option<bool>,
}

/// One cell tower: the serving cell of a location or alarm, or an entry of an LBS list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell {
    pub mcc: u16,
    pub mnc: u16,
    pub lac: u32,
    pub cell_id: u64,
    /// Signal strength as sent; `None` when the message has none for this cell.
    pub rssi: Option<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub gps: Gps,
    pub cell: Option<Cell>,
    /// 0x22 family: ACC byte.
    pub acc: Option<bool>,
    /// 0x22 family: data upload mode 0x00..=0x0F.
    pub upload_mode: Option<u8>,
    /// 0x22 family: true when re-uploaded (buffered) rather than real time.
    pub reupload: bool,
    /// Odometer in metres, when the frame carries it.
    pub mileage_m: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    /// Absent for 0x19 (LBS-only alarm).
    pub gps: Option<Gps>,
    pub cell: Option<Cell>,
    pub terminal_info: TerminalInfo,
    pub voltage_level: u8,
    pub gsm_signal: u8,
    /// Alarm byte (1 SOS, 2 power cut, 3 vibration, 4/5 fence in/out, 6 overspeed, ...).
    pub alarm_code: u8,
    pub language: u8,
    /// 0x27: fence number.
    pub fence: Option<u8>,
    pub mileage_m: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbsReport {
    pub time: DateTime<Utc>,
    /// Serving cell first, then neighbours (zero-filled neighbours are dropped).
    pub cells: Vec<Cell>,
    pub timing_advance: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WifiAp {
    pub mac: [u8; 6],
    /// Signal as sent.
    pub rssi: i16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WifiReport {
    pub time: DateTime<Utc>,
    /// The 6 time bytes exactly as received: 0x69/0x17 replies echo them.
    pub time_raw: [u8; 6],
    pub cells: Vec<Cell>,
    pub aps: Vec<WifiAp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    pub server_flag: u32,
    /// Reply text, decoded from ASCII or UTF-16BE.
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineCommand {
    pub server_flag: u32,
    /// ASCII command text, e.g. `STATUS#`.
    pub command: String,
}

impl Message {
    /// 0x94 sub-type 0x00 (and the 2-byte form of 0x0B): external power in volts
    /// (WORD x 0.01 V).
    pub fn info_external_volts(&self) -> Option<f64> {
        match self {
            Message::Info {
                sub_type: 0x00,
                data,
            } if data.len() >= 2 => Some(f64::from(u16::from_be_bytes([data[0], data[1]])) / 100.0),
            Message::Info {
                sub_type: 0x0B,
                data,
            } if data.len() == 2 => Some(f64::from(u16::from_be_bytes([data[0], data[1]])) / 100.0),
            _ => None,
        }
    }

    /// 0x94 sub-type 0x0A: the SIM's ICCID (bytes 16..26 as BCD, trailing `F` padding
    /// removed); `None` when the data is too short or not BCD.
    pub fn info_iccid(&self) -> Option<String> {
        let Message::Info {
            sub_type: 0x0A,
            data,
        } = self
        else {
            return None;
        };
        let bcd = data.get(16..26)?;
        let mut s = String::with_capacity(20);
        for nibble in bcd.iter().flat_map(|b| [b >> 4, b & 0x0F]) {
            match nibble {
                0..=9 => s.push(char::from(b'0' + nibble)),
                0x0F => break,
                _ => return None,
            }
        }
        Some(s)
    }
}
