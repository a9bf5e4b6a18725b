//! JT/T 808 (and JT/T 1078 / Su-biao signalling) message bodies as typed values: the
//! contract between the codec and the JT/T 808 channel. Field meanings and units follow the
//! shared JT/T 808 reference (section numbers in the docs); raw integers are kept where the
//! wire has them (1e-6 degrees, 0.1 km/h, flag words) with helpers for the derived values,
//! so decode -> encode reproduces the body byte for byte.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

/// A BCD[6] `YYMMDDhhmmss` time as sent (GMT+8 by convention). Kept raw so all-zero or
/// otherwise invalid times from field devices survive a round trip; [`BcdTime::naive`]
/// reads it, [`BcdTime::to_utc`] applies the GMT+8 convention (the channel may choose
/// another zone from the naive value).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BcdTime(pub [u8; 6]);

impl BcdTime {
    /// The time as written, years 2000..=2099; `None` for non-BCD bytes or an invalid date.
    pub fn naive(&self) -> Option<NaiveDateTime> {
        let mut v = [0u32; 6];
        for (slot, &b) in v.iter_mut().zip(self.0.iter()) {
            let (hi, lo) = (b >> 4, b & 0x0F);
            if hi > 9 || lo > 9 {
                return None;
            }
            *slot = u32::from(hi) * 10 + u32::from(lo);
        }
        NaiveDate::from_ymd_opt(2000 + v[0] as i32, v[1], v[2])?.and_hms_opt(v[3], v[4], v[5])
    }

    /// [`BcdTime::naive`] read as GMT+8, in UTC.
    pub fn to_utc(&self) -> Option<DateTime<Utc>> {
        Some((self.naive()? - Duration::hours(8)).and_utc())
    }

    /// Writes a naive time; `None` outside years 2000..=2099.
    pub fn from_naive(t: NaiveDateTime) -> Option<BcdTime> {
        use chrono::{Datelike, Timelike};
        let year = t.year() - 2000;
        if !(0..=99).contains(&year) {
            return None;
        }
        let parts = [
            year as u32,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        ];
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = (((p / 10) as u8) << 4) | (p % 10) as u8;
        }
        Some(BcdTime(out))
    }

    /// A UTC instant written as GMT+8 (what the platform sends in 0x9201/0x9205/...).
    pub fn from_utc(t: DateTime<Utc>) -> Option<BcdTime> {
        BcdTime::from_naive(t.naive_utc() + Duration::hours(8))
    }
}

impl std::fmt::Debug for BcdTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.naive() {
            Some(t) => write!(f, "BcdTime({t})"),
            None => write!(f, "BcdTime(raw {:02x?})", self.0),
        }
    }
}

