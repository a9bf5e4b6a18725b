//! Customer instructions for JT/T 808 terminals. The Jimi `sendInstruct` interface names a
//! platform message by its decimal id (`proNo`) and gives its fields as a JSON `cmdContent`;
//! [`downlink`] turns the pair into a typed [`Message`], and [`reply`] turns the terminal's
//! answer back into the `_proNo` and `_content` of the response.
//!
//! Kept apart from the channel so that each field rule can be tested with a JSON text and
//! the body bytes it must produce. Every refusal happens here, before anything is sent, and
//! names the JSON field at fault: a customer learns of a typo from a `200` answer rather
//! than from a terminal that answers "message error" or, worse, acts on a wrong value.
//!
//! # Reading `cmdContent`
//! Choices made here, where the Jimi documentation leaves room:
//! - Numbers may be JSON numbers or strings (`1` and `"1"`), decimal or hexadecimal after
//!   `0x`. A `null` or an empty string counts as absent: optional fields then take their
//!   default, required ones are refused as missing.
//! - Text fields take a JSON string; a JSON number stands for its decimal text. Text goes out
//!   as GBK, so characters GBK cannot represent are refused, and lengths are GBK bytes.
//! - `beginTime` / `endTime` are `YYMMDDHHMMSS` in UTC (the Jimi convention) and go out as the
//!   GMT+8 BCD the wire carries; `000000000000` means "unbounded" and stays all zero.
//! - Enumerated fields are checked against the values the standards define for them.
//! - Unknown fields are ignored: customers send `instructionID` to every message.
//! - `instructionID`, when present, is passed on in [`Downlink::instruction_id`] whatever the
//!   message, so the channel can tag the records that come later.
//! - `serverLen`, when given next to `serverAddress`, must equal the address's length.
//! - Bodies longer than one packet are allowed: the channel splits them into subpackages.
//!
//! Per message (defaults in brackets; fields without one are required):
//! - 128: plain text, sent as 0x8300 with flag 0x0C (display and TTS) and, in 2019, text type
//!   1 (notice). 1..=1000 GBK bytes.
//! - 33536 (0x8300): `text` (1..=1000 bytes), `flag` [12], `textType` 1 notice / 2 service [1,
//!   2019 only].
//! - 33027 (0x8103): an object whose keys are parameter ids (decimal, or hex after `0x`). A
//!   value is read as the standard's parameter table types it: DWORD / WORD / BYTE numbers
//!   within their width, text as GBK text. A string `"hex:0102..."` gives the raw bytes of any
//!   parameter, and is the only form accepted for ids outside the table (JT/T 1078 and vendor
//!   parameters have layouts of their own, which a decimal could not express). Parameters go
//!   out in id order. The key `instructionID` is not a parameter and is skipped.
//! - 33028 (0x8104), 33031 (0x8107), 33281 (0x8201), 36867 (0x9003): empty, or any object.
//! - 33029 (0x8105): `cmd` (alias `command`) 1..=255, `param` (alias `params`, at most 1000
//!   bytes) [""]. Command words 1 (upgrade) and 2 (connect to a server) need `param`, their
//!   `;`-separated fields passed as written; words 3..=7 take none; other words are
//!   vendor-defined and get `param` as given.
//! - 33030 (0x8106): the ids as keys of an object (`{"44":"","45":""}`, values ignored) or as
//!   an array (`[44,"45"]`); 1..=255 distinct ids. Object keys go out in id order, array items
//!   in the order given.
//! - 34817 (0x8801): `channel`, `shootCmd` (alias `command`; 0 stop, 0xFFFF video, else the
//!   number of pictures) [1], `interval` seconds [0], `saveFlag` 0 upload / 1 save [0],
//!   `resolution` [2, 640x480], `quality` 1 best..=10 [5], `brightness` 0..=255 [128],
//!   `contrast` 0..=127 [64], `saturation` 0..=127 [64], `chroma` 0..=255 [128]. Brightness,
//!   contrast, saturation and chroma default to the middle of their ranges, a neutral
//!   picture; quality 5 and 640x480 keep a snapshot small enough to upload over the link.
//! - 37121 (0x9101): `videoIP`, `videoTCPPort`, `videoUDPPort` [0], `channel`, `dataType`
//!   0..=5 [0], `codeStreamType` 0..=1 [0].
//! - 37122 (0x9102): `channel`, `cmd` 0..=4, `dataType` 0..=2 [0], `codeStreamType` 0..=1 [0].
//! - 37377 (0x9201): `serverAddress`, `tcpPort`, `udpPort` [0], `channel`, `resourceType`
//!   0..=3 [0], `codeType` 0..=2 [0], `storageType` 0..=2 [0], `playMethod` 0..=4 [0],
//!   `forwardRewind` 0..=5 [0], `beginTime`, `endTime`.
//! - 37378 (0x9202): `channel`, `playCtrl` 0..=6, `forwardRewind` 0..=5 [0], `beginTime` (the
//!   seek position; required for `playCtrl` 5) [zero].
//! - 37381 (0x9205): `channel` [0 = all], `beginTime` / `endTime` [unbounded], `alarmFlag`
//!   64 bits [0], `resourceType` 0..=3 [0], `codeType` 0..=2 [0], `storageType` 0..=2 [0].
//! - 37382 (0x9206): `serverAddress`, `ftpPort`, `userName`, `password`, `fileUploadPath`
//!   (each may be an empty string but must be present), `channel`, `beginTime`, `endTime`,
//!   `alarmFlag` [0], `resourceType` [0], `codeType` [0], `storageType` [0], `condition`
//!   bit0 WiFi, bit1 LAN, bit2 3G/4G [7, any network].
//! - 37383 (0x9207): `serialNo` (alias `replySerial`), the serial of the 0x9206 being
//!   controlled; `control` (alias `uploadControl`) 0 pause, 1 resume, 2 cancel.
//! - 37384 (0x9208): `serverAddress`, `tcpPort`, `udpPort` [0], `alarmLabel` (16 bytes as
//!   comma-separated hex, as Jimi writes it in `/pushalarm`, or 32 hex digits), `alarmNumber`
//!   (1..=32 bytes of text, NUL padded). At least one port must be non-zero wherever a
//!   terminal is sent to a server.
//!
//! # Answers
//! [`reply`] matches an uplink to the outstanding downlink and gives `_content` as a JSON
//! text whose values are all strings, the way the Jimi hub writes the 0x0104 answer:
//! - 0x0001 (1): `{"result":"0","resultDesc":"success"}`; results 1 failure, 2 message
//!   error, 3 not supported.
//! - 0x0104 (260): `{"paramCount":"n","<id>":"<value>",...}`, ids in decimal in the
//!   terminal's order, numbers in decimal, text as is, raw bytes as uppercase hex.
//! - 0x0107 (263): `terminalType`, `manufacturer`, `terminalModel`, `terminalId`, `iccid`,
//!   `hardwareVersion`, `firmwareVersion`, `gnssModule`, `commModule`.
//! - 0x0201 (513): the `/pushgps` names `lat`, `lng` (signed degrees), `gpsSpeed` (km/h),
//!   `direction`, `altitude` (m), `gpsTime` (UTC), plus the `alarmFlag` and `status` words.
//! - 0x1003 (4099): `audioCodec`, `audioChannels`, `sampleRate`, `sampleBits`,
//!   `audioFrameLength`, `audioOutput`, `videoCodec`, `maxAudioChannels`, `maxVideoChannels`.
//! - 0x1205 (4613): [`resource_list_json`].
//! - 0x1206 (4614): `{"result":"0"}` (1 = failed), for a terminal that reports the end of an
//!   upload without acknowledging the 0x9206 first.

use std::ops::RangeInclusive;

use chrono::NaiveDate;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::codec::jt808::{
    param_kind, AlarmLabel, AttachmentUpload, Attributes, AvAttributes, AvResource, BcdTime,
    CameraShoot, FileUpload, GeneralResponse, LiveControl, LiveRequest, Location, Message, Param,
    ParamKind, ParamValue, PlaybackControl, PlaybackRequest, ResourceList, ResourceQuery,
    StatusFlags, Text,
};
use crate::command::{Instruction, InstructionRefusal};
use crate::event::jimi_time;

/// Jimi `proNo` of a plain-text command (GT06 0x80); JT/T terminals get it as 0x8300.
pub const PRO_NO_TEXT_COMMAND: u32 = 128;

/// Platform messages a JSON `cmdContent` can produce; the `proNo` is the id in decimal.
pub const JSON_MESSAGE_IDS: [u16; 17] = [
    0x8103, 0x8104, 0x8105, 0x8106, 0x8107, 0x8201, 0x8300, 0x8801, 0x9003, 0x9101, 0x9102, 0x9201,
    0x9202, 0x9205, 0x9206, 0x9207, 0x9208,
];

/// 0x8300 flag bits 2 and 3: show the text on the terminal's screen and read it aloud.
pub const TEXT_FLAG_DISPLAY_TTS: u8 = 0x04 | 0x08;
/// 0x8300 2019 text type "notice".
pub const TEXT_TYPE_NOTICE: u8 = 1;
/// Longest 0x8300 text, in GBK bytes.
pub const MAX_TEXT_LEN: usize = 1000;

/// The name used in refusals about the content as a whole.
const CMD_CONTENT: &str = "cmdContent";
const INSTRUCTION_ID: &str = "instructionID";
/// Prefix of a 0x8103 value given as raw bytes.
const HEX_PREFIX: &str = "hex:";
/// Longest length-prefixed text (server address, user, password, path, parameter value).
const MAX_SHORT_TEXT: usize = 255;
/// Longest `instructionID` kept: it is copied into later records.
const MAX_INSTRUCTION_ID: usize = 255;
/// Longest part of a customer's key quoted back in a refusal.
const MAX_QUOTED: usize = 32;

