//! The customer side of a push: request bodies in the Jimi push format and the success rule.
//!
//! - Topic pushes: `POST {pushURL}{path}`, `application/x-www-form-urlencoded`,
//!   `token=<pushToken>&data_list=<JSON array of the records>` (`msgType=2` added for
//!   `/pushInstructResponse`, whose records are replies to offline instructions).
//! - Offline instruction callback: `POST {offlineCmdPushURL}` with the record object itself as
//!   `application/json`, plus `"token"`.
//!
//! Accepted = a 2xx status AND a JSON body whose `code` is 0 (number or the string "0");
//! customers answer `{"code":0}` to stop the hub from pushing the same data again.
//!
//! A failure is transient or permanent ([`Outcome::is_permanent`]). Transient: transport
//! errors, 5xx, 408, 425, 429 and a 2xx whose `code` is not 0: the endpoint is down,
//! overloaded or busy; and the statuses that refuse every request whatever it carries (401,
//! 403, 404, 405, 407, 421): a wrong token, URL or proxy that the customer or the operator
//! fixes. Either way the same request succeeds once that is over, so the batch is retried as
//! is (capped backoff, until `push.max_age`): an outage or a misconfiguration loses nothing
//! and reorders nothing. Permanent: every other 4xx (400, 413, 415, 422, ...), where the
//! endpoint refuses this content and will never take it as sent; retrying it as is would hold
//! the topic up for every device, so after `push.dead_letter_after` tries the batch is split
//! to find the records refused, which go to the dead-letter store.

use std::time::Duration;

use iothub::event::Topic;
use reqwest::header::CONTENT_TYPE;

/// Largest reply body read; a push reply is a few bytes of JSON.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Where and how one topic is pushed.
#[derive(Debug, Clone)]
pub struct Destination {
    pub topic: Topic,
    pub url: String,
    pub token: String,
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `token` + `data_list` form, with `msgType` when set.
    Form { msg_type: Option<&'static str> },
    /// One record per request as a JSON object with `token` added.
    JsonObject,
}

/// What came of one request; the label is the `outcome` of `iothub_push_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Non-2xx status.
    Status(u16),
    /// 2xx, but the body was not JSON with `code` 0.
    Rejected(String),
    /// Connection, timeout or body read failure.
    Transport(String),
}

/// 4xx statuses that do not judge the request's content: retried as transient.
const REFUSES_EVERY_REQUEST_OR_BUSY: [u16; 9] = [401, 403, 404, 405, 407, 408, 421, 425, 429];

impl Outcome {
    /// True when sending the same request again cannot succeed (see the module docs).
    pub fn is_permanent(&self) -> bool {
        match self {
            Outcome::Status(s) => {
                (400..500).contains(s) && !REFUSES_EVERY_REQUEST_OR_BUSY.contains(s)
            }
            Outcome::Accepted | Outcome::Rejected(_) | Outcome::Transport(_) => false,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Status(_) => "http_status",
            Outcome::Rejected(_) => "rejected",
            Outcome::Transport(_) => "transport",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Accepted => f.write_str("accepted"),
            Outcome::Status(s) => write!(f, "HTTP status {s}"),
            Outcome::Rejected(body) => write!(f, "rejected: {body}"),
            Outcome::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

/// The form body of a topic push carrying `records` (each a JSON object).
pub fn form_body(token: &str, msg_type: Option<&str>, records: &[&[u8]]) -> String {
    let total: usize = records.iter().map(|r| r.len() + 1).sum();
    let mut data_list = String::with_capacity(total + 2);
    data_list.push('[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            data_list.push(',');
        }
        data_list.push_str(&String::from_utf8_lossy(r));
    }
    data_list.push(']');
    let mut fields: Vec<(&str, &str)> = vec![("token", token)];
    if let Some(t) = msg_type {
        fields.push(("msgType", t));
    }
    fields.push(("data_list", &data_list));
    // Encoding string pairs cannot fail.
    serde_urlencoded::to_string(fields).unwrap_or_default()
}

/// The JSON body of an offline instruction callback: the record with `token` added.
/// `None` when the record is not a JSON object (it cannot be delivered in this format).
pub fn json_object_body(token: &str, record: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(record).ok()?;
    value.insert("token".into(), serde_json::Value::String(token.to_owned()));
    serde_json::to_vec(&value).ok()
}

/// True when a reply body says the customer accepted the data.
pub fn reply_accepted(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    match value.get("code") {
        Some(serde_json::Value::Number(n)) => n.as_i64() == Some(0) || n.as_f64() == Some(0.0),
        Some(serde_json::Value::String(s)) => s.trim() == "0",
        _ => false,
    }
}

/// Builds the client every delivery loop shares (connection pool per host).
pub fn client(
    request_timeout: Duration,
    connect_timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout.min(request_timeout))
        .pool_max_idle_per_host(8)
        .build()?)
}

/// Sends one request and applies the success rule.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Outcome {
    let mut response = match client
        .post(url)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Transport(e.to_string()),
    };
    let status = response.status();
    let mut reply = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_REPLY_BYTES.saturating_sub(reply.len());
                reply.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                if reply.len() >= MAX_REPLY_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Outcome::Transport(e.to_string()),
        }
    }
    if !status.is_success() {
        return Outcome::Status(status.as_u16());
    }
    if reply_accepted(&reply) {
        Outcome::Accepted
    } else {
        let shown = String::from_utf8_lossy(reply.get(..200).unwrap_or(&reply)).into_owned();
        Outcome::Rejected(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_body_carries_token_and_array() {
        let body = form_body("tk", None, &[br#"{"a":1}"#, br#"{"b":"x y"}"#]);
        let fields: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
        assert_eq!(fields[0], ("token".to_string(), "tk".to_string()));
        assert_eq!(
            fields[1],
            (
                "data_list".to_string(),
                r#"[{"a":1},{"b":"x y"}]"#.to_string()
            )
        );
    }

    #[test]
    fn form_body_adds_msg_type() {
        let body = form_body("tk", Some("2"), &[b"{}"]);
        assert!(body.contains("msgType=2"));
    }

    #[test]
    fn json_object_gets_token() {
        let body = json_object_body("tk", br#"{"code":0,"msg":"ok"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["token"], "tk");
        assert_eq!(v["msg"], "ok");
    }

    #[test]
    fn json_array_record_is_not_an_object() {
        assert!(json_object_body("tk", b"[1]").is_none());
    }

    #[test]
    fn refusals_of_the_request_itself_are_permanent() {
        for status in [400, 411, 413, 414, 415, 422] {
            assert!(Outcome::Status(status).is_permanent(), "{status}");
        }
    }

    #[test]
    fn outages_and_overload_are_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(!Outcome::Status(status).is_permanent(), "{status}");
        }
    }

    #[test]
    fn a_wrong_token_or_url_is_retried_until_fixed() {
        for status in [401, 403, 404, 405, 407, 421] {
            assert!(!Outcome::Status(status).is_permanent(), "{status}");
        }
        assert!(!Outcome::Rejected(r#"{"code":1}"#.into()).is_permanent());
        assert!(!Outcome::Transport("connection refused".into()).is_permanent());
    }

    #[test]
    fn success_rule() {
        assert!(reply_accepted(br#"{"code":0}"#));
        assert!(reply_accepted(br#"{"code":"0","message":"ok"}"#));
        assert!(!reply_accepted(br#"{"code":1}"#));
        assert!(!reply_accepted(br#"{"msg":"ok"}"#));
        assert!(!reply_accepted(b"OK"));
    }
}