/// Every message body the codec knows, by message id. Bodies are the same in both
/// directions of a round trip; the direction is noted per variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 0x0001 terminal general response (terminal -> platform).
    TerminalResponse(GeneralResponse),
    /// 0x0002 heartbeat (empty).
    Heartbeat,
    /// 0x0003 logout (empty).
    Logout,
    /// 0x0100 register.
    Register(Register),
    /// 0x0102 authentication.
    Auth(Auth),
    /// 0x0104 query-parameters reply.
    ParamsReply(ParamsReply),
    /// 0x0107 terminal attributes.
    Attributes(Attributes),
    /// 0x0200 location report.
    Location(Location),
    /// 0x0201 position query reply.
    LocationReply {
        reply_serial: u16,
        location: Location,
    },
    /// 0x0704 batch / blind-area upload.
    BatchLocation(BatchLocation),
    /// 0x0800 multimedia event.
    MediaEvent(MediaEvent),
    /// 0x0801 multimedia data (the reassembled body; see `subpackage`).
    MediaData(MediaData),
    /// 0x0900 uplink transparent data.
    Transparent { kind: u8, data: Vec<u8> },
    /// 0x1003 audio/video attributes (JT/T 1078).
    AvAttributes(AvAttributes),
    /// 0x1005 passenger flow (JT/T 1078).
    PassengerFlow(PassengerFlow),
    /// 0x1205 audio/video resource list (JT/T 1078).
    ResourceList(ResourceList),
    /// 0x1206 FTP upload finished (JT/T 1078).
    FileUploadResult { reply_serial: u16, result: u8 },

    /// 0x8001 platform general response (platform -> terminal).
    PlatformResponse(GeneralResponse),
    /// 0x8003 request to resend subpackages.
    ResendRequest(ResendRequest),
    /// 0x8100 register response.
    RegisterResponse(RegisterResponse),
    /// 0x8103 set parameters.
    SetParams(Vec<Param>),
    /// 0x8104 query all parameters (empty).
    QueryAllParams,
    /// 0x8105 terminal control.
    TerminalControl { command: u8, params: String },
    /// 0x8106 query the given parameters.
    QueryParams(Vec<u32>),
    /// 0x8107 query terminal attributes (empty).
    QueryAttributes,
    /// 0x8201 position query (empty).
    LocationQuery,
    /// 0x8300 text message.
    Text(Text),
    /// 0x8801 take a picture / video now.
    CameraShoot(CameraShoot),
    /// 0x9003 query audio/video attributes (empty).
    QueryAvAttributes,
    /// 0x9101 real-time audio/video request.
    LiveRequest(LiveRequest),
    /// 0x9102 real-time audio/video control.
    LiveControl(LiveControl),
    /// 0x9201 playback request.
    PlaybackRequest(PlaybackRequest),
    /// 0x9202 playback control.
    PlaybackControl(PlaybackControl),
    /// 0x9205 query resource list.
    ResourceQuery(ResourceQuery),
    /// 0x9206 file upload (FTP) command.
    FileUpload(FileUpload),
    /// 0x9207 file upload control.
    FileUploadControl { reply_serial: u16, control: u8 },
    /// 0x9208 alarm attachment upload (Su-biao).
    AttachmentUpload(AttachmentUpload),

    /// A subpackage slice, before reassembly: the header's `package` says which.
    Fragment(Vec<u8>),
    /// A message id this codec does not model; the body is kept raw.
    Unknown(Vec<u8>),
    /// A known message id whose body does not parse (too short, bad count...). Kept raw
    /// with the reason, so the channel can log it and keep the connection.
    Invalid { body: Vec<u8>, reason: &'static str },
}

/// 0x0001 / 0x8001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneralResponse {
    /// Serial of the message answered.
    pub reply_serial: u16,
    /// Id of the message answered.
    pub reply_id: u16,
    /// 0 ok, 1 failure, 2 message error, 3 not supported, 4 (0x8001 only) alarm confirmed.
    pub result: u8,
}

/// Which of the three 0x0100 layouts a body uses (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterLayout {
    /// Model 8 bytes, terminal id 7.
    V2011,
    /// Model 20 bytes, terminal id 7.
    V2013,
    /// Manufacturer 11 bytes, model 30, terminal id 30.
    V2019,
}

/// 0x0100. Fixed-width text fields are read up to the first NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub layout: RegisterLayout,
    pub province: u16,
    pub city: u16,
    pub manufacturer: String,
    pub model: String,
    pub terminal_id: String,
    /// 0 no plate (then `plate` is the VIN), 1 blue, 2 yellow, 3 black, 4 white, 5 green, 9 other.
    pub plate_color: u8,
    /// GBK on the wire.
    pub plate: String,
}

/// 0x8100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterResponse {
    pub reply_serial: u16,
    /// 0 ok, 1 vehicle registered, 2 vehicle unknown, 3 terminal registered, 4 terminal unknown.
    pub result: u8,
    /// Present only with result 0.
    pub auth_code: Option<String>,
}

/// 0x0102.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub auth_code: String,
    /// 2019 only: 15 ASCII digits.
    pub imei: Option<String>,
    /// 2019 only: 20 bytes, NUL padded.
    pub software_version: Option<String>,
}

/// A terminal parameter (0x8103 / 0x0104 item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub id: u32,
    pub value: ParamValue,
}

/// A parameter value, typed by the standard's parameter table ([`param_kind`]); ids not in
/// the table, and values whose length does not match it, are kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Byte(u8),
    Word(u16),
    Dword(u32),
    /// GBK text.
    Text(String),
    Bytes(Vec<u8>),
}

