//! What devices tell us, in the shape customers already parse.
//!
//! Each [`Event`] is one `data_list` item of a Jimi push (`/pushgps`, `/pushalarm`, ...),
//! with the exact field names and formats of the Jimi push interface: times are UTC
//! `yyyy-MM-dd HH:mm:ss`, coordinates signed decimal degrees. The same JSON is what goes into
//! Kafka (one topic per [`Topic`], keyed by IMEI) and into the embedded log, so a record is
//! serialized once, when it is published, and delivered byte for byte.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::imei::Imei;

/// Formats a time the way every Jimi push and API field does: UTC, `yyyy-MM-dd HH:mm:ss`.
pub fn jimi_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // Every event carries one or two of these; chrono's `format` parses its pattern on each
    // call, which cost more than building the rest of a GPS record.
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%d %H:%M:%S").to_string();
    }
    let mut out = String::with_capacity(19);
    let mut push = |n: u32, digits: u32, then: Option<char>| {
        for d in (0..digits).rev() {
            let digit = (n / 10u32.pow(d)) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
        if let Some(c) = then {
            out.push(c);
        }
    };
    push(year.unsigned_abs(), 4, Some('-'));
    push(t.month(), 2, Some('-'));
    push(t.day(), 2, Some(' '));
    push(t.hour(), 2, Some(':'));
    push(t.minute(), 2, Some(':'));
    push(t.second(), 2, None);
    out
}

/// A stream of events of one kind: a Kafka topic, an embedded-log table and a push target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topic {
    /// Login and logout, pushed to `{pushURL}/pushevent`.
    Event,
    /// Heartbeats, `{pushURL}/pushhb`.
    Heartbeat,
    /// Positions, `{pushURL}/pushgps`.
    Gps,
    /// Alarms, `{pushURL}/pushalarm`.
    Alarm,
    /// LBS and WiFi reports, `{pushURL}/pushlbs`.
    Lbs,
    /// Replies to offline instructions, `{pushURL}/pushInstructResponse` with `msgType=2`.
    InstructResponse,
    /// Replies to offline instructions as a single object to `offlineCmdPushURL` (no path added).
    OfflineCommandCallback,
    /// JT/T 1078 audio/video resource lists (0x1205), `{pushURL}/pushresourcelist`.
    ResourceList,
    /// JT/T 1078 FTP upload results (0x1206), `{pushURL}/pushftpfileupload`.
    FtpFileUpload,
    /// JT/T 808 transparent data (0x0900), `{pushURL}/pushPassThroughData`.
    PassThrough,
    /// Hub events about a device: media streams starting and stopping,
    /// `{pushURL}/pushIothubEvent`.
    IothubEvent,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Topic::Event,
        Topic::Heartbeat,
        Topic::Gps,
        Topic::Alarm,
        Topic::Lbs,
        Topic::InstructResponse,
        Topic::OfflineCommandCallback,
        Topic::ResourceList,
        Topic::FtpFileUpload,
        Topic::PassThrough,
        Topic::IothubEvent,
    ];

    /// Short stable name: Kafka topic suffix (`{topicPrefix}.{name}`) and embedded table name.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Event => "event",
            Topic::Heartbeat => "hb",
            Topic::Gps => "gps",
            Topic::Alarm => "alarm",
            Topic::Lbs => "lbs",
            Topic::InstructResponse => "instruct_response",
            Topic::OfflineCommandCallback => "offline_cmd_callback",
            Topic::ResourceList => "resource_list",
            Topic::FtpFileUpload => "ftp_file_upload",
            Topic::PassThrough => "pass_through",
            Topic::IothubEvent => "iothub_event",
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Path appended to `pushURL`; `None` for the offline callback, which posts to its own URL.
    pub fn push_path(self) -> Option<&'static str> {
        match self {
            Topic::Event => Some("/pushevent"),
            Topic::Heartbeat => Some("/pushhb"),
            Topic::Gps => Some("/pushgps"),
            Topic::Alarm => Some("/pushalarm"),
            Topic::Lbs => Some("/pushlbs"),
            Topic::InstructResponse => Some("/pushInstructResponse"),
            Topic::OfflineCommandCallback => None,
            Topic::ResourceList => Some("/pushresourcelist"),
            Topic::FtpFileUpload => Some("/pushftpfileupload"),
            Topic::PassThrough => Some("/pushPassThroughData"),
            Topic::IothubEvent => Some("/pushIothubEvent"),
        }
    }
}