/// A customer instruction turned into a JT/T 808 platform message.
#[derive(Debug, Clone, PartialEq)]
pub struct Downlink {
    /// The platform -> terminal message to encode (the channel writes the header and serial).
    pub message: Message,
    /// Its message id (0x8103, 0x9101, ...).
    pub msg_id: u16,
    /// `instructionID` from the cmdContent JSON when it has one (0x9201, 0x9205, 0x9206,
    /// 0x9207, 0x9208...): the channel copies it into the later /pushresourcelist and
    /// /pushftpfileupload records.
    pub instruction_id: Option<String>,
}

/// A terminal's answer to a downlink: `_proNo` and `_content` of the sendInstruct response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The id of the answering uplink, in decimal (1 for 0x0001, 260 for 0x0104...).
    pub pro_no: u32,
    /// A JSON text.
    pub content: String,
}

type R<T> = Result<T, InstructionRefusal>;

fn bad(field: &'static str, reason: impl Into<String>) -> InstructionRefusal {
    InstructionRefusal::BadParameter {
        field,
        reason: reason.into(),
    }
}

fn missing(field: &'static str) -> InstructionRefusal {
    bad(field, "is required")
}

/// Translates an instruction. `v2019` is true when the terminal uses the 2019 header
/// (0x8300 has a different body then: text type byte). Errors: UnsupportedProNo for a proNo
/// with no JT/T meaning, BadParameter { field, reason } naming the JSON field (or "cmdContent"
/// when the JSON itself is broken) for any missing / out-of-range / wrong-type value.
pub fn downlink(instruction: &Instruction, v2019: bool) -> Result<Downlink, InstructionRefusal> {
    if instruction.pro_no == PRO_NO_TEXT_COMMAND {
        return Ok(Downlink {
            message: text_command(&instruction.content, v2019)?,
            msg_id: 0x8300,
            instruction_id: None,
        });
    }
    let msg_id = u16::try_from(instruction.pro_no)
        .ok()
        .filter(|id| JSON_MESSAGE_IDS.contains(id))
        .ok_or(InstructionRefusal::UnsupportedProNo(instruction.pro_no))?;
    let json = parse_content(&instruction.content)?;
    let instruction_id = instruction_id(&json)?;
    let message = match msg_id {
        0x8103 => set_params(&json)?,
        0x8106 => query_params(&json)?,
        _ => {
            let f = Fields::of(&json)?;
            match msg_id {
                0x8104 => Message::QueryAllParams,
                0x8105 => terminal_control(&f)?,
                0x8107 => Message::QueryAttributes,
                0x8201 => Message::LocationQuery,
                0x8300 => text_message(&f, v2019)?,
                0x8801 => camera_shoot(&f)?,
                0x9003 => Message::QueryAvAttributes,
                0x9101 => live_request(&f)?,
                0x9102 => live_control(&f)?,
                0x9201 => playback_request(&f)?,
                0x9202 => playback_control(&f)?,
                0x9205 => resource_query(&f)?,
                0x9206 => file_upload(&f)?,
                0x9207 => upload_control(&f)?,
                0x9208 => attachment_upload(&f)?,
                _ => return Err(InstructionRefusal::UnsupportedProNo(instruction.pro_no)),
            }
        }
    };
    Ok(Downlink {
        message,
        msg_id,
        instruction_id,
    })
}

/// The content as JSON; an empty or blank content is an empty object.
fn parse_content(content: &str) -> R<Value> {
    if content.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(content).map_err(|e| bad(CMD_CONTENT, format!("is not valid JSON: {e}")))
}

fn instruction_id(json: &Value) -> R<Option<String>> {
    let id = match json.get(INSTRUCTION_ID) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(bad(INSTRUCTION_ID, "must be a string")),
    };
    if id.len() > MAX_INSTRUCTION_ID {
        return Err(bad(
            INSTRUCTION_ID,
            format!(
                "is {} bytes, at most {MAX_INSTRUCTION_ID} are kept",
                id.len()
            ),
        ));
    }
    Ok((!id.is_empty()).then_some(id))
}

/// The fields of a JSON object `cmdContent`, read with the rules of the module docs.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn of(json: &'a Value) -> R<Fields<'a>> {
        match json {
            Value::Object(map) => Ok(Fields(map)),
            _ => Err(bad(CMD_CONTENT, "must be a JSON object")),
        }
    }

    /// The first of `names` (a field and its aliases) present and not null.
    fn find(&self, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        names.iter().find_map(|&name| match self.0.get(name) {
            None | Some(Value::Null) => None,
            Some(value) => Some((name, value)),
        })
    }

    fn opt_int<T: Int>(&self, names: &[&'static str], allowed: RangeInclusive<T>) -> R<Option<T>> {
        let Some((field, value)) = self.find(names) else {
            return Ok(None);
        };
        match integer(field, value)? {
            Some(n) => in_range(n, &allowed)
                .map(Some)
                .map_err(|reason| bad(field, reason)),
            None => Ok(None),
        }
    }

    /// A number within `allowed`; `default` when absent, or refused as missing without one.
    fn int<T: Int>(
        &self,
        names: &[&'static str],
        allowed: RangeInclusive<T>,
        default: Option<T>,
    ) -> R<T> {
        self.opt_int(names, allowed)?
            .or(default)
            .ok_or_else(|| missing(first(names)))
    }

    fn opt_text(
        &self,
        names: &[&'static str],
        max_bytes: usize,
    ) -> R<Option<(&'static str, String)>> {
        let Some((field, value)) = self.find(names) else {
            return Ok(None);
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(bad(field, "must be a string")),
        };
        let len = gbk_len(&text).ok_or_else(|| bad(field, NOT_GBK))?;
        if len > max_bytes {
            return Err(bad(
                field,
                format!("is {len} bytes in GBK, at most {max_bytes} fit"),
            ));
        }
        Ok(Some((field, text)))
    }

    /// Text that must be present; it may be empty.
    fn text(&self, names: &[&'static str], max_bytes: usize) -> R<String> {
        self.opt_text(names, max_bytes)?
            .map(|(_, text)| text)
            .ok_or_else(|| missing(first(names)))
    }

    /// Text that must be present and not empty.
    fn non_empty_text(&self, names: &[&'static str], max_bytes: usize) -> R<String> {
        match self.opt_text(names, max_bytes)? {
            Some((field, text)) if text.is_empty() => Err(bad(field, "must not be empty")),
            Some((_, text)) => Ok(text),
            None => Err(missing(first(names))),
        }
    }

    /// A server host or IP, checked against `serverLen` when the customer sends one.
    fn server(&self, name: &'static str) -> R<String> {
        let server = self.non_empty_text(&[name], MAX_SHORT_TEXT)?;
        if let Some(declared) = self.opt_int(&["serverLen"], 0..=u8::MAX)? {
            let actual = gbk_len(&server).unwrap_or(0);
            if usize::from(declared) != actual {
                return Err(bad(
                    "serverLen",
                    format!("is {declared} but {name} is {actual} bytes"),
                ));
            }
        }
        Ok(server)
    }

    /// TCP and UDP ports of a server the terminal must connect to: UDP defaults to 0
    /// (unused), and a pair of zeros leaves the terminal nowhere to go.
    fn ports(&self, tcp: &'static str, udp: &'static str) -> R<(u16, u16)> {
        let tcp_port = self.int(&[tcp], 0..=u16::MAX, None)?;
        let udp_port = self.int(&[udp], 0..=u16::MAX, Some(0))?;
        if tcp_port == 0 && udp_port == 0 {
            return Err(bad(tcp, format!("and {udp} are both 0")));
        }
        Ok((tcp_port, udp_port))
    }

    fn channel(&self) -> R<u8> {
        self.int(&["channel"], 0..=u8::MAX, None)
    }

    /// A Jimi UTC time as the wire's GMT+8 BCD; `default` when absent.
    fn time(&self, name: &'static str, default: Option<BcdTime>) -> R<BcdTime> {
        let digits = match self.find(&[name]) {
            None => None,
            Some((_, Value::String(s))) if s.trim().is_empty() => None,
            Some((_, Value::String(s))) => Some(s.trim().to_string()),
            Some((_, Value::Number(n))) => match n.as_u64() {
                Some(v) if v <= 999_999_999_999 => Some(format!("{v:012}")),
                _ => return Err(bad(name, TIME_FORMAT)),
            },
            Some(_) => return Err(bad(name, TIME_FORMAT)),
        };
        match digits {
            Some(digits) => wire_time(name, &digits),
            None => default.ok_or_else(|| missing(name)),
        }
    }
}

fn first(names: &[&'static str]) -> &'static str {
    names.first().copied().unwrap_or(CMD_CONTENT)
}

const NOT_GBK: &str = "has characters GBK cannot encode";
const TIME_FORMAT: &str = "must be 12 digits YYMMDDHHMMSS (UTC)";
const WHOLE_NUMBER: &str =
    "must be a whole number: a JSON number, a decimal string or a 0x-prefixed hex string";

/// The unsigned integer types fields are read into.
trait Int: Copy + Into<i128> + TryFrom<i128> + std::fmt::Display {
    const MIN: Self;
    const MAX: Self;
}
impl Int for u8 {
    const MIN: Self = u8::MIN;
    const MAX: Self = u8::MAX;
}
impl Int for u16 {
    const MIN: Self = u16::MIN;
    const MAX: Self = u16::MAX;
}
impl Int for u32 {
    const MIN: Self = u32::MIN;
    const MAX: Self = u32::MAX;
}
impl Int for u64 {
    const MIN: Self = u64::MIN;
    const MAX: Self = u64::MAX;
}

fn in_range<T: Int>(n: i128, allowed: &RangeInclusive<T>) -> Result<T, String> {
    let (lo, hi) = (*allowed.start(), *allowed.end());
    if n < lo.into() || n > hi.into() {
        return Err(format!("{n} is outside {lo}..={hi}"));
    }
    T::try_from(n).map_err(|_| format!("{n} is outside {lo}..={hi}"))
}

/// A whole number from a JSON number or string; `None` for a blank string.
fn integer(field: &'static str, value: &Value) -> R<Option<i128>> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(i128::from)
            .or_else(|| n.as_i64().map(i128::from))
            .map(Some)
            .ok_or_else(|| bad(field, WHOLE_NUMBER)),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => whole_number(s.trim())
            .map(Some)
            .ok_or_else(|| bad(field, WHOLE_NUMBER)),
        _ => Err(bad(field, WHOLE_NUMBER)),
    }
}

/// Decimal digits, or hex digits after `0x`, optionally negative (so that "-1" is reported
/// as out of range rather than as not a number).
fn whole_number(s: &str) -> Option<i128> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let magnitude = match unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            i128::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) => {
            unsigned.parse::<i128>().ok()?
        }
        None => return None,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// Length in GBK bytes; `None` when GBK cannot encode the text.
fn gbk_len(text: &str) -> Option<usize> {
    gbk(text).map(|b| b.len())
}

fn gbk(text: &str) -> Option<Vec<u8>> {
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

/// `YYMMDDHHMMSS` UTC -> GMT+8 BCD; all zeros stay all zeros ("unbounded").
fn wire_time(field: &'static str, digits: &str) -> R<BcdTime> {
    let b = digits.as_bytes();
    if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad(field, TIME_FORMAT));
    }
    if b.iter().all(|&c| c == b'0') {
        return Ok(BcdTime::default());
    }
    let two = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let utc = NaiveDate::from_ymd_opt(2000 + two(0) as i32, two(2), two(4))
        .and_then(|d| d.and_hms_opt(two(6), two(8), two(10)))
        .ok_or_else(|| bad(field, format!("{digits} is not a valid date and time")))?;
    BcdTime::from_utc(utc.and_utc())
        .ok_or_else(|| bad(field, format!("{digits} falls after 2099 in GMT+8")))
}

/// `"abc"`, cut to a readable length: refusals quote customer keys.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

fn check_text(field: &'static str, text: &str) -> R<()> {
    if text.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    let len = gbk_len(text).ok_or_else(|| bad(field, NOT_GBK))?;
    if len > MAX_TEXT_LEN {
        return Err(bad(
            field,
            format!("is {len} bytes in GBK, at most {MAX_TEXT_LEN} are allowed"),
        ));
    }
    Ok(())
}

/// proNo 128: the whole content is the text.
fn text_command(content: &str, v2019: bool) -> R<Message> {
    check_text(CMD_CONTENT, content)?;
    Ok(Message::Text(Text {
        flag: TEXT_FLAG_DISPLAY_TTS,
        text_type: v2019.then_some(TEXT_TYPE_NOTICE),
        text: content.to_string(),
    }))
}

/// 0x8300 from JSON.
fn text_message(f: &Fields<'_>, v2019: bool) -> R<Message> {
    let flag = f.int(&["flag"], 0..=u8::MAX, Some(TEXT_FLAG_DISPLAY_TTS))?;
    let text_type = f.int(&["textType"], 1..=2, Some(TEXT_TYPE_NOTICE))?;
    let (field, text) = f
        .opt_text(&["text"], usize::MAX)?
        .ok_or_else(|| missing("text"))?;
    check_text(field, &text)?;
    Ok(Message::Text(Text {
        flag,
        text_type: v2019.then_some(text_type),
        text,
    }))
}

/// A 0x8103 / 0x8106 key: a parameter id.
fn param_id(key: &str) -> R<u32> {
    whole_number(key.trim())
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            bad(
                CMD_CONTENT,
                format!("key {} is not a parameter id (0..=4294967295)", quoted(key)),
            )
        })
}

/// At most 255 parameters, each once: the count on the wire is a BYTE.
fn check_param_ids(ids: &[u32]) -> R<()> {
    if ids.is_empty() {
        return Err(bad(CMD_CONTENT, "names no parameter"));
    }
    if ids.len() > usize::from(u8::MAX) {
        return Err(bad(
            CMD_CONTENT,
            format!(
                "names {} parameters, at most 255 fit one message",
                ids.len()
            ),
        ));
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(bad(
            CMD_CONTENT,
            format!("parameter {} is given twice", pair[0]),
        ));
    }
    Ok(())
}

/// 0x8103.
fn set_params(json: &Value) -> R<Message> {
    let Value::Object(map) = json else {
        return Err(bad(
            CMD_CONTENT,
            "must be a JSON object of parameter ids and values",
        ));
    };
    let mut params = map
        .iter()
        .filter(|(key, _)| key.as_str() != INSTRUCTION_ID)
        .map(|(key, value)| {
            let id = param_id(key)?;
            Ok(Param {
                id,
                value: param_value(key, id, value)?,
            })
        })
        .collect::<R<Vec<Param>>>()?;
    check_param_ids(&params.iter().map(|p| p.id).collect::<Vec<_>>())?;
    params.sort_by_key(|p| p.id);
    Ok(Message::SetParams(params))
}

fn param_value(key: &str, id: u32, value: &Value) -> R<ParamValue> {
    let refuse = |reason: String| bad(CMD_CONTENT, format!("parameter {}: {reason}", quoted(key)));
    if let Value::String(s) = value {
        if let Some(hex) = s.trim().strip_prefix(HEX_PREFIX) {
            let bytes = hex::decode(hex)
                .ok()
                .ok_or_else(|| refuse("\"hex:\" must be followed by hex byte pairs".into()))?;
            if bytes.len() > MAX_SHORT_TEXT {
                return Err(refuse(format!(
                    "{} bytes, at most {MAX_SHORT_TEXT} fit",
                    bytes.len()
                )));
            }
            return Ok(ParamValue::Bytes(bytes));
        }
    }
    match param_kind(id) {
        Some(ParamKind::Dword) => param_number(value, &refuse).map(ParamValue::Dword),
        Some(ParamKind::Word) => param_number(value, &refuse).map(ParamValue::Word),
        Some(ParamKind::Byte) => param_number(value, &refuse).map(ParamValue::Byte),
        Some(ParamKind::Text) => {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(refuse("must be a string".into())),
            };
            let len = gbk_len(&text).ok_or_else(|| refuse(NOT_GBK.into()))?;
            if len > MAX_SHORT_TEXT {
                return Err(refuse(format!(
                    "is {len} bytes in GBK, at most {MAX_SHORT_TEXT} fit"
                )));
            }
            Ok(ParamValue::Text(text))
        }
        None => Err(refuse(format!(
            "id {id} is not in the standard parameter table: give its bytes as \"hex:...\""
        ))),
    }
}