/// The value type the standard fixes for a parameter id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Byte,
    Word,
    Dword,
    Text,
}

/// The parameter table of §4.8 (JT/T 808-2019 with the 2013 ids it kept).
pub fn param_kind(id: u32) -> Option<ParamKind> {
    use ParamKind::*;
    Some(match id {
        0x0001..=0x0007 => Dword,
        0x0010..=0x0017 => Text,
        0x0018 | 0x0019 => Dword,
        0x001A => Text,
        0x001B | 0x001C => Dword,
        0x001D => Text,
        0x0020..=0x0022 => Dword,
        0x0023..=0x0026 => Text,
        0x0027..=0x0029 => Dword,
        0x002C..=0x0030 => Dword,
        0x0031 => Word,
        0x0040..=0x0044 => Text,
        0x0045..=0x0047 => Dword,
        0x0048 | 0x0049 => Text,
        0x0050..=0x005A => Dword,
        0x005B..=0x005E => Word,
        0x0064 | 0x0065 => Dword,
        0x0070..=0x0074 => Dword,
        0x0080 => Dword,
        0x0081 | 0x0082 => Word,
        0x0083 => Text,
        0x0084 => Byte,
        0x0090..=0x0092 => Byte,
        0x0093 => Dword,
        0x0094 => Byte,
        0x0095 => Dword,
        0x0100 | 0x0102 => Dword,
        0x0101 | 0x0103 => Word,
        _ => return None,
    })
}

/// 0x0104.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsReply {
    /// Serial of the 0x8104/0x8106 answered.
    pub reply_serial: u16,
    pub params: Vec<Param>,
}

/// 0x0107. Fixed-width text fields are read up to the first NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// Bit field: bit0 passenger vehicle, bit1 dangerous goods, bit2 freight, bit3 taxi,
    /// bit6 has recorder, bit7 0 vehicle unit / 1 handheld.
    pub terminal_type: u16,
    /// 5 bytes.
    pub manufacturer: String,
    /// 20 bytes (30 in 2019).
    pub model: String,
    /// 7 bytes (30 in 2019).
    pub terminal_id: String,
    /// SIM ICCID, BCD[10] as 20 digits.
    pub iccid: String,
    pub hardware_version: String,
    pub firmware_version: String,
    /// bit0 GPS, bit1 BeiDou, bit2 GLONASS, bit3 Galileo.
    pub gnss: u8,
    /// bit0 GPRS, bit1 CDMA, bit2 TD-SCDMA, bit3 WCDMA, bit4 CDMA2000, bit5 TD-LTE, bit7 other.
    pub comm: u8,
}

/// The 0x0200 alarm word (§4.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AlarmFlags(pub u32);