/// Bytes to reserve for one record's JSON: a location record is 300 to 400 bytes.
pub const JSON_CAPACITY: usize = 512;

/// One device event: which stream it belongs to, whose it is, and its push record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub topic: Topic,
    pub imei: Imei,
    pub record: Record,
}

impl Event {
    /// The record as the JSON object that is stored, produced to Kafka and pushed.
    pub fn to_json(&self) -> Vec<u8> {
        // One allocation instead of growing from serde_json's 128 bytes by doubling.
        let mut json = Vec::with_capacity(JSON_CAPACITY);
        self.write_json(&mut json);
        json
    }

    /// Appends [`Event::to_json`]'s bytes to `out`, so that a caller can reuse its buffers.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if let Record::Gps(gps) = &self.record {
            gps.write_json(out);
            return;
        }
        let start = out.len();
        // Serializing these plain structs into memory cannot fail.
        if serde_json::to_writer(&mut *out, &self.record).is_err() {
            out.truncate(start);
        }
    }
}

/// Appends `value` as serde_json writes it (numbers, `null` for a non-finite float).
fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `value` as a JSON string. The strings of a GPS record (times, hex) never need
/// escaping, so they are copied as they are; any other string goes through serde_json.
fn json_str(out: &mut Vec<u8>, value: &str) {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        json_value(out, value);
    }
}

/// Appends `key` (the comma, the quoted name and the colon) and `value`.
fn json_field<T: Serialize>(out: &mut Vec<u8>, key: &[u8], value: &T) {
    out.extend_from_slice(key);
    json_value(out, value);
}

/// Appends `,"key":value` when `value` is present.
fn json_optional<T: Serialize>(out: &mut Vec<u8>, key: &[u8], value: &Option<T>) {
    if let Some(v) = value {
        json_field(out, key, v);
    }
}

/// The push records, one variant per Jimi push endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Record {
    Login(LoginRecord),
    Heartbeat(HeartbeatRecord),
    Gps(GpsRecord),
    Alarm(AlarmRecord),
    Lbs(LbsRecord),
    InstructResponse(InstructResponseRecord),
    OfflineCommandCallback(OfflineCommandCallback),
    ResourceList(ResourceListRecord),
    FtpFileUpload(FtpFileUploadRecord),
    PassThrough(PassThroughRecord),
    MediaStream(MediaStreamRecord),
}

impl Record {
    /// The stream the record belongs to.
    pub fn topic(&self) -> Topic {
        match self {
            Record::Login(_) => Topic::Event,
            Record::Heartbeat(_) => Topic::Heartbeat,
            Record::Gps(_) => Topic::Gps,
            Record::Alarm(_) => Topic::Alarm,
            Record::Lbs(_) => Topic::Lbs,
            Record::InstructResponse(_) => Topic::InstructResponse,
            Record::OfflineCommandCallback(_) => Topic::OfflineCommandCallback,
            Record::ResourceList(_) => Topic::ResourceList,
            Record::FtpFileUpload(_) => Topic::FtpFileUpload,
            Record::PassThrough(_) => Topic::PassThrough,
            Record::MediaStream(_) => Topic::IothubEvent,
        }
    }
}

/// `/pushevent` item (Jimi §1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRecord {
    pub device_imei: Imei,
    /// `LOGIN` or `LOGOUT`.
    #[serde(rename = "type")]
    pub kind: String,
    pub gate_time: String,
    /// Device time zone as `GMT+08:00`; `GMT+00:00` when the device did not say.
    pub timezone: String,
}

/// `/pushhb` item (Jimi §1.2): the bits and bytes of the GT06 status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRecord {
    pub device_imei: Imei,
    pub gate_time: String,
    /// Voltage level 0..=6, or battery percent on devices that report volts.
    pub power_level: u32,
    /// GSM signal 0..=4.
    pub gsm_sign: u32,
    /// 1 ACC on, 0 off.
    pub acc: u8,
    /// 0 oil and electricity connected, 1 cut.
    pub oil_ele: u8,
    /// 1 GPS positioned.
    pub gps_pos: u8,
    /// 1 remote lock (oil cut) engaged.
    pub remote_lock: u8,
    /// 1 charging / external power connected.
    pub power_status: u8,
    /// 1 armed.
    pub fortify: u8,
    /// Battery voltage in volts when the device reports it (0x23), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voltage: Option<f64>,
}