/// A numeric parameter value, within the width the parameter table gives it.
fn param_number<T: Int>(value: &Value, refuse: &impl Fn(String) -> InstructionRefusal) -> R<T> {
    let n = match value {
        Value::Number(_) | Value::String(_) => integer(CMD_CONTENT, value).ok().flatten(),
        _ => None,
    };
    let n = n.ok_or_else(|| refuse(WHOLE_NUMBER.into()))?;
    in_range(n, &(T::MIN..=T::MAX)).map_err(refuse)
}

/// 0x8106.
fn query_params(json: &Value) -> R<Message> {
    let ids = match json {
        Value::Object(map) => {
            let mut ids = map
                .keys()
                .filter(|key| key.as_str() != INSTRUCTION_ID)
                .map(|key| param_id(key))
                .collect::<R<Vec<u32>>>()?;
            ids.sort_unstable();
            ids
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                integer(CMD_CONTENT, item)
                    .ok()
                    .flatten()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(
                            CMD_CONTENT,
                            format!("item {i} is not a parameter id (0..=4294967295)"),
                        )
                    })
            })
            .collect::<R<Vec<u32>>>()?,
        _ => {
            return Err(bad(
                CMD_CONTENT,
                "must be a JSON object with parameter ids as keys, or an array of ids",
            ))
        }
    };
    check_param_ids(&ids)?;
    Ok(Message::QueryParams(ids))
}

/// 0x8105.
fn terminal_control(f: &Fields<'_>) -> R<Message> {
    let command = f.int(&["cmd", "command"], 1..=u8::MAX, None)?;
    let params = f
        .opt_text(&["param", "params"], MAX_TEXT_LEN)?
        .map(|(_, text)| text)
        .unwrap_or_default();
    match command {
        1 | 2 if params.is_empty() => Err(bad(
            "param",
            format!("is required by command word {command}"),
        )),
        3..=7 if !params.is_empty() => Err(bad(
            "param",
            format!("command word {command} takes no parameters"),
        )),
        _ => Ok(Message::TerminalControl { command, params }),
    }
}

/// 0x8801.
fn camera_shoot(f: &Fields<'_>) -> R<Message> {
    Ok(Message::CameraShoot(CameraShoot {
        channel: f.channel()?,
        command: f.int(&["shootCmd", "command"], 0..=u16::MAX, Some(1))?,
        interval: f.int(&["interval"], 0..=u16::MAX, Some(0))?,
        save: f.int(&["saveFlag"], 0..=1, Some(0))?,
        resolution: f.int(&["resolution"], 0..=u8::MAX, Some(2))?,
        quality: f.int(&["quality"], 1..=10, Some(5))?,
        brightness: f.int(&["brightness"], 0..=u8::MAX, Some(128))?,
        contrast: f.int(&["contrast"], 0..=127, Some(64))?,
        saturation: f.int(&["saturation"], 0..=127, Some(64))?,
        chroma: f.int(&["chroma"], 0..=u8::MAX, Some(128))?,
    }))
}

/// 0x9101.
fn live_request(f: &Fields<'_>) -> R<Message> {
    let server = f.server("videoIP")?;
    let (tcp_port, udp_port) = f.ports("videoTCPPort", "videoUDPPort")?;
    Ok(Message::LiveRequest(LiveRequest {
        server,
        tcp_port,
        udp_port,
        channel: f.channel()?,
        data_type: f.int(&["dataType"], 0..=5, Some(0))?,
        stream: f.int(&["codeStreamType"], 0..=1, Some(0))?,
    }))
}

/// 0x9102.
fn live_control(f: &Fields<'_>) -> R<Message> {
    Ok(Message::LiveControl(LiveControl {
        channel: f.channel()?,
        command: f.int(&["cmd"], 0..=4, None)?,
        close_kind: f.int(&["dataType"], 0..=2, Some(0))?,
        stream: f.int(&["codeStreamType"], 0..=1, Some(0))?,
    }))
}