impl AlarmFlags {
    pub const EMERGENCY: u32 = 1 << 0;
    pub const OVERSPEED: u32 = 1 << 1;
    pub const FATIGUE: u32 = 1 << 2;
    pub const DANGER: u32 = 1 << 3;
    pub const GNSS_FAULT: u32 = 1 << 4;
    pub const GNSS_ANTENNA_OPEN: u32 = 1 << 5;
    pub const GNSS_ANTENNA_SHORT: u32 = 1 << 6;
    pub const POWER_LOW: u32 = 1 << 7;
    pub const POWER_CUT: u32 = 1 << 8;
    pub const OVERSPEED_WARNING: u32 = 1 << 13;
    pub const FATIGUE_WARNING: u32 = 1 << 14;
    pub const AREA: u32 = 1 << 20;
    pub const ROUTE: u32 = 1 << 21;
    pub const ROUTE_DEVIATION: u32 = 1 << 23;
    pub const STOLEN: u32 = 1 << 26;
    pub const ILLEGAL_IGNITION: u32 = 1 << 27;
    pub const ILLEGAL_DISPLACEMENT: u32 = 1 << 28;
    pub const COLLISION: u32 = 1 << 29;
    pub const ROLLOVER: u32 = 1 << 30;
    pub const ILLEGAL_DOOR: u32 = 1 << 31;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// The 0x0200 status word (§4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct StatusFlags(pub u32);

impl StatusFlags {
    pub const ACC: u32 = 1 << 0;
    pub const POSITIONED: u32 = 1 << 1;
    pub const SOUTH: u32 = 1 << 2;
    pub const WEST: u32 = 1 << 3;
    pub const OUT_OF_SERVICE: u32 = 1 << 4;
    pub const FUEL_CUT: u32 = 1 << 10;
    pub const CIRCUIT_CUT: u32 = 1 << 11;
    pub const DOOR_LOCKED: u32 = 1 << 12;
    pub const GPS: u32 = 1 << 18;
    pub const BEIDOU: u32 = 1 << 19;
    pub const GLONASS: u32 = 1 << 20;
    pub const GALILEO: u32 = 1 << 21;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    pub fn acc_on(self) -> bool {
        self.has(Self::ACC)
    }
    pub fn positioned(self) -> bool {
        self.has(Self::POSITIONED)
    }
}

/// The 28-byte basic location block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BasicLocation {
    pub alarm: AlarmFlags,
    pub status: StatusFlags,
    /// Unsigned 1e-6 degrees; the sign is status bit 2 (see [`BasicLocation::latitude`]).
    pub latitude_e6: u32,
    /// Unsigned 1e-6 degrees; the sign is status bit 3.
    pub longitude_e6: u32,
    /// Metres (unsigned per the standard).
    pub altitude_m: u16,
    /// 0.1 km/h.
    pub speed_dkmh: u16,
    /// 0..=359, north 0, clockwise.
    pub course: u16,
    pub time: BcdTime,
}

impl BasicLocation {
    /// Signed decimal degrees (south negative).
    pub fn latitude(&self) -> f64 {
        let v = f64::from(self.latitude_e6) / 1e6;
        if self.status.has(StatusFlags::SOUTH) {
            -v
        } else {
            v
        }
    }
    /// Signed decimal degrees (west negative).
    pub fn longitude(&self) -> f64 {
        let v = f64::from(self.longitude_e6) / 1e6;
        if self.status.has(StatusFlags::WEST) {
            -v
        } else {
            v
        }
    }
    pub fn speed_kmh(&self) -> f64 {
        f64::from(self.speed_dkmh) / 10.0
    }
}

/// 0x0200 (and the body inside 0x0201 / 0x0704).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub basic: BasicLocation,
    /// Additional-information items in wire order.
    pub items: Vec<LocationItem>,
    /// Bytes after the last whole item that do not form an item (vendor padding, a cut
    /// item). Written back unchanged.
    pub trailing: Vec<u8>,
}

impl Location {
    /// The first item with this id, if any.
    pub fn item(&self, id: u8) -> Option<&LocationItem> {
        self.items.iter().find(|i| i.id() == id)
    }
}