/// `/pushgps` item (Jimi §1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpsRecord {
    pub device_imei: Imei,
    pub gps_time: String,
    pub gate_time: String,
    pub satellite_num: u32,
    pub lng: f64,
    pub lat: f64,
    /// 0 real time, 1 re-upload.
    pub gps_mode: u8,
    /// km/h.
    pub gps_speed: f64,
    /// Course in degrees, 0 = north, clockwise.
    pub direction: u32,
    /// 1 ACC on, 0 off.
    pub acc: u8,
    /// 1 GPS, 2 LBS, 3 WiFi.
    pub post_type: u8,
    /// Upload reason (GT06 "data upload mode", 0x00..=0x0F), when the frame carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_method: Option<u8>,
    /// Metres.
    pub altitude: f64,
    /// Odometer in metres.
    pub distance: u64,
    /// Status bitmask: bit0 ACC, bit1 positioned, bit2 south, bit3 west, bit4 re-upload
    /// (the JT/T 808 status word for JT/T devices).
    pub status: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcc: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mnc: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lac: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<u64>,
    /// What JT/T 808 additional-information items add; empty for GT06.
    #[serde(flatten)]
    pub extra: GpsExtra,
}

impl GpsRecord {
    /// Appends the record's JSON: byte for byte what its derived `Serialize` gives through
    /// serde_json (a property test holds the two together), written directly. Every location
    /// frame of every device is serialized once, and the generic path, which escapes each
    /// static key and goes through serde's map machinery for the flattened `extra`, cost more
    /// than decoding the frame.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"deviceImei\":");
        json_str(out, self.device_imei.as_str());
        out.extend_from_slice(b",\"gpsTime\":");
        json_str(out, &self.gps_time);
        out.extend_from_slice(b",\"gateTime\":");
        json_str(out, &self.gate_time);
        json_field(out, b",\"satelliteNum\":", &self.satellite_num);
        json_field(out, b",\"lng\":", &self.lng);
        json_field(out, b",\"lat\":", &self.lat);
        json_field(out, b",\"gpsMode\":", &self.gps_mode);
        json_field(out, b",\"gpsSpeed\":", &self.gps_speed);
        json_field(out, b",\"direction\":", &self.direction);
        json_field(out, b",\"acc\":", &self.acc);
        json_field(out, b",\"postType\":", &self.post_type);
        json_optional(out, b",\"postMethod\":", &self.post_method);
        json_field(out, b",\"altitude\":", &self.altitude);
        json_field(out, b",\"distance\":", &self.distance);
        json_field(out, b",\"status\":", &self.status);
        json_optional(out, b",\"mcc\":", &self.mcc);
        json_optional(out, b",\"mnc\":", &self.mnc);
        json_optional(out, b",\"lac\":", &self.lac);
        json_optional(out, b",\"cellId\":", &self.cell_id);
        let extra = &self.extra;
        json_optional(out, b",\"alarmFlag\":", &extra.alarm_flag);
        json_optional(out, b",\"fuel\":", &extra.fuel);
        json_optional(out, b",\"recorderSpeed\":", &extra.recorder_speed);
        json_optional(out, b",\"alarmEventId\":", &extra.alarm_event_id);
        json_optional(out, b",\"extendedSignals\":", &extra.extended_signals);
        json_optional(out, b",\"ioStatus\":", &extra.io_status);
        json_optional(out, b",\"analog\":", &extra.analog);
        json_optional(out, b",\"gsmSign\":", &extra.gsm_sign);
        if let Some(hex) = &extra.undecoded_gps_add_info {
            out.extend_from_slice(b",\"undecodedGpsAddInfo\":");
            json_str(out, hex);
        }
        out.push(b'}');
    }
}

/// The JT/T 808 0x0200 additional-information items of a `/pushgps` record that have no
/// field of the GT06 shape (odometer and satellites go to `distance` and `satelliteNum`).
/// Every field is left out when the report did not carry its item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpsExtra {
    /// The 32-bit JT/T 808 alarm word of the report (0x0200 basic block), when non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_flag: Option<u32>,
    /// Fuel in litres (item 0x02).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<f64>,
    /// Tachograph speed in km/h (item 0x03).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorder_speed: Option<f64>,
    /// Id of an alarm event awaiting manual confirmation (item 0x04).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_event_id: Option<u16>,
    /// Extended vehicle signals bit field (item 0x25).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_signals: Option<u32>,
    /// IO status bit field (item 0x2A).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_status: Option<u16>,
    /// Analog inputs: bits 0..=15 AD0, 16..=31 AD1 (item 0x2B).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analog: Option<u32>,
    /// Wireless signal strength (item 0x30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gsm_sign: Option<u8>,
    /// Items the hub does not map, as uppercase hex of `id len value` triples, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecoded_gps_add_info: Option<String>,
}