/// 0x9201.
fn playback_request(f: &Fields<'_>) -> R<Message> {
    let server = f.server("serverAddress")?;
    let (tcp_port, udp_port) = f.ports("tcpPort", "udpPort")?;
    Ok(Message::PlaybackRequest(PlaybackRequest {
        server,
        tcp_port,
        udp_port,
        channel: f.channel()?,
        av_type: f.int(&["resourceType"], 0..=3, Some(0))?,
        stream: f.int(&["codeType"], 0..=2, Some(0))?,
        storage: f.int(&["storageType"], 0..=2, Some(0))?,
        mode: f.int(&["playMethod"], 0..=4, Some(0))?,
        speed: f.int(&["forwardRewind"], 0..=5, Some(0))?,
        start: f.time("beginTime", None)?,
        end: f.time("endTime", None)?,
    }))
}

/// 0x9202 control 5: seek to `beginTime`.
const PLAYBACK_SEEK: u8 = 5;

/// 0x9202.
fn playback_control(f: &Fields<'_>) -> R<Message> {
    let control = f.int(&["playCtrl"], 0..=6, None)?;
    let seek_default = (control != PLAYBACK_SEEK).then(BcdTime::default);
    Ok(Message::PlaybackControl(PlaybackControl {
        channel: f.channel()?,
        control,
        speed: f.int(&["forwardRewind"], 0..=5, Some(0))?,
        position: f.time("beginTime", seek_default)?,
    }))
}

/// 0x9205.
fn resource_query(f: &Fields<'_>) -> R<Message> {
    let unbounded = Some(BcdTime::default());
    Ok(Message::ResourceQuery(ResourceQuery {
        channel: f.int(&["channel"], 0..=u8::MAX, Some(0))?,
        start: f.time("beginTime", unbounded)?,
        end: f.time("endTime", unbounded)?,
        alarm: f.int(&["alarmFlag"], 0..=u64::MAX, Some(0))?,
        av_type: f.int(&["resourceType"], 0..=3, Some(0))?,
        stream: f.int(&["codeType"], 0..=2, Some(0))?,
        storage: f.int(&["storageType"], 0..=2, Some(0))?,
    }))
}

/// 0x9206.
fn file_upload(f: &Fields<'_>) -> R<Message> {
    Ok(Message::FileUpload(FileUpload {
        server: f.server("serverAddress")?,
        port: f.int(&["ftpPort"], 1..=u16::MAX, None)?,
        user: f.text(&["userName"], MAX_SHORT_TEXT)?,
        password: f.text(&["password"], MAX_SHORT_TEXT)?,
        path: f.text(&["fileUploadPath"], MAX_SHORT_TEXT)?,
        channel: f.channel()?,
        start: f.time("beginTime", None)?,
        end: f.time("endTime", None)?,
        alarm: f.int(&["alarmFlag"], 0..=u64::MAX, Some(0))?,
        av_type: f.int(&["resourceType"], 0..=3, Some(0))?,
        stream: f.int(&["codeType"], 0..=2, Some(0))?,
        storage: f.int(&["storageType"], 0..=2, Some(0))?,
        conditions: f.int(&["condition"], 0..=7, Some(7))?,
    }))
}

/// 0x9207.
fn upload_control(f: &Fields<'_>) -> R<Message> {
    Ok(Message::FileUploadControl {
        reply_serial: f.int(&["serialNo", "replySerial"], 0..=u16::MAX, None)?,
        control: f.int(&["control", "uploadControl"], 0..=2, None)?,
    })
}

/// 0x9208.
fn attachment_upload(f: &Fields<'_>) -> R<Message> {
    let server = f.server("serverAddress")?;
    let (tcp_port, udp_port) = f.ports("tcpPort", "udpPort")?;
    let label = alarm_label(&f.text(&["alarmLabel"], usize::MAX)?)?;
    // At most 32 GBK bytes (checked by the read); the rest stays NUL.
    let number = gbk(&f.non_empty_text(&["alarmNumber"], 32)?).unwrap_or_default();
    let mut alarm_number = [0u8; 32];
    for (slot, byte) in alarm_number.iter_mut().zip(number) {
        *slot = byte;
    }
    Ok(Message::AttachmentUpload(AttachmentUpload {
        server,
        tcp_port,
        udp_port,
        label,
        alarm_number,
        reserved: [0; 16],
    }))
}

/// The 16-byte Su-biao alarm identification, as Jimi writes it in `/pushalarm`
/// (`"30,30,30,31,37,36,32,24,02,03,14,34,38,00,01,00"`) or as 32 hex digits.
fn alarm_label(text: &str) -> R<AlarmLabel> {
    const FIELD: &str = "alarmLabel";
    let text = text.trim();
    let bytes = if text.contains(',') {
        text.split(',')
            .map(|part| {
                let part = part.trim();
                let hex =
                    (1..=2).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
                if hex {
                    u8::from_str_radix(part, 16).ok()
                } else {
                    None
                }
            })
            .collect::<Option<Vec<u8>>>()
    } else {
        hex::decode(text).ok()
    };
    let bytes = bytes.ok_or_else(|| {
        bad(
            FIELD,
            "must be 16 comma-separated hex bytes or 32 hex digits",
        )
    })?;
    let Ok(b) = <[u8; 16]>::try_from(bytes.as_slice()) else {
        return Err(bad(
            FIELD,
            format!(
                "holds {} bytes, an alarm identification has 16",
                bytes.len()
            ),
        ));
    };
    let mut terminal_id = [0u8; 7];
    terminal_id.copy_from_slice(&b[..7]);
    let mut time = [0u8; 6];
    time.copy_from_slice(&b[7..13]);
    Ok(AlarmLabel {
        terminal_id,
        time: BcdTime(time),
        seq: b[13],
        attachments: b[14],
        reserved: b[15],
    })
}

/// The answer of a device to an outstanding downlink, as `_proNo` and `_content` of the
/// sendInstruct response. `outstanding` = (msg_id, serial) of the downlink on the wire;
/// `message` is a decoded uplink. Returns None when `message` does not answer it.
///
/// 0x0001 answers any downlink whose serial and id it names. The others answer one query
/// each: 0x0104 a 0x8104/0x8106, 0x0201 a 0x8201, 0x1205 a 0x9205 and 0x1206 a 0x9206, by
/// reply serial; 0x0107 a 0x8107 and 0x1003 a 0x9003, which carry no serial.
pub fn reply(outstanding_msg_id: u16, outstanding_serial: u16, message: &Message) -> Option<Reply> {
    let answers = |reply_serial: u16, queries: &[u16]| {
        reply_serial == outstanding_serial && queries.contains(&outstanding_msg_id)
    };
    let (pro_no, content) = match message {
        Message::TerminalResponse(r) if answers(r.reply_serial, &[r.reply_id]) => {
            (0x0001, json_text(&GeneralResponseContent::of(r)))
        }
        Message::ParamsReply(p) if answers(p.reply_serial, &[0x8104, 0x8106]) => {
            (0x0104, json_text(&ParamsContent(&p.params)))
        }
        Message::Attributes(a) if outstanding_msg_id == 0x8107 => {
            (0x0107, json_text(&AttributesContent::of(a)))
        }
        Message::LocationReply {
            reply_serial,
            location,
        } if answers(*reply_serial, &[0x8201]) => {
            (0x0201, json_text(&LocationContent::of(location)))
        }
        Message::AvAttributes(a) if outstanding_msg_id == 0x9003 => {
            (0x1003, json_text(&AvAttributesContent::of(a)))
        }
        Message::ResourceList(l) if answers(l.reply_serial, &[0x9205]) => {
            (0x1205, json_text(&ResourceListContent::of(l)))
        }
        Message::FileUploadResult {
            reply_serial,
            result,
        } if answers(*reply_serial, &[0x9206]) => (
            0x1206,
            json_text(&UploadResultContent {
                result: result.to_string(),
            }),
        ),
        _ => return None,
    };
    Some(Reply { pro_no, content })
}

/// `{"totalNum":"n","resourceList":[...]}` of a 0x1205, times in UTC: the `_content` of the
/// answer to 0x9205, and the list part of `/pushresourcelist`.
pub fn resource_list_json(list: &ResourceList) -> Value {
    serde_json::to_value(ResourceListContent::of(list)).unwrap_or_default()
}

/// Serialising these plain structs cannot fail; an empty text would only hide a bug here.
fn json_text<T: Serialize>(content: &T) -> String {
    serde_json::to_string(content).unwrap_or_default()
}

/// A BCD time as Jimi UTC text; empty when the terminal sent no valid time.
fn utc_text(time: BcdTime) -> String {
    time.to_utc().map(jimi_time).unwrap_or_default()
}

/// 0x0001 as `{"result":"0","resultDesc":"success"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeneralResponseContent {
    result: String,
    result_desc: &'static str,
}

impl GeneralResponseContent {
    fn of(r: &GeneralResponse) -> Self {
        GeneralResponseContent {
            result: r.result.to_string(),
            result_desc: match r.result {
                0 => "success",
                1 => "failure",
                2 => "message error",
                3 => "not supported",
                _ => "unknown",
            },
        }
    }
}

/// 0x0104 as `{"paramCount":"3","1":"180","19":"1.2.3.4",...}`: ids in decimal, in the
/// terminal's order; an id listed twice keeps its last value at its first place, so the
/// object has unique keys and `paramCount` counts them.
struct ParamsContent<'a>(&'a [Param]);

impl Serialize for ParamsContent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(u32, String)> = Vec::with_capacity(self.0.len());
        for param in self.0 {
            let value = param_text(&param.value);
            match entries.iter_mut().find(|(id, _)| *id == param.id) {
                Some(entry) => entry.1 = value,
                None => entries.push((param.id, value)),
            }
        }
        let mut map = serializer.serialize_map(Some(entries.len() + 1))?;
        map.serialize_entry("paramCount", &entries.len().to_string())?;
        for (id, value) in &entries {
            map.serialize_entry(&id.to_string(), value)?;
        }
        map.end()
    }
}