/// One additional-information item of a location (§4.6.3, §4.6.4). Known ids whose length
/// differs from the standard's are kept as [`LocationItem::Raw`], never rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationItem {
    /// 0x01 odometer, 0.1 km.
    Mileage(u32),
    /// 0x02 fuel, 0.1 L.
    Fuel(u16),
    /// 0x03 recorder speed, 0.1 km/h.
    RecorderSpeed(u16),
    /// 0x04 id of an alarm event needing manual confirmation.
    AlarmEventId(u16),
    /// 0x05 tyre pressure per tyre (30 bytes, 0xFF = n/a; 2019).
    TyrePressure(Vec<u8>),
    /// 0x06 compartment temperature, degrees C (2019).
    CompartmentTemperature(i16),
    /// 0x11 overspeed: location type 0..=4 and the area/section id when type != 0.
    Overspeed {
        location_type: u8,
        area_id: Option<u32>,
    },
    /// 0x12 area/route in-out alarm.
    AreaAlarm {
        location_type: u8,
        area_id: u32,
        direction: u8,
    },
    /// 0x13 road-section driving time too short (0) / too long (1).
    SectionTime {
        section_id: u32,
        seconds: u16,
        result: u8,
    },
    /// 0x14 JT/T 1078 video alarms (bit0 signal loss, 1 occlusion, 2 storage fault, 3 other
    /// device fault, 4 overcrowded, 5 abnormal driving, 6 storage threshold).
    VideoAlarms(u32),
    /// 0x15 video signal loss, bit n = logical channel n+1.
    VideoSignalLoss(u32),
    /// 0x16 video occlusion, bit n = logical channel n+1.
    VideoOcclusion(u32),
    /// 0x17 storage fault: bits 0..=11 main storage 1..=12, 12..=15 backup 1..=4.
    StorageFault(u16),
    /// 0x18 abnormal driving: bit0 fatigue, bit1 phone, bit2 smoking; fatigue degree 0..=100.
    AbnormalDriving { behaviour: u16, fatigue: u8 },
    /// 0x25 extended vehicle signals (lights, brake, reverse...).
    ExtendedSignals(u32),
    /// 0x2A IO status: bit0 deep sleep, bit1 sleep.
    IoStatus(u16),
    /// 0x2B analog: bits 0..=15 AD0, 16..=31 AD1.
    Analog(u32),
    /// 0x30 wireless signal strength.
    Signal(u8),
    /// 0x31 GNSS satellites used.
    Satellites(u8),
    /// 0x64 Su-biao ADAS alarm.
    Adas(AdasAlarm),
    /// 0x65 Su-biao driver-state (DSM) alarm.
    Dsm(DsmAlarm),
    /// 0x66 Su-biao tyre-pressure (TPMS) alarm.
    Tpms(TpmsAlarm),
    /// 0x67 Su-biao blind-spot (BSD) alarm.
    Bsd(BsdAlarm),
    /// Any other id (vendor 0xE1..=0xFF...), or a known id with an unexpected length.
    Raw { id: u8, value: Vec<u8> },
}

impl LocationItem {
    pub fn id(&self) -> u8 {
        match self {
            LocationItem::Mileage(_) => 0x01,
            LocationItem::Fuel(_) => 0x02,
            LocationItem::RecorderSpeed(_) => 0x03,
            LocationItem::AlarmEventId(_) => 0x04,
            LocationItem::TyrePressure(_) => 0x05,
            LocationItem::CompartmentTemperature(_) => 0x06,
            LocationItem::Overspeed { .. } => 0x11,
            LocationItem::AreaAlarm { .. } => 0x12,
            LocationItem::SectionTime { .. } => 0x13,
            LocationItem::VideoAlarms(_) => 0x14,
            LocationItem::VideoSignalLoss(_) => 0x15,
            LocationItem::VideoOcclusion(_) => 0x16,
            LocationItem::StorageFault(_) => 0x17,
            LocationItem::AbnormalDriving { .. } => 0x18,
            LocationItem::ExtendedSignals(_) => 0x25,
            LocationItem::IoStatus(_) => 0x2A,
            LocationItem::Analog(_) => 0x2B,
            LocationItem::Signal(_) => 0x30,
            LocationItem::Satellites(_) => 0x31,
            LocationItem::Adas(_) => 0x64,
            LocationItem::Dsm(_) => 0x65,
            LocationItem::Tpms(_) => 0x66,
            LocationItem::Bsd(_) => 0x67,
            LocationItem::Raw { id, .. } => *id,
        }
    }
}

/// Su-biao alarm identification (16 bytes, T/JSATL12-2017 national variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AlarmLabel {
    /// 7 ASCII bytes.
    pub terminal_id: [u8; 7],
    pub time: BcdTime,
    /// Sequence of alarms at the same time.
    pub seq: u8,
    pub attachments: u8,
    pub reserved: u8,
}

impl AlarmLabel {
    /// The terminal id up to the first NUL, lossy ASCII.
    pub fn terminal_id_str(&self) -> String {
        let end = self.terminal_id.iter().position(|&b| b == 0).unwrap_or(7);
        String::from_utf8_lossy(&self.terminal_id[..end]).into_owned()
    }
}

/// The tail every Su-biao alarm item shares (35 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SafetyCommon {
    pub speed_kmh: u8,
    pub altitude_m: u16,
    pub latitude_e6: u32,
    pub longitude_e6: u32,
    pub time: BcdTime,
    pub vehicle_status: u16,
    pub label: AlarmLabel,
}