/// `/pushalarm` item (Jimi §1.4). Both `imei` and `deviceImei` are set at the top level because
/// integrations in the field read either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmRecord {
    pub gate_time: String,
    pub imei: Imei,
    pub device_imei: Imei,
    /// 0 JIMI/GT06, 1 JT/T 808.
    pub msg_class: u8,
    /// `DEVICE`, `ICCID` or `VIN`.
    #[serde(rename = "type")]
    pub kind: String,
    pub msg: AlarmMsg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmMsg {
    /// GT06 alarm byte for JIMI devices (a JSON number); 256.. for JT/T (a JSON string, as
    /// the Jimi hub sends it).
    pub alert_type: AlertType,
    pub alarm_time: String,
    pub lat: f64,
    pub lng: f64,
    pub gps_speed: f64,
    pub satellite_num: u32,
    pub device_imei: Imei,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_value: Option<u64>,
    /// JT/T 256: the 32-bit JT/T 808 alarm word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard_alarm_value: Option<u32>,
    /// JT/T: serial number of the report that carried the alarm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_serial_no: Option<u16>,
    /// JT/T 264..=267: sub-type of the ADAS/DMS/BSD/TPMS alarm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_type: Option<u8>,
    /// JT/T 264/265: alarm level (1 or 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_level: Option<u8>,
    /// JT/T 260/265: fatigue degree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fatigue_level: Option<u8>,
    /// JT/T 264..=267: the terminal's alarm id (cyclic counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_id: Option<u32>,
    /// JT/T 264..=267: 1 the alarm starts, 2 it ends (Su-biao flag; absent when 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_status: Option<u8>,
    /// JT/T 264..=267: the 16-byte alarm identification as comma-separated hex bytes, the key
    /// of its attachments (0x9208).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_label: Option<String>,
    /// JT/T 257: channels whose video signal is lost, bit n = channel n+1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_drop_channel: Option<u32>,
    /// JT/T 258: channels whose camera is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_cover_channel: Option<u32>,
    /// JT/T 259: storage units in fault, bits 0..=11 main, 12..=15 backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_fault_channel: Option<u16>,
    /// JT/T 264..=267: Su-biao alarms of the same report left out after this one, because a
    /// report yields a bounded number of alarms (absent when none were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_alarms: Option<u32>,
}

/// `alertType`: JIMI devices' codes are JSON numbers, JT/T codes JSON strings (`"256"`), as
/// in the Jimi hub's own pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AlertType {
    Code(u32),
    Text(String),
}

/// `/pushlbs` item (Jimi §1.10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbsRecord {
    pub device_imei: Imei,
    pub gate_time: String,
    /// `LBS` or `WIFI`.
    pub post_type: String,
    /// JSON text `{"mcc":..,"mnc":..,"cellList":"LAC,CI,RSSI;..","wifiList":"MAC,RSSI;.."}`.
    pub lbs_json: String,
    /// Time the device took the reading, when the frame carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_time: Option<String>,
}

/// `/pushInstructResponse` item: shaped like the `data` of a sendInstruct answer (Jimi §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructResponseRecord {
    #[serde(rename = "_code")]
    pub code: String,
    #[serde(rename = "_msg")]
    pub msg: String,
    #[serde(rename = "_imei")]
    pub imei: Imei,
    #[serde(rename = "_proNo")]
    pub pro_no: u32,
    #[serde(rename = "_content")]
    pub content: String,
    #[serde(rename = "_serverFlagId")]
    pub server_flag_id: u64,
    #[serde(rename = "gateTime")]
    pub gate_time: String,
}

/// The single object posted to `offlineCmdPushURL` (Jimi §2.4): no `data_list` envelope.
/// `token` is added by the dispatcher, which knows the configured `offlineCmdPushToken`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineCommandCallback {
    pub code: i32,
    pub msg: String,
    pub data: OfflineCommandCallbackData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineCommandCallbackData {
    #[serde(rename = "_code")]
    pub code: String,
    #[serde(rename = "_imei")]
    pub imei: Imei,
    #[serde(rename = "_content")]
    pub content: String,
    #[serde(rename = "_msg")]
    pub msg: String,
    #[serde(rename = "_serverFlagId")]
    pub server_flag_id: u64,
}

