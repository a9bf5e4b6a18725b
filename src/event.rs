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
    t.format("%Y-%m-%d %H:%M:%S").to_string()
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
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::Event,
        Topic::Heartbeat,
        Topic::Gps,
        Topic::Alarm,
        Topic::Lbs,
        Topic::InstructResponse,
        Topic::OfflineCommandCallback,
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
        }
    }
}

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
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(&self.record).unwrap_or_default()
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
    /// GT06 alarm byte for JIMI devices; 256.. for JT/T.
    pub alert_type: u32,
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