/// 0x64 (47 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdasAlarm {
    pub alarm_id: u32,
    /// 0 n/a, 1 start, 2 end.
    pub flag: u8,
    /// 1 forward collision, 2 lane departure, 3 headway, 4 pedestrian, 5 lane change,
    /// 6 road sign over limit, 7 obstacle, 8 ADAS failure, 0x10 road sign, 0x11 capture.
    pub kind: u8,
    pub level: u8,
    pub front_speed_kmh: u8,
    /// 100 ms units.
    pub front_distance: u8,
    /// 1 left, 2 right.
    pub departure: u8,
    pub road_sign_type: u8,
    pub road_sign_value: u8,
    pub common: SafetyCommon,
}

/// 0x65 (47 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsmAlarm {
    pub alarm_id: u32,
    pub flag: u8,
    /// 1 fatigue, 2 phone call, 3 smoking, 4 distracted, 5 driver abnormal, 6 hands off,
    /// 7 DSM failure, 0x10 auto capture, 0x11 driver change.
    pub kind: u8,
    pub level: u8,
    /// 1..=10.
    pub fatigue: u8,
    pub reserved: [u8; 4],
    pub common: SafetyCommon,
}

/// One tyre of a 0x66 item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TyreAlarm {
    pub position: u8,
    /// 0 periodic, 1 high pressure, 2 low, 3 high temperature, 4 sensor fault, 5 imbalance,
    /// 6 slow leak, 7 low battery.
    pub alarms: u16,
    /// kPa.
    pub pressure: u16,
    /// Degrees C.
    pub temperature: u16,
    /// Percent.
    pub battery: u16,
}

/// 0x66 (41 + 9n bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TpmsAlarm {
    pub alarm_id: u32,
    pub flag: u8,
    pub common: SafetyCommon,
    pub tyres: Vec<TyreAlarm>,
}

/// 0x67 (41 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BsdAlarm {
    pub alarm_id: u32,
    pub flag: u8,
    /// 1 rear approach, 2 left rear, 3 right rear.
    pub kind: u8,
    pub common: SafetyCommon,
}

/// 0x0704.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLocation {
    /// 0 normal batch, 1 blind-area backfill.
    pub kind: u8,
    pub items: Vec<Location>,
}

/// 0x0800.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaEvent {
    pub media_id: u32,
    /// 0 image, 1 audio, 2 video.
    pub media_type: u8,
    /// 0 JPEG, 1 TIF, 2 MP3, 3 WAV, 4 WMV.
    pub format: u8,
    /// 0 platform command, 1 timed, 2 robbery, 3 collision, 4 door open, 5 door close,
    /// 6 door closed at speed, 7 distance.
    pub event: u8,
    pub channel: u8,
}

/// 0x0801 (whole body: the first subpackage holds the 36-byte head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaData {
    pub event: MediaEvent,
    pub location: BasicLocation,
    pub data: Vec<u8>,
}

/// 0x1003.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvAttributes {
    /// JT/T 1078 table 12 (6 G.711A, 7 G.711U, 8 G.726, 19 AAC...).
    pub audio_codec: u8,
    pub audio_channels: u8,
    /// 0 8 kHz, 1 22.05, 2 44.1, 3 48.
    pub sample_rate: u8,
    /// 0 8 bit, 1 16, 2 32.
    pub sample_bits: u8,
    pub audio_frame_len: u16,
    pub audio_output: bool,
    /// 98 H.264, 99 H.265.
    pub video_codec: u8,
    pub max_audio_channels: u8,
    pub max_video_channels: u8,
}

/// 0x1005.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassengerFlow {
    pub start: BcdTime,
    pub end: BcdTime,
    pub boarding: u16,
    pub alighting: u16,
}

/// One 0x1205 entry (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvResource {
    pub channel: u8,
    pub start: BcdTime,
    pub end: BcdTime,
    /// Bits 0..=31 the 0x0200 alarm word, 32..=63 the video alarms (0x14 bit order).
    pub alarm: u64,
    /// 0 audio+video, 1 audio, 2 video.
    pub av_type: u8,
    /// 1 main, 2 sub.
    pub stream: u8,
    /// 1 main, 2 backup.
    pub storage: u8,
    pub size: u32,
}