/// `/pushresourcelist` (Jimi §1.11): the audio/video files a terminal holds (0x1205). Times
/// are UTC `yyyy-MM-dd HH:mm:ss`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceListRecord {
    pub imei: Imei,
    pub device_imei: Imei,
    pub gate_time: String,
    pub total_num: u32,
    /// `instructionID` of the 0x9205 query this answers; empty when unknown.
    #[serde(rename = "instructionID")]
    pub instruction_id: String,
    pub resource_list: Vec<ResourceItem>,
}

/// One file of a resource list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceItem {
    pub channel: u8,
    pub begin_time: String,
    pub end_time: String,
    /// Bits 0..=31 the JT/T 808 alarm word, 32..=63 the JT/T 1078 video alarms.
    pub alarm_flag: u64,
    /// 0 audio and video, 1 audio, 2 video.
    pub resource_type: u8,
    /// 1 main stream, 2 sub stream.
    pub code_type: u8,
    /// 1 main storage, 2 backup.
    pub storage_type: u8,
    /// Bytes.
    pub file_size: u32,
}

/// `/pushftpfileupload` (Jimi §1.12): the result of an FTP upload (0x1206).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FtpFileUploadRecord {
    pub imei: Imei,
    pub device_imei: Imei,
    pub gate_time: String,
    /// 0 success, 1 failure.
    pub result: u8,
    /// `instructionID` of the 0x9206 request; empty when unknown.
    #[serde(rename = "instructionID")]
    pub instruction_id: String,
    /// Serial of the 0x9206 request the terminal answers.
    pub reply_serial: u16,
}

/// `/pushPassThroughData` (Jimi §1.14): JT/T 808 transparent data (0x0900).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassThroughRecord {
    pub device_imei: Imei,
    pub gate_time: String,
    /// The transparent message type byte (0x00 GNSS detail, 0x0B IC card, 0x41/0x42 serial
    /// ports, 0xF0..=0xFF vendor).
    pub pass_through_type: u8,
    /// The payload as uppercase hex.
    pub data: String,
}