/// Numbers in decimal, text as is, raw bytes as uppercase hex.
fn param_text(value: &ParamValue) -> String {
    match value {
        ParamValue::Byte(v) => v.to_string(),
        ParamValue::Word(v) => v.to_string(),
        ParamValue::Dword(v) => v.to_string(),
        ParamValue::Text(s) => s.clone(),
        ParamValue::Bytes(b) => hex::encode_upper(b),
    }
}

/// 0x0107.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttributesContent {
    terminal_type: String,
    manufacturer: String,
    terminal_model: String,
    terminal_id: String,
    iccid: String,
    hardware_version: String,
    firmware_version: String,
    /// bit0 GPS, bit1 BeiDou, bit2 GLONASS, bit3 Galileo.
    gnss_module: String,
    /// bit0 GPRS, bit1 CDMA, bit2 TD-SCDMA, bit3 WCDMA, bit4 CDMA2000, bit5 TD-LTE.
    comm_module: String,
}

impl AttributesContent {
    fn of(a: &Attributes) -> Self {
        AttributesContent {
            terminal_type: a.terminal_type.to_string(),
            manufacturer: a.manufacturer.clone(),
            terminal_model: a.model.clone(),
            terminal_id: a.terminal_id.clone(),
            iccid: a.iccid.clone(),
            hardware_version: a.hardware_version.clone(),
            firmware_version: a.firmware_version.clone(),
            gnss_module: a.gnss.to_string(),
            comm_module: a.comm.to_string(),
        }
    }
}

/// 0x0201, with the `/pushgps` names: signed decimal degrees, km/h, metres, UTC.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocationContent {
    lat: String,
    lng: String,
    gps_speed: String,
    direction: String,
    altitude: String,
    gps_time: String,
    /// The JT/T 808 alarm word.
    alarm_flag: String,
    /// The JT/T 808 status word.
    status: String,
}

impl LocationContent {
    fn of(location: &Location) -> Self {
        let b = &location.basic;
        LocationContent {
            lat: degrees(b.latitude_e6, b.status.has(StatusFlags::SOUTH)),
            lng: degrees(b.longitude_e6, b.status.has(StatusFlags::WEST)),
            gps_speed: format!("{}.{}", b.speed_dkmh / 10, b.speed_dkmh % 10),
            direction: b.course.to_string(),
            altitude: b.altitude_m.to_string(),
            gps_time: utc_text(b.time),
            alarm_flag: b.alarm.0.to_string(),
            status: b.status.0.to_string(),
        }
    }
}

/// 1e-6 degrees written exactly, without going through a float.
fn degrees(e6: u32, negative: bool) -> String {
    let sign = if negative && e6 != 0 { "-" } else { "" };
    format!("{sign}{}.{:06}", e6 / 1_000_000, e6 % 1_000_000)
}

/// 0x1003.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AvAttributesContent {
    audio_codec: String,
    audio_channels: String,
    /// 0 8 kHz, 1 22.05 kHz, 2 44.1 kHz, 3 48 kHz.
    sample_rate: String,
    /// 0 8 bits, 1 16, 2 32.
    sample_bits: String,
    audio_frame_length: String,
    /// "1" when the terminal can play audio out.
    audio_output: String,
    video_codec: String,
    max_audio_channels: String,
    max_video_channels: String,
}

impl AvAttributesContent {
    fn of(a: &AvAttributes) -> Self {
        AvAttributesContent {
            audio_codec: a.audio_codec.to_string(),
            audio_channels: a.audio_channels.to_string(),
            sample_rate: a.sample_rate.to_string(),
            sample_bits: a.sample_bits.to_string(),
            audio_frame_length: a.audio_frame_len.to_string(),
            audio_output: u8::from(a.audio_output).to_string(),
            video_codec: a.video_codec.to_string(),
            max_audio_channels: a.max_audio_channels.to_string(),
            max_video_channels: a.max_video_channels.to_string(),
        }
    }
}

/// 0x1205.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceListContent {
    total_num: String,
    resource_list: Vec<ResourceContent>,
}

impl ResourceListContent {
    fn of(list: &ResourceList) -> Self {
        ResourceListContent {
            total_num: list.items.len().to_string(),
            resource_list: list.items.iter().map(ResourceContent::of).collect(),
        }
    }
}

/// One 0x1205 file.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceContent {
    channel: String,
    begin_time: String,
    end_time: String,
    alarm_flag: String,
    resource_type: String,
    code_type: String,
    storage_type: String,
    /// Bytes.
    file_size: String,
}

impl ResourceContent {
    fn of(r: &AvResource) -> Self {
        ResourceContent {
            channel: r.channel.to_string(),
            begin_time: utc_text(r.start),
            end_time: utc_text(r.end),
            alarm_flag: r.alarm.to_string(),
            resource_type: r.av_type.to_string(),
            code_type: r.stream.to_string(),
            storage_type: r.storage.to_string(),
            file_size: r.size.to_string(),
        }
    }
}

/// 0x1206: `{"result":"0"}`, 0 uploaded, 1 failed.
#[derive(Serialize)]
struct UploadResultContent {
    result: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::codec::jt808::{decode, encode_body};
    use crate::codec::CrcPolicy;

    fn instruction(pro_no: u32, content: &str) -> Instruction {
        Instruction {
            pro_no,
            content: content.to_string(),
            server_flag_id: 1,
        }
    }

    fn accepted(pro_no: u32, content: &str, v2019: bool) -> Downlink {
        downlink(&instruction(pro_no, content), v2019)
            .unwrap_or_else(|e| panic!("proNo {pro_no} {content:?} refused: {e}"))
    }

    /// The body bytes, as hex, of what `content` becomes.
    fn body(pro_no: u32, content: &str, v2019: bool) -> String {
        let d = accepted(pro_no, content, v2019);
        hex::encode(encode_body(v2019, &d.message).expect("encodable"))
    }

    /// Hex written with spaces between fields, for reading against the standard's tables.
    fn fields(hex: &str) -> String {
        hex.replace(' ', "")
    }

    fn refusal(pro_no: u32, content: &str) -> (&'static str, String) {
        match downlink(&instruction(pro_no, content), false) {
            Err(InstructionRefusal::BadParameter { field, reason }) => (field, reason),
            other => panic!("expected BadParameter for {pro_no} {content:?}, got {other:?}"),
        }
    }