/// 0x1205.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceList {
    pub reply_serial: u16,
    pub items: Vec<AvResource>,
}

/// 0x8003: the packages of the message whose first packet had `original_serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendRequest {
    pub original_serial: u16,
    /// 1-based package indexes. The count is a BYTE in 2011/2013 and a WORD in 2019.
    pub indexes: Vec<u16>,
}

/// 0x8300.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// 2013: bit0 urgent, bit2 display, bit3 TTS, bit4 ad screen, bit5 CAN fault.
    /// 2019: bits 0..=1 1 service / 2 urgent / 3 notice, bit2 display, bit3 TTS.
    pub flag: u8,
    /// 2019 only: 1 notice, 2 service.
    pub text_type: Option<u8>,
    /// GBK on the wire.
    pub text: String,
}

/// 0x8801 (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraShoot {
    pub channel: u8,
    /// 0 stop, 0xFFFF record video, else number of pictures.
    pub command: u16,
    /// Seconds between pictures, or video length.
    pub interval: u16,
    /// 1 save, 0 upload now.
    pub save: u8,
    pub resolution: u8,
    /// 1..=10.
    pub quality: u8,
    pub brightness: u8,
    pub contrast: u8,
    pub saturation: u8,
    pub chroma: u8,
}

/// 0x9101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRequest {
    /// IP or host name of the media server (length-prefixed, at most 255 bytes).
    pub server: String,
    pub tcp_port: u16,
    /// 0 = unused.
    pub udp_port: u16,
    pub channel: u8,
    /// 0 audio+video, 1 video, 2 talk, 3 listen, 4 broadcast, 5 passthrough.
    pub data_type: u8,
    /// 0 main, 1 sub.
    pub stream: u8,
}

/// 0x9102.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveControl {
    pub channel: u8,
    /// 0 close, 1 switch stream, 2 pause, 3 resume, 4 close talk.
    pub command: u8,
    /// 0 audio+video, 1 audio only, 2 video only.
    pub close_kind: u8,
    /// 0 main, 1 sub.
    pub stream: u8,
}

/// 0x9201.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackRequest {
    pub server: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub channel: u8,
    /// 0 AV, 1 audio, 2 video, 3 audio or video.
    pub av_type: u8,
    /// 0 any, 1 main, 2 sub.
    pub stream: u8,
    /// 0 any, 1 main, 2 backup.
    pub storage: u8,
    /// 0 normal, 1 fast-forward, 2 key-frame rewind, 3 key-frame play, 4 single frame.
    pub mode: u8,
    /// 0 n/a, 1 x1, 2 x2, 3 x4, 4 x8, 5 x16.
    pub speed: u8,
    pub start: BcdTime,
    pub end: BcdTime,
}

/// 0x9202.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaybackControl {
    pub channel: u8,
    /// 0 start, 1 pause, 2 stop, 3 fast-forward, 4 key-frame rewind, 5 seek, 6 key-frame play.
    pub control: u8,
    pub speed: u8,
    /// Seek position (control 5).
    pub position: BcdTime,
}

/// 0x9205.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceQuery {
    /// 0 = all.
    pub channel: u8,
    /// All zero = unbounded.
    pub start: BcdTime,
    pub end: BcdTime,
    /// 0 = no filter.
    pub alarm: u64,
    pub av_type: u8,
    pub stream: u8,
    pub storage: u8,
}

/// 0x9206.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpload {
    pub server: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub path: String,
    pub channel: u8,
    pub start: BcdTime,
    pub end: BcdTime,
    pub alarm: u64,
    pub av_type: u8,
    pub stream: u8,
    pub storage: u8,
    /// bit0 WiFi, bit1 LAN, bit2 3G/4G.
    pub conditions: u8,
}

/// 0x9208.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentUpload {
    pub server: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub label: AlarmLabel,
    /// Alarm number assigned by the platform (32 bytes, usually ASCII).
    pub alarm_number: [u8; 32],
    pub reserved: [u8; 16],
}
