//! The sendInstruct request as customer platforms really send it: a form body or a JSON body,
//! `imei` or `deviceImei`, `offlineFlag` or `offLineFlag`, numbers as numbers or as strings
//! (the Jimi deployment guide's own JSON example quotes them and spells `cmdcontent` in lower
//! case). Field names are therefore matched without regard to case, every value is read as
//! text first, and each field is then checked once, here, with an error that names it.

use std::collections::HashMap;
use std::time::Duration;

use iothub::command::Instruction;
use iothub::imei::Imei;

use crate::config::parse_bool;

/// The `cmdType` echoed as `_type` when the request has none.
pub const DEFAULT_CMD_TYPE: &str = "normallns";

/// Longest echoed text field (`cmdType`, `language`, `requestId`, `platform`); these are
/// short tokens, and anything longer is a client bug better refused than echoed.
const MAX_ECHO_LEN: usize = 64;

/// A request body that could not be read as fields at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body: {0}")]
pub struct BodyError(pub String);

/// A field that is missing or invalid: becomes `_code` 200 with `_msg` = `"{field}: {reason}"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field_error(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// The body's fields: lower-cased name -> value as text.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    values: HashMap<String, String>,
    /// A name given twice with different values; reported by [`Fields::validate`] once the
    /// token has been checked (so unauthenticated callers learn nothing about fields).
    conflict: Option<String>,
}

impl Fields {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub fn from_form(body: &[u8]) -> Result<Fields, BodyError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| BodyError(format!("not a valid form: {e}")))?;
        let mut fields = Fields::default();
        for (k, v) in pairs {
            fields.insert(k, v);
        }
        Ok(fields)
    }

    /// Reads a JSON object body. Numbers and booleans are taken as their text; an object or
    /// array value (a `cmdContent` sent as JSON rather than as a JSON string) is taken as
    /// its compact JSON text; `null` counts as absent.
    pub fn from_json(body: &[u8]) -> Result<Fields, BodyError> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| BodyError(format!("not a JSON object: {e}")))?;
        let mut fields = Fields::default();
        for (k, v) in object {
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                other @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                    other.to_string()
                }
            };
            fields.insert(k, text);
        }
        Ok(fields)
    }

    /// Reads a body by its content type: JSON when it says so (or when no usable type is
    /// given and the body looks like an object), a form otherwise.
    pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Result<Fields, BodyError> {
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        match mime.as_deref() {
            Some(m) if m == "application/json" || m.ends_with("+json") => Fields::from_json(body),
            Some("application/x-www-form-urlencoded") => Fields::from_form(body),
            _ if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => {
                Fields::from_json(body)
            }
            _ => Fields::from_form(body),
        }
    }

    fn insert(&mut self, key: String, value: String) {
        let key = key.to_ascii_lowercase();
        match self.values.get(&key) {
            Some(previous) if *previous != value => {
                if self.conflict.is_none() {
                    self.conflict = Some(key);
                }
            }
            Some(_) => {}
            None => {
                self.values.insert(key, value);
            }
        }
    }

    /// The value of a field (name in lower case); empty counts as absent.
    pub fn get(&self, lower_name: &str) -> Option<&str> {
        self.values
            .get(lower_name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The `token` field.
    pub fn token(&self) -> Option<&str> {
        self.get("token")
    }

    /// What the answer echoes even when the request is invalid, read leniently.
    pub fn echo(&self) -> Echo {
        Echo {
            imei: self
                .get("imei")
                .or_else(|| self.get("deviceimei"))
                .map(|s| s.chars().take(32).collect())
                .unwrap_or_default(),
            pro_no: self.get("prono").and_then(|s| s.trim().parse().ok()),
            server_flag_id: self
                .get("serverflagid")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            cmd_type: self
                .get("cmdtype")
                .filter(|s| s.len() <= MAX_ECHO_LEN)
                .unwrap_or(DEFAULT_CMD_TYPE)
                .to_string(),
            language: self
                .get("language")
                .filter(|s| s.len() <= MAX_ECHO_LEN)
                .map(str::to_string),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self, limits: &Limits) -> Result<SendInstruct, FieldError> {
        if let Some(key) = &self.conflict {
            let field = canonical_name(key);
            return Err(field_error(
                field,
                "given more than once with different values",
            ));
        }

        let imei = match (self.get("imei"), self.get("deviceimei")) {
            (Some(a), Some(b)) if a.trim() != b.trim() => {
                return Err(field_error("imei", "imei and deviceImei differ"))
            }
            (Some(s), _) | (None, Some(s)) => {
                Imei::parse(s.trim()).map_err(|_| field_error("imei", "must be 1-20 digits"))?
            }
            (None, None) => return Err(field_error("imei", "missing")),
        };

        let pro_no = match self.get("prono") {
            None => return Err(field_error("proNo", "missing")),
            Some(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|_| field_error("proNo", "must be an integer 0..=4294967295"))?,
        };

        let server_flag_id = match self.get("serverflagid") {
            None => 0,
            Some(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|_| field_error("serverFlagId", "must be an integer 0..=4294967295"))?,
        };

        let max = limits.max_timeout.as_secs();
        let timeout = match self.get("timeout") {
            None => limits.default_timeout,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Duration::from_secs(n),
                _ => return Err(field_error("timeOut", format!("must be 1..={max} seconds"))),
            },
        };

        let offline = flag(self.get("offlineflag"), "offlineFlag", false)?;
        let sync = flag(self.get("sync"), "sync", true)?;

        let cmd_type = short_text(self.get("cmdtype"), "cmdType")?
            .unwrap_or(DEFAULT_CMD_TYPE)
            .to_string();
        let language = short_text(self.get("language"), "language")?.map(str::to_string);
        let request_id = short_text(self.get("requestid"), "requestId")?.map(str::to_string);
        let platform = short_text(self.get("platform"), "platform")?.map(str::to_string);

        Ok(SendInstruct {
            imei,
            instruction: Instruction {
                pro_no,
                content: self.get("cmdcontent").unwrap_or_default().to_string(),
                server_flag_id,
            },
            timeout,
            offline,
            sync,
            cmd_type,
            language,
            request_id,
            platform,
        })
    }
}

/// The configured bounds of `timeOut`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// Echoed parts of a request, available even when it is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub imei: String,
    pub pro_no: Option<u32>,
    pub server_flag_id: u32,
    pub cmd_type: String,
    pub language: Option<String>,
}