    fn refused_field(pro_no: u32, content: &str) -> &'static str {
        refusal(pro_no, content).0
    }

    /// A whole uplink frame, decoded with its check code verified.
    fn uplink(frame: &str) -> Message {
        let bytes = hex::decode(frame).expect("test hex");
        decode(&bytes, CrcPolicy::Reject)
            .expect("decodes")
            .expect("complete frame")
            .packet
            .message
    }

    // Uplinks built for these tests (phone 013912345678); the check codes are computed.
    /// 0x0001: serial 0x0007, id 0x8103, result 0.
    const ACK_8103: &str = "7e0001000501391234567800210007810300907e";
    /// 0x0001: serial 0x0008, id 0x8300, result 3 (not supported).
    const NOT_SUPPORTED_8300: &str = "7e00010005013912345678002200088300039e7e";
    /// 0x0104 answering serial 9: 0x0001 = 180, 0x0013 = "1.2.3.4", 0x0018 = 21122. Its
    /// check code is 0x7E, escaped.
    const PARAMS_REPLY: &str = "7e0104002101391234567800230009030000000104000000b4000000130731\
                                2e322e332e340000001804000052827d027e";
    /// 0x0104 answering serial 10: 0x007A (outside the table) = 00 00 AB CD, 0x0084 = 2.
    const PARAMS_REPLY_RAW: &str =
        "7e010400120139123456780024000a020000007a040000abcd000000840102947e";
    /// 0x1206 answering serial 11: uploaded.
    const UPLOAD_DONE: &str = "7e120600030139123456780025000b00097e";
    /// 0x0201 answering serial 12: south and west (status 0x0E), 33.8688 S 151.2093 W, 58 m,
    /// standing, course 90, 2024-02-03 14:34:38 GMT+8.
    const LOCATION_SOUTH_WEST: &str = "7e0201001e0139123456780026000c000000000000000e0204cc00\
                                       09034554003a0000005a240203143438857e";
    // Public device frames (the codec's vector set).
    /// jt808-smallchi-031: 0x0104 answering serial 20, 0x0001 = 10, 0x0013 = www.baidu.com.
    const SMALLCHI_PARAMS: &str = "7e0104001e000123456789000a00140200000001040000000a000000130d\
                                   7777772e62616964752e636f6df27e";
    /// jt808-smallchi-035: 0x0107.
    const SMALLCHI_ATTRIBUTES: &str = "7e0107004111223344556622b8000531303630313130343535353435\
                                       39353531303300000000000034643661313300123456789012345678\
                                       9007616263646566670a706f69757974726577710709ea7e";
    /// jt808-smallchi-053: 0x0201 answering serial 12345.
    const SMALLCHI_LOCATION: &str = "7e0201002811223344556622b83039000000010000000200ba7f0e07e4\
                                     f11c0028003c000018071510101001040000006402020037517e";
    /// jt808-go-parse-15: 0x1003.
    const GO_AV_ATTRIBUTES: &str = "7e1003000a12345678901200017f040200944901200808177e";
    /// jt808-go-parse-21: 0x1205 answering serial 0, one file.
    const GO_RESOURCE_LIST: &str = "7e1205002212345678901200000000000000010124110200000024110200\
                                    010200000000000004000101010000000bb27e";

    // ---- proNo 128: plain text ----

    #[test]
    fn text_command_is_a_displayed_and_spoken_0x8300() {
        assert_eq!(body(128, "STATUS#", false), "0c53544154555323");
    }

    #[test]
    fn text_command_2019_adds_text_type_notice() {
        assert_eq!(body(128, "STATUS#", true), "0c0153544154555323");
    }

    #[test]
    fn text_command_goes_out_as_gbk() {
        assert_eq!(body(128, "测试", false), "0cb2e2cad4");
    }

    #[test]
    fn text_command_message_id_is_0x8300() {
        assert_eq!(accepted(128, "STATUS#", false).msg_id, 0x8300);
    }

    #[test]
    fn text_command_of_1000_bytes_is_accepted() {
        assert_eq!(accepted(128, &"a".repeat(1000), false).msg_id, 0x8300);
    }

    #[test]
    fn text_command_of_1001_bytes_is_refused() {
        assert_eq!(refused_field(128, &"a".repeat(1001)), "cmdContent");
    }

    #[test]
    fn text_command_length_counts_gbk_bytes() {
        // 501 characters of two GBK bytes each.
        assert_eq!(refused_field(128, &"测".repeat(501)), "cmdContent");
    }

    #[test]
    fn text_command_empty_is_refused() {
        assert_eq!(refused_field(128, ""), "cmdContent");
    }

    #[test]
    fn text_command_outside_gbk_is_refused() {
        assert_eq!(refused_field(128, "ok \u{1F600}"), "cmdContent");
    }

    // ---- 33536: 0x8300 from JSON ----

    #[test]
    fn text_json_2019_with_flag_and_text_type() {
        let content = r#"{"flag":"1","text":"hello","textType":"2"}"#;
        assert_eq!(body(33536, content, true), "010268656c6c6f");
    }

    #[test]
    fn text_json_flag_defaults_to_display_and_tts() {
        assert_eq!(body(33536, r#"{"text":"hi"}"#, false), "0c6869");
    }

    #[test]
    fn text_json_without_text_is_refused() {
        assert_eq!(refused_field(33536, r#"{"flag":12}"#), "text");
    }

    #[test]
    fn text_json_text_type_3_is_refused() {
        assert_eq!(
            refused_field(33536, r#"{"text":"hi","textType":3}"#),
            "textType"
        );
    }

    // ---- 33027: 0x8103 set parameters ----

    #[test]
    fn set_params_typed_by_the_parameter_table_in_id_order() {
        let content = r#"{"1":60,"19":"1.2.3.4","49":"500","132":"1","4096":"hex:0102"}"#;
        let expected = fields(
            "05 \
             00000001 04 0000003c \
             00000013 07 312e322e332e34 \
             00000031 02 01f4 \
             00000084 01 01 \
             00001000 02 0102",
        );
        assert_eq!(body(33027, content, false), expected);
    }

    #[test]
    fn set_params_accepts_hex_ids_and_values() {
        assert_eq!(
            body(33027, r#"{"0x0001":"0x3C"}"#, false),
            fields("01 00000001 04 0000003c")
        );
    }

    #[test]
    fn set_params_hex_prefix_sends_raw_bytes_for_a_table_id() {
        assert_eq!(
            body(33027, r#"{"1":"hex:0000003c"}"#, false),
            fields("01 00000001 04 0000003c")
        );
    }

    #[test]
    fn set_params_number_for_a_text_parameter_is_its_decimal_text() {
        assert_eq!(
            body(33027, r#"{"64":13800138000}"#, false),
            fields("01 00000040 0b 3133383030313338303030")
        );
    }

    #[test]
    fn set_params_skips_instruction_id() {
        let d = accepted(33027, r#"{"1":"60","instructionID":"p-1"}"#, false);
        assert_eq!(
            d.message,
            Message::SetParams(vec![Param {
                id: 1,
                value: ParamValue::Dword(60)
            }])
        );
    }

    #[test]
    fn set_params_byte_out_of_range_names_the_key() {
        let (field, reason) = refusal(33027, r#"{"132":"256"}"#);
        assert_eq!(
            (field, reason.as_str()),
            ("cmdContent", r#"parameter "132": 256 is outside 0..=255"#)
        );
    }

    #[test]
    fn set_params_negative_dword_is_refused() {
        assert_eq!(refused_field(33027, r#"{"1":-1}"#), "cmdContent");
    }

    #[test]
    fn set_params_id_outside_the_table_needs_hex() {
        let (_, reason) = refusal(33027, r#"{"4096":"12"}"#);
        assert!(reason.contains("hex:"), "{reason}");
    }

    #[test]
    fn set_params_bad_key_is_refused() {
        let (_, reason) = refusal(33027, r#"{"abc":"1"}"#);
        assert_eq!(
            reason,
            r#"key "abc" is not a parameter id (0..=4294967295)"#
        );
    }

    #[test]
    fn set_params_same_id_twice_is_refused() {
        assert_eq!(
            refused_field(33027, r#"{"1":"60","0x1":"30"}"#),
            "cmdContent"
        );
    }

    #[test]
    fn set_params_empty_object_is_refused() {
        assert_eq!(refused_field(33027, "{}"), "cmdContent");
    }

    #[test]
    fn set_params_odd_hex_is_refused() {
        assert_eq!(refused_field(33027, r#"{"4096":"hex:012"}"#), "cmdContent");
    }

    // ---- 33028, 33031, 33281, 36867: empty queries ----

    #[test]
    fn query_all_params_from_empty_content() {
        assert_eq!(accepted(33028, "", false).message, Message::QueryAllParams);
    }

    #[test]
    fn query_all_params_from_empty_object() {
        assert_eq!(body(33028, "{}", false), "");
    }

    #[test]
    fn query_all_params_refuses_text_that_is_not_json() {
        assert_eq!(refused_field(33028, "all"), "cmdContent");
    }

    #[test]
    fn query_attributes_is_empty() {
        assert_eq!(accepted(33031, "", false).message, Message::QueryAttributes);
    }

    #[test]
    fn location_query_is_empty() {
        assert_eq!(accepted(33281, "{}", false).message, Message::LocationQuery);
    }

    #[test]
    fn av_attributes_query_is_empty() {
        assert_eq!(
            accepted(36867, "", false).message,
            Message::QueryAvAttributes
        );
    }

    // ---- 33029: 0x8105 terminal control ----

    #[test]
    fn terminal_control_reset() {
        assert_eq!(body(33029, r#"{"cmd":"4"}"#, false), "04");
    }

    #[test]
    fn terminal_control_connect_with_parameters() {
        assert_eq!(body(33029, r#"{"cmd":2,"param":"1"}"#, false), "0231");
    }

    #[test]
    fn terminal_control_upgrade_without_param_is_refused() {
        assert_eq!(refused_field(33029, r#"{"cmd":"1"}"#), "param");
    }

    #[test]
    fn terminal_control_reset_with_param_is_refused() {
        assert_eq!(refused_field(33029, r#"{"cmd":"4","param":"x"}"#), "param");
    }

    #[test]
    fn terminal_control_word_0_is_refused() {
        assert_eq!(refused_field(33029, r#"{"cmd":"0"}"#), "cmd");
    }

    // ---- 33030: 0x8106 query given parameters ----

    #[test]
    fn query_params_from_jimi_object() {
        assert_eq!(
            body(33030, r#"{"44":"","45":""}"#, false),
            fields("02 0000002c 0000002d")
        );
    }

    #[test]
    fn query_params_from_array_keeps_its_order() {
        assert_eq!(
            body(33030, r#"[19,"1"]"#, false),
            fields("02 00000013 00000001")
        );
    }

    #[test]
    fn query_params_empty_array_is_refused() {
        assert_eq!(refused_field(33030, "[]"), "cmdContent");
    }

    // ---- 34817: 0x8801 camera shoot ----

    #[test]
    fn camera_shoot_with_every_setting() {
        let content = r#"{"channel":"1","shootCmd":"3","interval":"5","saveFlag":"1",
            "resolution":"1","quality":"10","brightness":"100","contrast":"50",
            "saturation":"60","chroma":"70"}"#;
        assert_eq!(
            body(34817, content, false),
            fields("01 0003 0005 01 01 0a 64 32 3c 46")
        );
    }

    #[test]
    fn camera_shoot_defaults() {
        assert_eq!(
            body(34817, r#"{"channel":2}"#, false),
            fields("02 0001 0000 00 02 05 80 40 40 80")
        );
    }

    #[test]
    fn camera_shoot_quality_0_is_refused() {
        assert_eq!(
            refused_field(34817, r#"{"channel":1,"quality":0}"#),
            "quality"
        );
    }

    // ---- 37121: 0x9101 live audio/video ----

    /// The Jimi example, with the media server address filled in.
    const JIMI_LIVE: &str = r#"{"dataType":"0","codeStreamType":"0","channel":"1","videoIP":"120.78.224.93","videoTCPPort":"10002","videoUDPPort":"0"}"#;

    #[test]
    fn live_request_jimi_example() {
        assert_eq!(
            body(37121, JIMI_LIVE, false),
            fields("0d 3132302e37382e3232342e3933 2712 0000 01 00 00")
        );
    }

    #[test]
    fn live_request_message_id() {
        assert_eq!(accepted(37121, JIMI_LIVE, false).msg_id, 0x9101);
    }

    #[test]
    fn live_request_numbers_equal_strings() {
        let numbers = r#"{"dataType":0,"codeStreamType":0,"channel":1,"videoIP":"120.78.224.93","videoTCPPort":10002,"videoUDPPort":0}"#;
        assert_eq!(
            accepted(37121, numbers, false),
            accepted(37121, JIMI_LIVE, false)
        );
    }

    #[test]
    fn live_request_data_type_6_is_refused() {
        let content = r#"{"dataType":6,"channel":1,"videoIP":"1.2.3.4","videoTCPPort":1}"#;
        assert_eq!(refused_field(37121, content), "dataType");
    }

    #[test]
    fn live_request_without_any_port_is_refused() {
        let content = r#"{"channel":1,"videoIP":"1.2.3.4","videoTCPPort":0}"#;
        assert_eq!(refused_field(37121, content), "videoTCPPort");
    }

    #[test]
    fn live_request_address_that_is_not_a_string_is_refused() {
        let content = r#"{"channel":1,"videoIP":{},"videoTCPPort":1}"#;
        assert_eq!(refused_field(37121, content), "videoIP");
    }

    #[test]
    fn live_request_empty_address_is_refused() {
        let content = r#"{"channel":1,"videoIP":"","videoTCPPort":1}"#;
        assert_eq!(refused_field(37121, content), "videoIP");
    }

    #[test]
    fn broken_json_names_cmd_content() {
        assert_eq!(refused_field(37121, r#"{"channel":1"#), "cmdContent");
    }

    #[test]
    fn json_that_is_not_an_object_names_cmd_content() {
        assert_eq!(refused_field(37121, "[1]"), "cmdContent");
    }

    // ---- 37122: 0x9102 live control ----

    #[test]
    fn live_control_jimi_example() {
        let content = r#"{"channel":1,"cmd":"0","dataType":"0","codeStreamType":0}"#;
        assert_eq!(body(37122, content, false), "01000000");
    }

    #[test]
    fn live_control_switch_to_sub_stream() {
        let content = r#"{"channel":"2","cmd":"1","codeStreamType":"1"}"#;
        assert_eq!(body(37122, content, false), "02010001");
    }

    #[test]
    fn live_control_without_channel_is_refused() {
        assert_eq!(refused_field(37122, r#"{"cmd":"0"}"#), "channel");
    }

    #[test]
    fn channel_true_is_refused() {
        assert_eq!(
            refused_field(37122, r#"{"channel":true,"cmd":0}"#),
            "channel"
        );
    }

    #[test]
    fn channel_negative_is_refused() {
        assert_eq!(
            refused_field(37122, r#"{"channel":"-1","cmd":0}"#),
            "channel"
        );
    }

    #[test]
    fn channel_fraction_is_refused() {
        assert_eq!(
            refused_field(37122, r#"{"channel":1.5,"cmd":0}"#),
            "channel"
        );
    }

    #[test]
    fn channel_256_is_refused() {
        let (field, reason) = refusal(37122, r#"{"channel":256,"cmd":0}"#);
        assert_eq!(
            (field, reason.as_str()),
            ("channel", "256 is outside 0..=255")
        );
    }

    #[test]
    fn channel_blank_counts_as_missing() {
        assert_eq!(refused_field(37122, r#"{"channel":"","cmd":0}"#), "channel");
    }

    // ---- 37377: 0x9201 playback ----

    const PLAYBACK: &str = r#"{"serverAddress":"120.78.224.93","serverLen":"13","tcpPort":"10003","udpPort":"0","channel":"3","resourceType":"0","codeType":"1","storageType":"1","playMethod":"0","forwardRewind":"0","beginTime":"240203063000","endTime":"240203064000","instructionID":"pb-1"}"#;

    #[test]
    fn playback_request_times_go_out_in_gmt8() {
        assert_eq!(
            body(37377, PLAYBACK, false),
            fields(
                "0d 3132302e37382e3232342e3933 2713 0000 03 00 01 01 00 00 \
                 240203143000 240203144000"
            )
        );
    }

    #[test]
    fn playback_request_keeps_instruction_id() {
        assert_eq!(
            accepted(37377, PLAYBACK, false).instruction_id.as_deref(),
            Some("pb-1")
        );
    }

    #[test]
    fn playback_request_server_len_must_match() {
        let content = PLAYBACK.replace(r#""serverLen":"13""#, r#""serverLen":"12""#);
        assert_eq!(refused_field(37377, &content), "serverLen");
    }

    #[test]
    fn playback_request_invalid_month_is_refused() {
        let content = PLAYBACK.replace("240203063000", "241303063000");
        assert_eq!(refused_field(37377, &content), "beginTime");
    }

    #[test]
    fn playback_request_short_time_is_refused() {
        let content = PLAYBACK.replace("240203063000", "2402");
        assert_eq!(refused_field(37377, &content), "beginTime");
    }

    #[test]
    fn playback_request_time_past_2099_in_gmt8_is_refused() {
        let content = PLAYBACK.replace("240203064000", "991231200000");
        assert_eq!(refused_field(37377, &content), "endTime");
    }

    #[test]
    fn playback_request_without_end_time_is_refused() {
        let content = PLAYBACK.replace(r#","endTime":"240203064000""#, "");
        assert_eq!(refused_field(37377, &content), "endTime");
    }

    #[test]
    fn time_as_a_number_equals_time_as_a_string() {
        let numbers = PLAYBACK
            .replace(r#""240203063000""#, "240203063000")
            .replace(r#""240203064000""#, "240203064000");
        assert_eq!(
            accepted(37377, &numbers, false),
            accepted(37377, PLAYBACK, false)
        );
    }

    // ---- 37378: 0x9202 playback control ----

    #[test]
    fn playback_control_seek() {
        let content =
            r#"{"channel":"1","playCtrl":"5","forwardRewind":"0","beginTime":"240203063500"}"#;
        assert_eq!(body(37378, content, false), fields("01 05 00 240203143500"));
    }

    #[test]
    fn playback_control_pause_needs_no_time() {
        assert_eq!(
            body(37378, r#"{"channel":1,"playCtrl":1}"#, false),
            fields("01 01 00 000000000000")
        );
    }

    #[test]
    fn playback_control_seek_without_time_is_refused() {
        assert_eq!(
            refused_field(37378, r#"{"channel":1,"playCtrl":5}"#),
            "beginTime"
        );
    }

    // ---- 37381: 0x9205 resource query ----

    #[test]
    fn resource_query_unbounded_with_hex_alarm_filter() {
        let content = r#"{"channel":"0","beginTime":"000000000000","endTime":"000000000000","alarmFlag":"0x100000001","resourceType":"0","codeType":"0","storageType":"0","instructionID":"q-7"}"#;
        assert_eq!(
            body(37381, content, false),
            fields("00 000000000000 000000000000 0000000100000001 00 00 00")
        );
    }

    #[test]
    fn resource_query_times_cross_midnight_into_gmt8() {
        let content = r#"{"channel":1,"beginTime":"231231200000","endTime":"240101000000"}"#;
        assert_eq!(
            body(37381, content, false),
            fields("01 240101040000 240101080000 0000000000000000 00 00 00")
        );
    }

    fn resource_query_with_alarm_flag(flag: &str) -> Message {
        accepted(37381, &format!(r#"{{"alarmFlag":{flag}}}"#), false).message
    }

    #[test]
    fn alarm_flag_decimal_string_equals_hex() {
        assert_eq!(
            resource_query_with_alarm_flag(r#""4294967297""#),
            resource_query_with_alarm_flag(r#""0x100000001""#)
        );
    }

    #[test]
    fn alarm_flag_number_equals_hex() {
        assert_eq!(
            resource_query_with_alarm_flag("4294967297"),
            resource_query_with_alarm_flag(r#""0x100000001""#)
        );
    }

    #[test]
    fn alarm_flag_of_65_bits_is_refused() {
        assert_eq!(
            refused_field(37381, r#"{"alarmFlag":"0x10000000000000000"}"#),
            "alarmFlag"
        );
    }

    #[test]
    fn resource_query_instruction_id_from_a_number() {
        let d = accepted(37381, r#"{"instructionID":42}"#, false);
        assert_eq!(d.instruction_id.as_deref(), Some("42"));
    }

    #[test]
    fn empty_instruction_id_is_none() {
        let d = accepted(37381, r#"{"instructionID":""}"#, false);
        assert_eq!(d.instruction_id, None);
    }

    #[test]
    fn instruction_id_that_is_a_list_is_refused() {
        assert_eq!(
            refused_field(37381, r#"{"instructionID":[1]}"#),
            "instructionID"
        );
    }

    #[test]
    fn resource_query_storage_type_3_is_refused() {
        assert_eq!(refused_field(37381, r#"{"storageType":3}"#), "storageType");
    }

    // ---- 37382: 0x9206 FTP upload ----

    const FTP_UPLOAD: &str = r#"{"serverAddress":"10.0.0.5","ftpPort":"21","userName":"user","password":"pass","fileUploadPath":"/up","channel":"1","beginTime":"240203063000","endTime":"240203064000","alarmFlag":"0","resourceType":"2","codeType":"1","storageType":"1","condition":"1","instructionID":"ftp-9"}"#;

    #[test]
    fn file_upload_body() {
        assert_eq!(
            body(37382, FTP_UPLOAD, false),
            fields(
                "08 31302e302e302e35 0015 04 75736572 04 70617373 03 2f7570 01 \
                 240203143000 240203144000 0000000000000000 02 01 01 01"
            )
        );
    }

    #[test]
    fn file_upload_keeps_instruction_id() {
        assert_eq!(
            accepted(37382, FTP_UPLOAD, false).instruction_id.as_deref(),
            Some("ftp-9")
        );
    }

    #[test]
    fn file_upload_without_user_is_refused() {
        let content = FTP_UPLOAD.replace(r#""userName":"user","#, "");
        assert_eq!(refused_field(37382, &content), "userName");
    }

    #[test]
    fn file_upload_condition_defaults_to_any_network() {
        let content = FTP_UPLOAD.replace(r#","condition":"1""#, "");
        let Message::FileUpload(upload) = accepted(37382, &content, false).message else {
            panic!("0x9206 expected");
        };
        assert_eq!(upload.conditions, 7);
    }

    // ---- 37383: 0x9207 upload control ----

    #[test]
    fn upload_control_cancel() {
        assert_eq!(
            body(37383, r#"{"serialNo":"7","control":"2"}"#, false),
            "000702"
        );
    }

    #[test]
    fn upload_control_aliases() {
        assert_eq!(
            body(37383, r#"{"replySerial":7,"uploadControl":1}"#, false),
            "000701"
        );
    }

    #[test]
    fn upload_control_3_is_refused() {
        assert_eq!(
            refused_field(37383, r#"{"serialNo":7,"control":3}"#),
            "control"
        );
    }

    // ---- 37384: 0x9208 alarm attachment upload ----

    const ATTACHMENT: &str = r#"{"serverLen":"13","serverAddress":"120.78.224.93","tcpPort":21188,"udpPort":0,"alarmLabel":"30,30,30,31,37,36,32,24,02,03,14,34,38,00,01,00","alarmNumber":"ALM-0001"}"#;

    #[test]
    fn attachment_upload_body() {
        let expected = fields(
            "0d 3132302e37382e3232342e3933 52c4 0000 \
             30303031373632 240203143438 00 01 00 \
             414c4d2d30303031",
        ) + &"00".repeat(24 + 16);
        assert_eq!(body(37384, ATTACHMENT, false), expected);
    }

    #[test]
    fn attachment_label_as_32_hex_digits() {
        let plain = ATTACHMENT.replace(
            "30,30,30,31,37,36,32,24,02,03,14,34,38,00,01,00",
            "30303031373632240203143438000100",
        );
        assert_eq!(
            accepted(37384, &plain, false),
            accepted(37384, ATTACHMENT, false)
        );
    }

    #[test]
    fn attachment_label_of_15_bytes_is_refused() {
        let short = ATTACHMENT.replace(",01,00\"", ",01\"");
        assert_eq!(refused_field(37384, &short), "alarmLabel");
    }

    #[test]
    fn attachment_label_with_a_bad_byte_is_refused() {
        let bad_byte = ATTACHMENT.replace("30,30,30,31", "30,30,3G,31");
        assert_eq!(refused_field(37384, &bad_byte), "alarmLabel");
    }

    #[test]
    fn attachment_number_of_33_bytes_is_refused() {
        let long = ATTACHMENT.replace("ALM-0001", &"A".repeat(33));
        assert_eq!(refused_field(37384, &long), "alarmNumber");
    }

    // ---- proNos without a JT/T meaning ----

    #[test]
    fn manual_alarm_confirmation_is_unsupported() {
        assert_eq!(
            downlink(&instruction(33283, "{}"), false),
            Err(InstructionRefusal::UnsupportedProNo(33283))
        );
    }

    #[test]
    fn terminal_message_id_is_unsupported() {
        assert_eq!(
            downlink(&instruction(1, "{}"), false),
            Err(InstructionRefusal::UnsupportedProNo(1))
        );
    }

    #[test]
    fn pro_no_above_16_bits_is_unsupported() {
        assert_eq!(
            downlink(&instruction(0x1_8103, "{}"), false),
            Err(InstructionRefusal::UnsupportedProNo(0x1_8103))
        );
    }

    // ---- replies ----

    #[test]
    fn general_response_answers_its_serial_and_id() {
        assert_eq!(
            reply(0x8103, 0x0007, &uplink(ACK_8103)),
            Some(Reply {
                pro_no: 1,
                content: r#"{"result":"0","resultDesc":"success"}"#.to_string()
            })
        );
    }

    #[test]
    fn general_response_with_another_serial_is_no_answer() {
        assert_eq!(reply(0x8103, 0x0008, &uplink(ACK_8103)), None);
    }

    #[test]
    fn general_response_with_another_id_is_no_answer() {
        assert_eq!(reply(0x8105, 0x0007, &uplink(ACK_8103)), None);
    }

    #[test]
    fn general_response_not_supported() {
        let answer = reply(0x8300, 0x0008, &uplink(NOT_SUPPORTED_8300));
        assert_eq!(
            answer.map(|r| r.content),
            Some(r#"{"result":"3","resultDesc":"not supported"}"#.to_string())
        );
    }

    #[test]
    fn params_reply_json_text() {
        assert_eq!(
            reply(0x8104, 0x0009, &uplink(PARAMS_REPLY)),
            Some(Reply {
                pro_no: 260,
                content: r#"{"paramCount":"3","1":"180","19":"1.2.3.4","24":"21122"}"#.to_string()
            })
        );
    }

    #[test]
    fn params_reply_answers_a_query_of_given_params() {
        let answer = reply(0x8106, 0x0009, &uplink(PARAMS_REPLY));
        assert_eq!(answer.map(|r| r.pro_no), Some(260));
    }

    #[test]
    fn params_reply_with_another_serial_is_no_answer() {
        assert_eq!(reply(0x8104, 0x0008, &uplink(PARAMS_REPLY)), None);
    }

    #[test]
    fn params_reply_does_not_answer_set_params() {
        assert_eq!(reply(0x8103, 0x0009, &uplink(PARAMS_REPLY)), None);
    }

    #[test]
    fn params_reply_raw_bytes_as_uppercase_hex() {
        let answer = reply(0x8104, 0x000A, &uplink(PARAMS_REPLY_RAW));
        assert_eq!(
            answer.map(|r| r.content),
            Some(r#"{"paramCount":"2","122":"0000ABCD","132":"2"}"#.to_string())
        );
    }

    #[test]
    fn params_reply_public_frame() {
        let answer = reply(0x8104, 20, &uplink(SMALLCHI_PARAMS));
        assert_eq!(
            answer.map(|r| r.content),
            Some(r#"{"paramCount":"2","1":"10","19":"www.baidu.com"}"#.to_string())
        );
    }

    #[test]
    fn params_reply_repeated_id_keeps_the_last_value() {
        let repeated = Message::ParamsReply(crate::codec::jt808::ParamsReply {
            reply_serial: 1,
            params: vec![
                Param {
                    id: 1,
                    value: ParamValue::Dword(10),
                },
                Param {
                    id: 1,
                    value: ParamValue::Dword(20),
                },
            ],
        });
        assert_eq!(
            reply(0x8104, 1, &repeated).map(|r| r.content),
            Some(r#"{"paramCount":"1","1":"20"}"#.to_string())
        );
    }

    #[test]
    fn attributes_answer_0x8107() {
        assert_eq!(
            reply(0x8107, 0, &uplink(SMALLCHI_ATTRIBUTES)),
            Some(Reply {
                pro_no: 263,
                content: concat!(
                    r#"{"terminalType":"5","manufacturer":"10601","#,
                    r#""terminalModel":"10455545955103","terminalId":"4d6a13","#,
                    r#""iccid":"12345678901234567890","hardwareVersion":"abcdefg","#,
                    r#""firmwareVersion":"poiuytrewq","gnssModule":"7","commModule":"9"}"#
                )
                .to_string()
            })
        );
    }

    #[test]
    fn attributes_do_not_answer_another_query() {
        assert_eq!(reply(0x8104, 0, &uplink(SMALLCHI_ATTRIBUTES)), None);
    }

    #[test]
    fn location_reply_public_frame() {
        assert_eq!(
            reply(0x8201, 12345, &uplink(SMALLCHI_LOCATION)),
            Some(Reply {
                pro_no: 513,
                content: concat!(
                    r#"{"lat":"12.222222","lng":"132.444444","gpsSpeed":"6.0","#,
                    r#""direction":"0","altitude":"40","gpsTime":"2018-07-15 02:10:10","#,
                    r#""alarmFlag":"1","status":"2"}"#
                )
                .to_string()
            })
        );
    }

    #[test]
    fn location_reply_south_west_is_negative() {
        let answer = reply(0x8201, 12, &uplink(LOCATION_SOUTH_WEST));
        assert_eq!(
            answer.map(|r| r.content),
            Some(
                concat!(
                    r#"{"lat":"-33.868800","lng":"-151.209300","gpsSpeed":"0.0","#,
                    r#""direction":"90","altitude":"58","gpsTime":"2024-02-03 06:34:38","#,
                    r#""alarmFlag":"0","status":"14"}"#
                )
                .to_string()
            )
        );
    }

    #[test]
    fn location_reply_with_another_serial_is_no_answer() {
        assert_eq!(reply(0x8201, 12344, &uplink(SMALLCHI_LOCATION)), None);
    }

    #[test]
    fn av_attributes_answer_0x9003() {
        assert_eq!(
            reply(0x9003, 0, &uplink(GO_AV_ATTRIBUTES)),
            Some(Reply {
                pro_no: 4099,
                content: concat!(
                    r#"{"audioCodec":"127","audioChannels":"4","sampleRate":"2","#,
                    r#""sampleBits":"0","audioFrameLength":"37961","audioOutput":"1","#,
                    r#""videoCodec":"32","maxAudioChannels":"8","maxVideoChannels":"8"}"#
                )
                .to_string()
            })
        );
    }

    #[test]
    fn resource_list_answers_0x9205() {
        assert_eq!(
            reply(0x9205, 0, &uplink(GO_RESOURCE_LIST)),
            Some(Reply {
                pro_no: 4613,
                content: concat!(
                    r#"{"totalNum":"1","resourceList":[{"channel":"1","#,
                    r#""beginTime":"2024-11-01 16:00:00","endTime":"2024-11-01 16:01:02","#,
                    r#""alarmFlag":"1024","resourceType":"1","codeType":"1","#,
                    r#""storageType":"1","fileSize":"11"}]}"#
                )
                .to_string()
            })
        );
    }

    #[test]
    fn resource_list_with_another_serial_is_no_answer() {
        assert_eq!(reply(0x9205, 1, &uplink(GO_RESOURCE_LIST)), None);
    }

    #[test]
    fn resource_list_json_value() {
        let Message::ResourceList(list) = uplink(GO_RESOURCE_LIST) else {
            panic!("0x1205 expected");
        };
        assert_eq!(
            resource_list_json(&list),
            json!({
                "totalNum": "1",
                "resourceList": [{
                    "channel": "1",
                    "beginTime": "2024-11-01 16:00:00",
                    "endTime": "2024-11-01 16:01:02",
                    "alarmFlag": "1024",
                    "resourceType": "1",
                    "codeType": "1",
                    "storageType": "1",
                    "fileSize": "11"
                }]
            })
        );
    }

    #[test]
    fn upload_result_answers_0x9206() {
        assert_eq!(
            reply(0x9206, 11, &uplink(UPLOAD_DONE)),
            Some(Reply {
                pro_no: 4614,
                content: r#"{"result":"0"}"#.to_string()
            })
        );
    }

    #[test]
    fn upload_result_does_not_answer_a_resource_query() {
        assert_eq!(reply(0x9205, 11, &uplink(UPLOAD_DONE)), None);
    }

    #[test]
    fn location_report_answers_nothing() {
        assert_eq!(reply(0x8201, 0, &Message::Heartbeat), None);
    }
}