/// `/pushIothubEvent`: a media stream of a device started or stopped.
///
/// `{"deviceImei":"868120303960873","eventType":"streamStart","stream":"1/868120303960873",
/// "channel":1,"source":"jt1078","gateTime":"2026-12-07 10:00:00"}`; a stop adds `reason`
/// (`publisher_left`, `idle_close`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamRecord {
    pub device_imei: Imei,
    /// `streamStart` or `streamStop`.
    pub event_type: String,
    /// The stream key, which is also the HTTP-FLV path without its `.flv`.
    pub stream: String,
    /// The device's channel in the URL's numbering (JIMI from 0, JT/T from 1); absent for
    /// JIMI history and talk streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u8>,
    /// `jt1078` or `rtmp`.
    pub source: String,
    pub gate_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::{jimi_time, Event, GpsExtra, GpsRecord, Record};
    use crate::imei::Imei;

    fn gt06_fix() -> GpsRecord {
        GpsRecord {
            device_imei: Imei::parse("864717003283581").unwrap(),
            gps_time: "2026-11-27 06:30:00".into(),
            gate_time: "2026-11-27 06:30:01".into(),
            satellite_num: 9,
            lng: 114.053551,
            lat: 22.541355,
            gps_mode: 0,
            gps_speed: 36.0,
            direction: 271,
            acc: 1,
            post_type: 1,
            post_method: None,
            altitude: 0.0,
            distance: 0,
            status: 3,
            mcc: Some(460),
            mnc: Some(0),
            lac: Some(9_580),
            cell_id: Some(3_960),
            extra: GpsExtra::default(),
        }
    }

    fn gps_event(record: GpsRecord) -> Event {
        Event {
            topic: super::Topic::Gps,
            imei: record.device_imei,
            record: Record::Gps(record),
        }
    }

    /// What `write_json` leaves in a buffer that already held `kept`.
    fn written_after_kept(event: &Event) -> Vec<u8> {
        let mut buffer = b"kept".to_vec();
        event.write_json(&mut buffer);
        buffer
    }

    fn written(record: &GpsRecord) -> String {
        let mut out = Vec::new();
        record.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_gt06_fix_is_written_as_serde_writes_it() {
        let record = gt06_fix();
        assert_eq!(
            written(&record),
            serde_json::to_string(&Record::Gps(record)).unwrap()
        );
    }

    #[test]
    fn an_event_of_a_fix_serializes_through_the_direct_writer() {
        let record = gt06_fix();
        let event = gps_event(record.clone());
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            written(&record)
        );
    }

    #[test]
    fn write_json_appends_after_what_the_buffer_holds() {
        let event = gps_event(gt06_fix());
        assert_eq!(
            written_after_kept(&event),
            [b"kept".as_slice(), &event.to_json()].concat()
        );
    }

    #[test]
    fn write_json_of_a_record_serde_writes_appends_after_what_the_buffer_holds() {
        let event = Event {
            topic: super::Topic::PassThrough,
            imei: Imei::parse("864717003283581").unwrap(),
            record: Record::PassThrough(super::PassThroughRecord {
                device_imei: Imei::parse("864717003283581").unwrap(),
                gate_time: "2026-11-27 06:30:01".into(),
                pass_through_type: 0x41,
                data: "0102".into(),
            }),
        };
        assert_eq!(
            written_after_kept(&event),
            [b"kept".as_slice(), &event.to_json()].concat()
        );
    }

    #[test]
    fn a_string_that_needs_escaping_is_escaped() {
        let mut record = gt06_fix();
        record.gps_time = "a\"b\\c\n".into();
        assert!(written(&record).contains(r#""gpsTime":"a\"b\\c\n""#));
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            -180.0..180.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
    }

    prop_compose! {
        fn any_extra()(
            alarm_flag in any::<Option<u32>>(),
            fuel in proptest::option::of(any_f64()),
            recorder_speed in proptest::option::of(any_f64()),
            alarm_event_id in any::<Option<u16>>(),
            extended_signals in any::<Option<u32>>(),
            io_status in any::<Option<u16>>(),
            analog in any::<Option<u32>>(),
            gsm_sign in any::<Option<u8>>(),
            undecoded_gps_add_info in any::<Option<String>>(),
        ) -> GpsExtra {
            GpsExtra {
                alarm_flag, fuel, recorder_speed, alarm_event_id, extended_signals,
                io_status, analog, gsm_sign, undecoded_gps_add_info,
            }
        }
    }

    prop_compose! {
        fn any_gps_record()(
            imei in "[0-9]{15}",
            gps_time in any::<String>(),
            gate_time in "[0-9: -]{0,19}",
            satellite_num in any::<u32>(),
            lng in any_f64(),
            lat in any_f64(),
            gps_mode in any::<u8>(),
            gps_speed in any_f64(),
            direction in any::<u32>(),
            acc in any::<u8>(),
            post_type in any::<u8>(),
            post_method in any::<Option<u8>>(),
            altitude in any_f64(),
            distance in any::<u64>(),
            status in any::<u64>(),
            cell in any::<(Option<u32>, Option<u32>, Option<u64>, Option<u64>)>(),
            extra in any_extra(),
        ) -> GpsRecord {
            GpsRecord {
                device_imei: Imei::parse(&imei).unwrap(),
                gps_time, gate_time, satellite_num, lng, lat, gps_mode, gps_speed, direction,
                acc, post_type, post_method, altitude, distance, status,
                mcc: cell.0, mnc: cell.1, lac: cell.2, cell_id: cell.3, extra,
            }
        }
    }

    proptest! {
        #[test]
        fn the_direct_writer_matches_serde_for_any_record(record in any_gps_record()) {
            let by_serde = serde_json::to_string(&Record::Gps(record.clone())).unwrap();
            prop_assert_eq!(written(&record), by_serde);
        }
    }

    #[test]
    fn jimi_time_pads_every_field() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(jimi_time(t), "2026-01-02 03:04:05");
    }

    #[test]
    fn jimi_time_matches_chrono_across_a_range_of_instants() {
        // A step that is not a divisor of a day, so every field value comes up.
        let mut t = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap();
        for _ in 0..5_000 {
            assert_eq!(jimi_time(t), t.format("%Y-%m-%d %H:%M:%S").to_string());
            t += chrono::Duration::seconds(86_400 * 7 + 3_601 * 3 + 61);
        }
    }

    #[test]
    fn jimi_time_of_a_year_before_1000_keeps_four_digits() {
        let t = Utc.with_ymd_and_hms(999, 5, 6, 7, 8, 9).unwrap();
        assert_eq!(jimi_time(t), "0999-05-06 07:08:09");
    }
}