/// A valid sendInstruct request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendInstruct {
    pub imei: Imei,
    pub instruction: Instruction,
    /// How long the device has to answer.
    pub timeout: Duration,
    /// `offlineFlag`: queue the instruction for the next login if the device is not online.
    pub offline: bool,
    /// `sync`: accepted for compatibility; the answer always waits for the device reply
    /// (or the timeout), so `sync=0` behaves like `sync=1`.
    pub sync: bool,
    pub cmd_type: String,
    pub language: Option<String>,
    /// `requestId`: for logs only; never returned (as in the Jimi hub).
    pub request_id: Option<String>,
    pub platform: Option<String>,
}

fn flag(value: Option<&str>, field: &'static str, default: bool) -> Result<bool, FieldError> {
    match value {
        None => Ok(default),
        Some(s) => parse_bool(s).ok_or_else(|| field_error(field, "must be 0, 1, true or false")),
    }
}

fn short_text<'a>(
    value: Option<&'a str>,
    field: &'static str,
) -> Result<Option<&'a str>, FieldError> {
    match value {
        Some(s) if s.len() > MAX_ECHO_LEN => Err(field_error(
            field,
            format!("must be at most {MAX_ECHO_LEN} characters"),
        )),
        other => Ok(other),
    }
}

/// The documented spelling of a lower-cased field name, for messages.
fn canonical_name(lower: &str) -> &'static str {
    match lower {
        "imei" => "imei",
        "deviceimei" => "deviceImei",
        "prono" => "proNo",
        "cmdcontent" => "cmdContent",
        "serverflagid" => "serverFlagId",
        "timeout" => "timeOut",
        "offlineflag" => "offlineFlag",
        "sync" => "sync",
        "cmdtype" => "cmdType",
        "language" => "language",
        "requestid" => "requestId",
        "platform" => "platform",
        "token" => "token",
        _ => "field",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(120),
    };

    fn form(body: &str) -> Result<SendInstruct, FieldError> {
        Fields::from_form(body.as_bytes())
            .map_err(|e| field_error("body", e.0))?
            .validate(&LIMITS)
    }

    #[test]
    fn official_example_form() {
        // The curl example of the Jimi documentation.
        let r = form("imei=862798050240873&cmdContent=SERVER&serverFlagId=1&proNo=128&platform=web&requestId=6&cmdType=normallns&token=123").unwrap();
        assert_eq!(r.imei.as_str(), "862798050240873");
        assert_eq!(r.instruction.pro_no, 128);
        assert_eq!(r.instruction.content, "SERVER");
        assert_eq!(r.instruction.server_flag_id, 1);
        assert_eq!(r.timeout, Duration::from_secs(30));
        assert!(!r.offline);
    }

    #[test]
    fn deployment_guide_json_with_quoted_numbers() {
        let body = br#"{"deviceImei":"000105042285948","cmdcontent":"startLiveURL","serverFlagId":"0","proNo":"128","platform":"web","requestId":"12345","cmdType":"normallns","offlineFlag":"0","timeOut":"4","token":"123"}"#;
        let r = Fields::from_json(body).unwrap().validate(&LIMITS).unwrap();
        assert_eq!(r.imei.as_str(), "000105042285948");
        assert_eq!(r.instruction.content, "startLiveURL");
        assert_eq!(r.timeout, Duration::from_secs(4));
    }

    #[test]
    fn json_object_content_becomes_its_text() {
        let body = br#"{"imei":"1","proNo":33027,"cmdContent":{"1":"60"}}"#;
        let r = Fields::from_json(body).unwrap().validate(&LIMITS).unwrap();
        assert_eq!(r.instruction.content, r#"{"1":"60"}"#);
    }

    #[test]
    fn off_line_flag_spelling() {
        assert!(form("imei=1&proNo=128&offLineFlag=1").unwrap().offline);
        assert!(form("imei=1&proNo=128&offlineFlag=true").unwrap().offline);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(form("proNo=128").unwrap_err().to_string(), "imei: missing");
        assert_eq!(
            form("imei=12ab&proNo=128").unwrap_err().to_string(),
            "imei: must be 1-20 digits"
        );
        assert_eq!(form("imei=1").unwrap_err().to_string(), "proNo: missing");
        assert_eq!(
            form("imei=1&proNo=128&timeOut=121")
                .unwrap_err()
                .to_string(),
            "timeOut: must be 1..=120 seconds"
        );
        assert_eq!(
            form("imei=1&proNo=128&serverFlagId=4294967296")
                .unwrap_err()
                .to_string(),
            "serverFlagId: must be an integer 0..=4294967295"
        );
        assert_eq!(
            form("imei=1&proNo=128&offlineFlag=2")
                .unwrap_err()
                .to_string(),
            "offlineFlag: must be 0, 1, true or false"
        );
    }

    #[test]
    fn imei_and_device_imei_must_agree() {
        assert!(form("imei=1&deviceImei=1&proNo=128").is_ok());
        assert_eq!(
            form("imei=1&deviceImei=2&proNo=128")
                .unwrap_err()
                .to_string(),
            "imei: imei and deviceImei differ"
        );
    }

    #[test]
    fn repeated_field_with_other_value_is_refused() {
        assert_eq!(
            form("imei=1&proNo=128&proNo=129").unwrap_err().to_string(),
            "proNo: given more than once with different values"
        );
    }

    #[test]
    fn content_type_decides_and_sniffing_is_the_fallback() {
        let json = br#"{"imei":"1","proNo":1}"#;
        assert!(Fields::from_body(Some("application/json; charset=utf-8"), json).is_ok());
        assert!(Fields::from_body(None, json).unwrap().get("imei") == Some("1"));
        assert!(Fields::from_body(Some("application/json"), b"imei=1").is_err());
    }
}
