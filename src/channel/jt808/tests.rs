//! Scenario tests of the JT/T 808 channel: packets in, actions out, no socket.
//!
//! Uplinks are the real frames of `tests/vectors/jt808.jsonl` (go-jt808's and traccar's test
//! frames of terminal `012345678901`, 2013, and `00000000017299841738`, 2019) run through the
//! codec, so codec and channel are checked together; expected replies are written out in hex.

use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;
use crate::codec::jt808::{
    decode, encode, encode_split, AdasAlarm, AlarmLabel, BasicLocation, BcdTime, LocationItem,
    Phone, SafetyCommon, StatusFlags,
};
use crate::codec::CrcPolicy;
use crate::event::Topic;

/// go-parse-08: 0x0100 register, 2013 layout, serial 0.
const REGISTER_2013: &str = "7e0100002c0123456789010000001f007363640000007777772e3830382e636f6d0000000000000000003736353433323101b2e24131323334cc7e";
/// go-parse-05: 0x0102 authenticate with code "17299841738", serial 0.
const AUTH_2013: &str = "7e0102000b01234567890100003137323939383431373338b57e";
/// go-parse-06: 0x0102, 2019 layout (code, IMEI, software version), serial 0.
const AUTH_2019: &str = "7e0102402f010000000001729984173800000b3137323939383431373338313233343536373839303132333435332e372e31350000000000000000000000000000227e";
/// go-reply-01: 0x0002 heartbeat, serial 0x7fff.
const HEARTBEAT: &str = "7e000200000123456789017fff0a7e";
/// go-reply-03: 0x0200 with items 0x01, 0x02, 0x03, 0x04, 0x05, 0x11, 0x12, 0x13, 0x25,
/// 0x2a, 0x2b, 0x30, 0x31; alarm word 0x400 (bit 10), status 0x800; serial 0x7fff.
const LOCATION: &str = "7e0200007c0123456789017fff000004000000080006eeb6ad02633df701380003006320070719235901040000000b02020016030200210402002c051e3737370000000000000000000000000000000000000000000000000000001105420000004212064d0000004d4d1307000000580058582504000000632a02000a2b040000001430011e3101286b7e";
/// go-parse-11: 0x0704, 2 items, type 0 (normal batch).
const BATCH: &str = "7e0704003f0123456789010000000200001c000004000000080007203b7d0202633df7013800030063241001235959001c000004000000080007203b7d0202633df7013800030063241001235959b67e";
/// go-parse-31: 0x0800 multimedia event.
const MEDIA_EVENT: &str = "7e080000080123456789017fff0000007b00000701757e";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(n)
}

fn config(new_imei_rule: bool) -> Jt808ChannelConfig {
    Jt808ChannelConfig {
        read_timeout: Duration::from_secs(300),
        login_timeout: Duration::from_secs(60),
        auth_grace: Duration::from_secs(10),
        new_imei_rule,
        accept_unknown_auth_codes: true,
        allow_reregistration: false,
        registrations_per_connection: 3,
        subpackages: Limits::default(),
        auth_code_seed: 42,
    }
}

/// The check the channel waits for (a check no one asked for when it waits for none).
fn pending_check(c: &Jt808Channel) -> CheckId {
    match &c.pending {
        Some(PendingCheck::Auth { check, .. } | PendingCheck::Registration { check, .. }) => *check,
        None => CheckId(u32::MAX),
    }
}

/// The store's verdict on the authentication the channel waits for.
fn verdict(c: &mut Jt808Channel, verdict: AuthVerdict, now: DateTime<Utc>) -> Vec<Action> {
    let check = pending_check(c);
    c.handle_auth_verdict(check, verdict, now)
}

/// The driver's answer to the registration the channel waits for.
fn registered(
    c: &mut Jt808Channel,
    verdict: RegistrationVerdict,
    now: DateTime<Utc>,
) -> Vec<Action> {
    let check = pending_check(c);
    c.handle_registration_verdict(check, verdict, now)
}

/// The 0x8100 among the actions.
fn register_response(actions: &[Action]) -> RegisterResponse {
    let reply = hex::decode(&sent(actions)[0]).unwrap();
    match decode(&reply, CrcPolicy::Reject)
        .unwrap()
        .map(|d| d.packet.message)
    {
        Some(Message::RegisterResponse(r)) => r,
        other => panic!("0x8100 expected, got {other:?}"),
    }
}

fn channel() -> Jt808Channel {
    Jt808Channel::new(config(false), t0())
}

fn packet(hex: &str) -> Packet {
    let raw = hex::decode(hex).unwrap();
    decode(&raw, CrcPolicy::Reject).unwrap().unwrap().packet
}

fn imei() -> Imei {
    Imei::parse("12345678901").unwrap()
}

fn sent(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(hex::encode(b)),
            _ => None,
        })
        .collect()
}

fn published(actions: &[Action]) -> Vec<(Topic, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(e) => Some((e.topic, String::from_utf8(e.to_json()).unwrap())),
            _ => None,
        })
        .collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// A channel whose terminal authenticated (the store said the code matches).
fn authenticated() -> Jt808Channel {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    verdict(&mut c, AuthVerdict::Match, t0());
    c
}

/// Builds an uplink of terminal 012345678901 with the codec (for messages no vector has).
fn uplink(msg_id: u16, serial: u16, message: &Message) -> Packet {
    let header = Header {
        msg_id,
        version: None,
        phone: Phone::from_digits("012345678901", false).unwrap(),
        serial,
        package: None,
        version_flag_mismatch: false,
    };
    let raw = match message {
        Message::Unknown(body) => crate::codec::jt808::encode_raw(&header, body).unwrap(),
        m => encode(&header, m).unwrap(),
    };
    decode(&raw, CrcPolicy::Reject).unwrap().unwrap().packet
}

// --- registration and authentication ---

/// The code a registration asks the driver to store.
fn code_to_register(actions: &[Action]) -> String {
    match actions {
        [Action::RegisterTerminal { code, .. }] => code.clone(),
        other => panic!("a registration must ask only to store the code: {other:?}"),
    }
}

#[test]
fn register_sends_nothing_before_the_code_is_stored() {
    let mut c = channel();
    let actions = c.handle_frame(packet(REGISTER_2013), t0());
    assert!(sent(&actions).is_empty(), "{actions:?}");
}

#[test]
fn register_asks_to_store_the_code_of_its_terminal() {
    let mut c = channel();
    let actions = c.handle_frame(packet(REGISTER_2013), t0());
    let [Action::RegisterTerminal {
        imei: stored_for, ..
    }] = &actions[..]
    else {
        panic!("{actions:?}");
    };
    assert_eq!(*stored_for, imei());
}

#[test]
fn register_does_not_replace_a_held_code_by_default() {
    let mut c = channel();
    let actions = c.handle_frame(packet(REGISTER_2013), t0());
    assert!(matches!(
        actions[..],
        [Action::RegisterTerminal { replace: false, .. }]
    ));
}

#[test]
fn register_replaces_a_held_code_when_the_operator_allows_it() {
    let mut c = Jt808Channel::new(
        Jt808ChannelConfig {
            allow_reregistration: true,
            ..config(false)
        },
        t0(),
    );
    let actions = c.handle_frame(packet(REGISTER_2013), t0());
    assert!(matches!(
        actions[..],
        [Action::RegisterTerminal { replace: true, .. }]
    ));
}

#[test]
fn stored_registration_hands_out_the_stored_code() {
    let mut c = channel();
    let code = code_to_register(&c.handle_frame(packet(REGISTER_2013), t0()));
    let r = register_response(&registered(&mut c, RegistrationVerdict::Registered, t0()));
    assert_eq!(
        (r.result, r.auth_code.as_deref(), r.reply_serial),
        (0, Some(code.as_str()), 0)
    );
}

#[test]
fn registration_of_a_registered_terminal_is_answered_result_3_without_a_code() {
    let mut c = channel();
    c.handle_frame(packet(REGISTER_2013), t0());
    let r = register_response(&registered(
        &mut c,
        RegistrationVerdict::AlreadyRegistered,
        t0(),
    ));
    assert_eq!((r.result, r.auth_code), (3, None));
}

#[test]
fn rate_limited_registration_closes_the_connection() {
    let mut c = channel();
    c.handle_frame(packet(REGISTER_2013), t0());
    assert_eq!(
        registered(&mut c, RegistrationVerdict::RateLimited, t0()),
        vec![Action::Close(CloseReason::TooManyRegistrations)]
    );
}

#[test]
fn registration_the_store_could_not_keep_closes_the_connection() {
    let mut c = channel();
    c.handle_frame(packet(REGISTER_2013), t0());
    assert_eq!(
        registered(&mut c, RegistrationVerdict::Unavailable, t0()),
        vec![Action::Close(CloseReason::StoreFailed)]
    );
}

#[test]
fn a_connection_registers_at_most_the_configured_number_of_times() {
    let mut c = channel();
    for n in 0..3 {
        c.handle_frame(packet(REGISTER_2013), secs(n));
        registered(&mut c, RegistrationVerdict::Registered, secs(n));
    }
    assert_eq!(
        c.handle_frame(packet(REGISTER_2013), secs(3)),
        vec![Action::Close(CloseReason::TooManyRegistrations)]
    );
}

#[test]
fn a_connection_that_only_registers_closes_after_the_grace_period() {
    let mut c = channel();
    c.handle_frame(packet(REGISTER_2013), t0());
    registered(&mut c, RegistrationVerdict::Registered, t0());
    assert_eq!(
        c.handle_tick(secs(10)),
        vec![Action::Close(CloseReason::NotAuthenticated)]
    );
}

#[test]
fn issued_codes_are_sixteen_hex_digits() {
    let mut c = channel();
    let code = code_to_register(&c.handle_frame(packet(REGISTER_2013), t0()));
    assert!(code.len() == 16 && code.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn registration_does_not_authenticate() {
    let mut c = channel();
    c.handle_frame(packet(REGISTER_2013), t0());
    assert_eq!(c.imei(), None);
}

#[test]
fn authentication_asks_the_store() {
    let mut c = channel();
    let actions = c.handle_frame(packet(AUTH_2013), t0());
    assert_eq!(
        actions,
        vec![Action::VerifyAuthCode {
            check: CheckId(0),
            imei: imei(),
            code: "17299841738".into()
        }]
    );
}

#[test]
fn matching_code_publishes_login_registers_then_acks() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = verdict(&mut c, AuthVerdict::Match, t0());
    assert!(matches!(actions[0], Action::Publish(_)));
    assert_eq!(actions[1], Action::LoggedIn { imei: imei() });
    assert_eq!(sent(&actions), ["7e80010005012345678901000000000102000f7e"]);
}

#[test]
fn login_record_says_gmt_plus_eight() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = verdict(&mut c, AuthVerdict::Match, t0());
    assert_eq!(
        published(&actions),
        [(
            Topic::Event,
            r#"{"deviceImei":"12345678901","type":"LOGIN","gateTime":"2024-03-01 12:00:00","timezone":"GMT+08:00"}"#.to_string()
        )]
    );
}

#[test]
fn authentication_2019_reply_uses_the_2019_header() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2019), t0());
    let actions = verdict(&mut c, AuthVerdict::Match, t0());
    assert_eq!(
        sent(&actions),
        ["7e80014005010000000001729984173800000000010200877e"]
    );
}

#[test]
fn mismatching_code_is_refused_with_result_1() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = verdict(&mut c, AuthVerdict::Mismatch, t0());
    assert_eq!(sent(&actions), ["7e80010005012345678901000000000102010e7e"]);
    assert_eq!(c.imei(), None);
}

#[test]
fn unknown_code_is_accepted_and_kept_when_configured() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = verdict(&mut c, AuthVerdict::Unknown, t0());
    assert_eq!(
        actions[0],
        Action::StoreAuthCode {
            imei: imei(),
            code: "17299841738".into()
        }
    );
    assert_eq!(c.imei(), Some(imei()));
}

#[test]
fn unknown_code_is_refused_when_not_configured() {
    let mut c = Jt808Channel::new(
        Jt808ChannelConfig {
            accept_unknown_auth_codes: false,
            ..config(false)
        },
        t0(),
    );
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = verdict(&mut c, AuthVerdict::Unknown, t0());
    assert_eq!(sent(&actions), ["7e80010005012345678901000000000102010e7e"]);
}

#[test]
fn store_unavailable_refuses() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    verdict(&mut c, AuthVerdict::Unavailable, t0());
    assert_eq!(c.imei(), None);
}

#[test]
fn authenticating_again_is_acked_without_a_second_login() {
    let mut c = authenticated();
    c.handle_frame(packet(AUTH_2013), secs(5));
    let actions = verdict(&mut c, AuthVerdict::Match, secs(5));
    assert!(published(&actions).is_empty());
    assert_eq!(sent(&actions).len(), 1);
}

#[test]
fn new_imei_rule_reads_the_phone_as_hex() {
    let mut c = Jt808Channel::new(config(true), t0());
    let actions = c.handle_frame(packet(AUTH_2013), t0());
    // 0x012345678901 = 1250999896321 -> "01250999896321" + Luhn digit 5.
    assert_eq!(
        actions,
        vec![Action::VerifyAuthCode {
            check: CheckId(0),
            imei: Imei::parse("012509998963215").unwrap(),
            code: "17299841738".into()
        }]
    );
}

/// 0x0102 of the terminal with `phone` (2013 layout) presenting `code`.
fn auth_of(phone: &str, code: &str, serial: u16) -> Packet {
    let header = Header {
        msg_id: 0x0102,
        version: None,
        phone: Phone::from_digits(phone, false).unwrap(),
        serial,
        package: None,
        version_flag_mismatch: false,
    };
    let auth = Message::Auth(crate::codec::jt808::Auth {
        auth_code: code.into(),
        imei: None,
        software_version: None,
    });
    decode(&encode(&header, &auth).unwrap(), CrcPolicy::Reject)
        .unwrap()
        .unwrap()
        .packet
}

/// The attack of one write carrying an authentication for a phone the hub never saw, then
/// one for a registered terminal: both frames run before either check is answered.
fn two_authentications_in_one_read(c: &mut Jt808Channel) -> (Vec<Action>, Vec<Action>) {
    let first = c.handle_frame(auth_of("013800000001", "x", 0), t0());
    let second = c.handle_frame(packet(AUTH_2013), t0());
    (first, second)
}

#[test]
fn an_authentication_while_a_check_is_outstanding_asks_nothing() {
    let mut c = channel();
    let (_, second) = two_authentications_in_one_read(&mut c);
    assert!(
        !second.iter().any(|a| matches!(
            a,
            Action::VerifyAuthCode { .. } | Action::StoreAuthCode { .. }
        )),
        "{second:?}"
    );
}

#[test]
fn an_authentication_while_a_check_is_outstanding_is_refused_with_result_1() {
    let mut c = channel();
    let (_, second) = two_authentications_in_one_read(&mut c);
    assert_eq!(sent(&second), ["7e80010005012345678901000000000102010e7e"]);
}

#[test]
fn a_verdict_for_the_first_authentication_never_logs_in_the_second_terminal() {
    let mut c = channel();
    let (first, _) = two_authentications_in_one_read(&mut c);
    let [Action::VerifyAuthCode { check, .. }] = first[..] else {
        panic!("{first:?}");
    };
    let actions = c.handle_auth_verdict(check, AuthVerdict::Unknown, t0());
    let victim = imei();
    assert!(
        !actions.iter().any(|a| match a {
            Action::LoggedIn { imei } | Action::StoreAuthCode { imei, .. } => *imei == victim,
            _ => false,
        }),
        "{actions:?}"
    );
}

#[test]
fn a_verdict_for_the_first_authentication_logs_in_its_own_terminal() {
    let mut c = channel();
    let (first, _) = two_authentications_in_one_read(&mut c);
    let [Action::VerifyAuthCode { check, .. }] = first[..] else {
        panic!("{first:?}");
    };
    c.handle_auth_verdict(check, AuthVerdict::Unknown, t0());
    assert_eq!(c.imei(), Some(Imei::parse("13800000001").unwrap()));
}

#[test]
fn a_verdict_for_a_check_no_one_waits_for_changes_nothing() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = c.handle_auth_verdict(CheckId(7), AuthVerdict::Match, t0());
    assert_eq!((actions, c.imei()), (vec![], None));
}

#[test]
fn the_check_still_waits_after_a_verdict_for_another() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    c.handle_auth_verdict(CheckId(7), AuthVerdict::Match, t0());
    verdict(&mut c, AuthVerdict::Match, t0());
    assert_eq!(c.imei(), Some(imei()));
}

#[test]
fn a_registration_verdict_does_not_answer_an_authentication() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let check = pending_check(&c);
    let actions = c.handle_registration_verdict(check, RegistrationVerdict::Registered, t0());
    assert_eq!((actions, c.imei()), (vec![], None));
}

#[test]
fn a_registration_while_an_authentication_is_checked_is_refused() {
    let mut c = channel();
    c.handle_frame(packet(AUTH_2013), t0());
    let actions = c.handle_frame(packet(REGISTER_2013), t0());
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::RegisterTerminal { .. })),
        "{actions:?}"
    );
}

#[test]
fn an_authenticated_connection_presenting_another_terminal_closes() {
    let mut c = authenticated();
    assert_eq!(
        c.handle_frame(auth_of("013800000001", "x", 1), secs(1)),
        vec![Action::Close(CloseReason::IdentityChanged)]
    );
}

#[test]
fn a_subpackage_before_authentication_is_refused_and_not_buffered() {
    let mut c = channel();
    let header = Header {
        msg_id: 0x0200,
        version: None,
        phone: Phone::from_digits("012345678901", false).unwrap(),
        serial: 1,
        package: None,
        version_flag_mismatch: false,
    };
    let location = packet(LOCATION).message;
    let parts = encode_split(&header, &location, 40).unwrap();
    let first = decode(&parts[0], CrcPolicy::Reject)
        .unwrap()
        .unwrap()
        .packet;
    let actions = c.handle_frame(first, t0());
    assert_eq!((sent(&actions).len(), c.reassembler.in_progress()), (1, 0));
}

// --- before authentication ---

#[test]
fn message_before_auth_gets_result_1() {
    let mut c = channel();
    let actions = c.handle_frame(packet(HEARTBEAT), t0());
    assert_eq!(sent(&actions), ["7e8001000501234567890100007fff0002018f7e"]);
}

#[test]
fn message_before_auth_publishes_nothing() {
    let mut c = channel();
    let actions = c.handle_frame(packet(LOCATION), t0());
    assert!(published(&actions).is_empty());
}

#[test]
fn refused_connection_closes_after_the_grace_period() {
    let mut c = channel();
    c.handle_frame(packet(HEARTBEAT), t0());
    assert!(c.handle_tick(secs(9)).is_empty());
    assert_eq!(
        c.handle_tick(secs(10)),
        vec![Action::Close(CloseReason::NotAuthenticated)]
    );
}

#[test]
fn authenticating_within_the_grace_period_keeps_the_connection() {
    let mut c = channel();
    c.handle_frame(packet(HEARTBEAT), t0());
    c.handle_frame(packet(AUTH_2013), secs(2));
    verdict(&mut c, AuthVerdict::Match, secs(2));
    assert!(c.handle_tick(secs(20)).is_empty());
}

#[test]
fn silent_connection_closes_at_the_login_timeout() {
    let mut c = channel();
    assert_eq!(
        c.handle_tick(secs(60)),
        vec![Action::Close(CloseReason::LoginTimeout)]
    );
}

// --- after authentication ---

#[test]
fn heartbeat_publishes_then_acks() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(HEARTBEAT), secs(1));
    assert!(matches!(&actions[0], Action::Publish(e) if e.topic == Topic::Heartbeat));
    assert_eq!(sent(&actions), ["7e8001000501234567890100017fff0002008f7e"]);
}

#[test]
fn heartbeat_reports_the_last_location_state() {
    let mut c = authenticated();
    c.handle_frame(packet(LOCATION), secs(1));
    let actions = c.handle_frame(packet(HEARTBEAT), secs(2));
    let hb = json(&published(&actions)[0].1);
    // go-reply-03: signal 0x1e (CSQ 30) -> 4 bars; status 0x800 (bit 11 circuit cut).
    assert_eq!(hb["gsmSign"], 4);
    assert_eq!(hb["remoteLock"], 1);
    assert_eq!(hb["acc"], 0);
}

#[test]
fn location_publishes_gps_then_alarm_then_acks() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(LOCATION), secs(1));
    let topics: Vec<Topic> = published(&actions).iter().map(|p| p.0).collect();
    assert_eq!(topics, [Topic::Gps, Topic::Alarm]);
    assert_eq!(sent(&actions), ["7e8001000501234567890100017fff0200008f7e"]);
    assert!(matches!(actions.last(), Some(Action::Send(_))));
}

#[test]
fn location_gps_record_maps_the_basic_block() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(LOCATION), secs(1));
    let gps = json(&published(&actions)[0].1);
    assert_eq!(gps["deviceImei"], "12345678901");
    // 2020-07-07 19:23:59 GMT+8.
    assert_eq!(gps["gpsTime"], "2020-07-07 11:23:59");
    assert_eq!(gps["lat"], 116.307629);
    assert_eq!(gps["lng"], 40.058359);
    assert_eq!(gps["altitude"], 312.0);
    assert_eq!(gps["gpsSpeed"], 0.3);
    assert_eq!(gps["direction"], 99);
    assert_eq!(gps["status"], 2048);
}

#[test]
fn location_gps_record_maps_the_items() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(LOCATION), secs(1));
    let gps = json(&published(&actions)[0].1);
    assert_eq!(gps["distance"], 1100); // 0x01: 11 x 0.1 km
    assert_eq!(gps["fuel"], 2.2); // 0x02: 22 x 0.1 L
    assert_eq!(gps["recorderSpeed"], 3.3); // 0x03
    assert_eq!(gps["alarmEventId"], 44); // 0x04
    assert_eq!(gps["extendedSignals"], 99); // 0x25
    assert_eq!(gps["ioStatus"], 10); // 0x2a
    assert_eq!(gps["analog"], 20); // 0x2b
    assert_eq!(gps["gsmSign"], 30); // 0x30
    assert_eq!(gps["satelliteNum"], 40); // 0x31
    assert_eq!(gps["alarmFlag"], 1024);
}

#[test]
fn location_items_without_a_field_are_kept_as_hex() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(LOCATION), secs(1));
    let gps = json(&published(&actions)[0].1);
    let undecoded = gps["undecodedGpsAddInfo"].as_str().unwrap();
    // Tyre pressure (0x05), overspeed (0x11), area (0x12), section time (0x13), in order.
    assert!(undecoded.starts_with("051E373737"), "{undecoded}");
    assert!(undecoded.contains("11054200000042"), "{undecoded}");
    assert!(undecoded.contains("12064D0000004D4D"), "{undecoded}");
    assert!(undecoded.ends_with("130700000058005858"), "{undecoded}");
}

#[test]
fn alarm_word_becomes_alert_type_256_as_text() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(LOCATION), secs(1));
    let alarm = json(&published(&actions)[1].1);
    assert_eq!(alarm["msgClass"], 1);
    assert_eq!(alarm["msg"]["alertType"], "256");
    assert_eq!(alarm["msg"]["standardAlarmValue"], 1024);
    assert_eq!(alarm["msg"]["alarmSerialNo"], 0x7fff);
}

#[test]
fn location_without_alarm_publishes_only_gps() {
    let mut c = authenticated();
    let location = Location {
        basic: BasicLocation {
            status: StatusFlags(StatusFlags::ACC | StatusFlags::POSITIONED),
            latitude_e6: 22_576_539,
            longitude_e6: 113_942_885,
            time: BcdTime::from_utc(t0()).unwrap(),
            ..BasicLocation::default()
        },
        items: vec![],
        trailing: vec![],
    };
    let actions = c.handle_frame(uplink(0x0200, 5, &Message::Location(location)), secs(1));
    let p = published(&actions);
    assert_eq!(p.len(), 1);
    assert_eq!(json(&p[0].1)["acc"], 1);
}

#[test]
fn adas_item_becomes_alert_type_264_with_its_label() {
    let mut c = authenticated();
    let label = AlarmLabel {
        terminal_id: *b"0001762",
        time: BcdTime([0x24, 0x02, 0x03, 0x14, 0x34, 0x38]),
        seq: 0,
        attachments: 1,
        reserved: 0,
    };
    let location = Location {
        basic: BasicLocation {
            status: StatusFlags(StatusFlags::POSITIONED),
            latitude_e6: 22_576_539,
            longitude_e6: 113_942_885,
            time: BcdTime([0x24, 0x02, 0x03, 0x14, 0x34, 0x38]),
            ..BasicLocation::default()
        },
        items: vec![LocationItem::Adas(AdasAlarm {
            alarm_id: 7,
            flag: 1,
            kind: 2,
            level: 1,
            common: SafetyCommon {
                speed_kmh: 50,
                latitude_e6: 22_576_539,
                longitude_e6: 113_942_885,
                time: BcdTime([0x24, 0x02, 0x03, 0x14, 0x34, 0x38]),
                label,
                ..SafetyCommon::default()
            },
            ..AdasAlarm::default()
        })],
        trailing: vec![],
    };
    let actions = c.handle_frame(uplink(0x0200, 9, &Message::Location(location)), secs(1));
    let p = published(&actions);
    assert_eq!(p.len(), 2);
    let alarm = json(&p[1].1);
    assert_eq!(alarm["msg"]["alertType"], "264");
    assert_eq!(alarm["msg"]["alarmType"], 2);
    assert_eq!(alarm["msg"]["alarmLevel"], 1);
    assert_eq!(alarm["msg"]["alarmStatus"], 1);
    assert_eq!(alarm["msg"]["alarmId"], 7);
    assert_eq!(alarm["msg"]["gpsSpeed"], 50.0);
    assert_eq!(alarm["msg"]["alarmTime"], "2024-02-03 06:34:38");
    assert_eq!(
        alarm["msg"]["alarmLabel"],
        "30,30,30,31,37,36,32,24,02,03,14,34,38,00,01,00"
    );
}

#[test]
fn batch_publishes_each_item_and_acks_once() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(BATCH), secs(1));
    let gps: Vec<_> = published(&actions)
        .into_iter()
        .filter(|p| p.0 == Topic::Gps)
        .collect();
    assert_eq!(gps.len(), 2);
    assert_eq!(json(&gps[0].1)["gpsMode"], 0);
    assert_eq!(sent(&actions).len(), 1);
}

#[test]
fn blind_area_batch_is_a_reupload() {
    let mut c = authenticated();
    let Message::BatchLocation(mut batch) = packet(BATCH).message else {
        panic!("batch expected");
    };
    batch.kind = 1;
    let actions = c.handle_frame(uplink(0x0704, 3, &Message::BatchLocation(batch)), secs(1));
    assert_eq!(json(&published(&actions)[0].1)["gpsMode"], 1);
}

#[test]
fn logout_publishes_once() {
    let mut c = authenticated();
    let actions = c.handle_frame(uplink(0x0003, 4, &Message::Logout), secs(1));
    assert!(published(&actions)[0].1.contains(r#""type":"LOGOUT""#));
    assert!(c.handle_close(secs(2)).is_empty());
}

#[test]
fn closing_an_authenticated_connection_publishes_logout() {
    let mut c = authenticated();
    let actions = c.handle_close(secs(1));
    assert!(published(&actions)[0].1.contains(r#""type":"LOGOUT""#));
}

#[test]
fn closing_an_unauthenticated_connection_publishes_nothing() {
    let mut c = channel();
    assert!(c.handle_close(secs(1)).is_empty());
}

#[test]
fn idle_connection_closes() {
    let mut c = authenticated();
    assert_eq!(
        c.handle_tick(secs(300)),
        vec![Action::Close(CloseReason::IdleTimeout)]
    );
}

#[test]
fn another_phone_on_the_connection_closes_it() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet("7e000240000100000000017299841738ffff027e"), secs(1));
    assert_eq!(actions, vec![Action::Close(CloseReason::IdentityChanged)]);
}

#[test]
fn transparent_data_is_pushed_as_hex() {
    let mut c = authenticated();
    let m = Message::Transparent {
        kind: 0x41,
        data: b"AT+OK".to_vec(),
    };
    let actions = c.handle_frame(uplink(0x0900, 6, &m), secs(1));
    let p = published(&actions);
    assert_eq!(p[0].0, Topic::PassThrough);
    assert_eq!(json(&p[0].1)["data"], "41542B4F4B");
    assert_eq!(json(&p[0].1)["passThroughType"], 0x41);
}

#[test]
fn multimedia_event_is_acked() {
    let mut c = authenticated();
    let actions = c.handle_frame(packet(MEDIA_EVENT), secs(1));
    assert_eq!(sent(&actions).len(), 1);
    assert!(published(&actions).is_empty());
}

#[test]
fn unknown_message_is_counted_and_answered_not_supported() {
    let mut c = authenticated();
    let actions = c.handle_frame(uplink(0x0F01, 2, &Message::Unknown(vec![1, 2])), secs(1));
    assert_eq!(actions[0], Action::Unrecognised { protocol: 0x0F01 });
    let reply = hex::decode(&sent(&actions)[0]).unwrap();
    let d = decode(&reply, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(
        d.packet.message,
        Message::PlatformResponse(crate::codec::jt808::GeneralResponse {
            reply_serial: 2,
            reply_id: 0x0F01,
            result: 3
        })
    );
}

// --- subpackages ---

fn split_transparent(serial: u16) -> Vec<Packet> {
    let header = Header {
        msg_id: 0x0900,
        version: None,
        phone: Phone::from_digits("012345678901", false).unwrap(),
        serial,
        package: None,
        version_flag_mismatch: false,
    };
    let m = Message::Transparent {
        kind: 0xF0,
        data: vec![0xAB; 30],
    };
    encode_split(&header, &m, 16)
        .unwrap()
        .iter()
        .map(|raw| decode(raw, CrcPolicy::Reject).unwrap().unwrap().packet)
        .collect()
}

#[test]
fn subpackaged_message_is_published_when_complete() {
    let mut c = authenticated();
    let parts = split_transparent(20);
    assert_eq!(parts.len(), 2);
    let mut parts = parts.into_iter();
    assert!(c.handle_frame(parts.next().unwrap(), secs(1)).is_empty());
    let actions = c.handle_frame(parts.next().unwrap(), secs(2));
    assert_eq!(published(&actions)[0].0, Topic::PassThrough);
}

#[test]
fn missing_subpackage_is_requested_with_0x8003() {
    let mut c = authenticated();
    let first = split_transparent(20).remove(0);
    c.handle_frame(first, secs(1));
    let actions = c.handle_tick(secs(11));
    let raw = hex::decode(&sent(&actions)[0]).unwrap();
    let d = decode(&raw, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(
        d.packet.message,
        Message::ResendRequest(ResendRequest {
            original_serial: 20,
            indexes: vec![2]
        })
    );
}

// --- instructions ---

fn instruction(pro_no: u32, content: &str, flag: u32) -> Instruction {
    Instruction {
        pro_no,
        content: content.into(),
        server_flag_id: flag,
    }
}

#[test]
fn instruction_before_auth_is_refused_as_offline() {
    let mut c = channel();
    assert_eq!(
        c.handle_instruction(&instruction(33028, "", 1), t0()),
        Err(InstructionRefusal::NotLoggedIn)
    );
}

#[test]
fn query_params_goes_out_with_the_next_serial() {
    let mut c = authenticated();
    let actions = c
        .handle_instruction(&instruction(33028, "", 1), secs(1))
        .unwrap();
    // 0x8104, empty body, phone 012345678901, platform serial 1.
    assert_eq!(
        sent(&actions),
        ["7e8104000001234567890100010c7e".to_string()]
    );
}

#[test]
fn second_instruction_is_busy() {
    let mut c = authenticated();
    c.handle_instruction(&instruction(33028, "", 1), secs(1))
        .unwrap();
    assert_eq!(
        c.handle_instruction(&instruction(33028, "", 2), secs(1)),
        Err(InstructionRefusal::Busy)
    );
}

#[test]
fn expired_instruction_frees_the_slot() {
    let mut c = authenticated();
    c.handle_instruction(&instruction(33028, "", 1), secs(1))
        .unwrap();
    c.instruction_expired(1);
    assert!(c
        .handle_instruction(&instruction(33028, "", 2), secs(2))
        .is_ok());
}

#[test]
fn params_reply_answers_the_query_with_pro_no_260() {
    let mut c = authenticated();
    c.handle_instruction(&instruction(33028, "", 77), secs(1))
        .unwrap();
    let reply = Message::ParamsReply(crate::codec::jt808::ParamsReply {
        reply_serial: 1,
        params: vec![crate::codec::jt808::Param {
            id: 1,
            value: crate::codec::jt808::ParamValue::Dword(180),
        }],
    });
    let actions = c.handle_frame(uplink(0x0104, 8, &reply), secs(2));
    let Some(Action::InstructionReply(r)) = actions.first() else {
        panic!("{actions:?}");
    };
    assert_eq!(r.server_flag_id, 77);
    assert_eq!(r.pro_no, 260);
    assert_eq!(json(&r.content)["1"], "180");
}

#[test]
fn reply_to_another_serial_is_not_an_answer() {
    let mut c = authenticated();
    c.handle_instruction(&instruction(33028, "", 77), secs(1))
        .unwrap();
    let reply = Message::ParamsReply(crate::codec::jt808::ParamsReply {
        reply_serial: 9,
        params: vec![],
    });
    let actions = c.handle_frame(uplink(0x0104, 8, &reply), secs(2));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::InstructionReply(_))));
}

#[test]
fn text_instruction_goes_out_as_0x8300() {
    let mut c = authenticated();
    let actions = c
        .handle_instruction(&instruction(128, "STATUS#", 3), secs(1))
        .unwrap();
    let raw = hex::decode(&sent(&actions)[0]).unwrap();
    let d = decode(&raw, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(d.packet.header.msg_id, 0x8300);
    let Message::Text(text) = d.packet.message else {
        panic!("text expected");
    };
    assert_eq!(text.text, "STATUS#");
}

#[test]
fn general_response_answers_the_text() {
    let mut c = authenticated();
    c.handle_instruction(&instruction(128, "STATUS#", 3), secs(1))
        .unwrap();
    let ack = Message::TerminalResponse(crate::codec::jt808::GeneralResponse {
        reply_serial: 1,
        reply_id: 0x8300,
        result: 0,
    });
    let actions = c.handle_frame(uplink(0x0001, 9, &ack), secs(2));
    assert!(matches!(
        actions.first(),
        Some(Action::InstructionReply(r)) if r.server_flag_id == 3
    ));
}

#[test]
fn bad_cmd_content_is_refused_before_anything_is_sent() {
    let mut c = authenticated();
    let refusal = c
        .handle_instruction(&instruction(37121, "{not json", 1), secs(1))
        .unwrap_err();
    assert!(matches!(refusal, InstructionRefusal::BadParameter { .. }));
}

#[test]
fn resource_list_is_pushed_with_the_instruction_id() {
    let mut c = authenticated();
    let query = r#"{"channel":"1","beginTime":"000000000000","endTime":"000000000000","alarmFlag":"0","resourceType":"0","codeType":"0","storageType":"0","instructionID":"q-42"}"#;
    c.handle_instruction(&instruction(37381, query, 5), secs(1))
        .unwrap();
    let list = Message::ResourceList(crate::codec::jt808::ResourceList {
        reply_serial: 1,
        items: vec![crate::codec::jt808::AvResource {
            channel: 1,
            start: BcdTime([0x24, 0x11, 0x02, 0x08, 0x00, 0x00]),
            end: BcdTime([0x24, 0x11, 0x02, 0x08, 0x01, 0x00]),
            alarm: 0,
            av_type: 0,
            stream: 1,
            storage: 1,
            size: 1024,
        }],
    });
    let actions = c.handle_frame(uplink(0x1205, 10, &list), secs(2));
    let p = published(&actions);
    assert_eq!(p[0].0, Topic::ResourceList);
    let r = json(&p[0].1);
    assert_eq!(r["instructionID"], "q-42");
    assert_eq!(r["totalNum"], 1);
    assert_eq!(r["resourceList"][0]["beginTime"], "2024-11-02 00:00:00");
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::InstructionReply(r) if r.server_flag_id == 5)));
}

// --- adversarial orderings of frames and store answers ---

mod adversarial_orderings {
    //! A hostile terminal interleaves registrations and authentications for several phones
    //! with the store's answers arriving late (after later frames of the same read) or naming
    //! checks no one asked for. Whatever the order, a connection takes one identity at most,
    //! and every verdict acts on the request it answers.

    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    const PHONES: [&str; 3] = ["012345678901", "013800000001", "013800000002"];

    #[derive(Debug, Clone)]
    enum Step {
        Authenticate {
            phone: usize,
            code: u8,
        },
        Register,
        Heartbeat,
        /// The driver answers the oldest check it was asked, with this verdict.
        Answer(u8),
        /// An answer naming a check the channel may not be waiting for.
        StrayAnswer(u32, u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..PHONES.len(), 0u8..3).prop_map(|(phone, code)| Step::Authenticate { phone, code }),
            Just(Step::Register),
            Just(Step::Heartbeat),
            (0u8..4).prop_map(Step::Answer),
            (0u32..6, 0u8..4).prop_map(|(check, v)| Step::StrayAnswer(check, v)),
        ]
    }

    /// What the channel asked of the store, as the driver keeps it.
    #[derive(Debug, Clone)]
    enum Asked {
        Auth { imei: Imei, code: String },
        Registration { code: String },
    }

    fn auth_verdict(kind: u8) -> AuthVerdict {
        [
            AuthVerdict::Match,
            AuthVerdict::Mismatch,
            AuthVerdict::Unknown,
            AuthVerdict::Unavailable,
        ][usize::from(kind) % 4]
    }

    fn registration_verdict(kind: u8) -> RegistrationVerdict {
        [
            RegistrationVerdict::Registered,
            RegistrationVerdict::AlreadyRegistered,
            RegistrationVerdict::RateLimited,
            RegistrationVerdict::Unavailable,
        ][usize::from(kind) % 4]
    }

    /// Records the checks the actions ask for.
    fn remember(actions: &[Action], asked: &mut VecDeque<(CheckId, Asked)>) {
        for a in actions {
            match a {
                Action::VerifyAuthCode { check, imei, code } => asked.push_back((
                    *check,
                    Asked::Auth {
                        imei: *imei,
                        code: code.clone(),
                    },
                )),
                Action::RegisterTerminal { check, code, .. } => {
                    asked.push_back((*check, Asked::Registration { code: code.clone() }))
                }
                _ => {}
            }
        }
    }

    /// The actions of an answer act only on the request it answers (`None`: a stray answer,
    /// which must do nothing at all).
    fn assert_answer_acts_on(
        actions: &[Action],
        answered: Option<&Asked>,
    ) -> Result<(), TestCaseError> {
        for a in actions {
            match (a, answered) {
                (Action::LoggedIn { imei }, Some(Asked::Auth { imei: asked, .. })) => {
                    prop_assert_eq!(imei, asked)
                }
                (
                    Action::StoreAuthCode { imei, code },
                    Some(Asked::Auth {
                        imei: asked,
                        code: presented,
                    }),
                ) => {
                    prop_assert_eq!((imei, code), (asked, presented))
                }
                (Action::Send(bytes), Some(Asked::Registration { code, .. })) => {
                    let message = decode(bytes, CrcPolicy::Reject)
                        .ok()
                        .flatten()
                        .map(|d| d.packet.message);
                    if let Some(Message::RegisterResponse(r)) = message {
                        if let Some(handed_out) = r.auth_code {
                            prop_assert_eq!(&handed_out, code);
                        }
                    }
                }
                (Action::LoggedIn { .. } | Action::StoreAuthCode { .. }, _) => {
                    prop_assert!(false, "{:?} answers no authentication", a)
                }
                (_, None) => prop_assert!(false, "a stray answer acted: {:?}", a),
                _ => {}
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn a_connection_takes_one_identity_and_verdicts_act_on_their_own_request(
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let mut c = channel();
            let mut asked: VecDeque<(CheckId, Asked)> = VecDeque::new();
            let mut identity: Option<Imei> = None;
            for (n, step) in steps.into_iter().enumerate() {
                let now = secs(i64::try_from(n).unwrap());
                let serial = u16::try_from(n).unwrap();
                match step {
                    Step::Authenticate { phone, code } => {
                        let code = format!("code-{code}");
                        let actions = c.handle_frame(auth_of(PHONES[phone], &code, serial), now);
                        remember(&actions, &mut asked);
                    }
                    Step::Register => {
                        let actions = c.handle_frame(packet(REGISTER_2013), now);
                        remember(&actions, &mut asked);
                    }
                    Step::Heartbeat => {
                        c.handle_frame(packet(HEARTBEAT), now);
                    }
                    Step::Answer(kind) => {
                        let Some((check, request)) = asked.pop_front() else {
                            continue;
                        };
                        let actions = match request {
                            Asked::Auth { .. } => c.handle_auth_verdict(check, auth_verdict(kind), now),
                            Asked::Registration { .. } => {
                                c.handle_registration_verdict(check, registration_verdict(kind), now)
                            }
                        };
                        assert_answer_acts_on(&actions, Some(&request))?;
                    }
                    Step::StrayAnswer(check, kind) => {
                        if asked.iter().any(|(asked, _)| asked.0 == check) {
                            continue;
                        }
                        let mut actions = c.handle_auth_verdict(CheckId(check), auth_verdict(kind), now);
                        actions.extend(c.handle_registration_verdict(
                            CheckId(check),
                            registration_verdict(kind),
                            now,
                        ));
                        assert_answer_acts_on(&actions, None)?;
                    }
                }
                prop_assert!(asked.len() <= 1, "more than one check outstanding: {:?}", asked);
                match (identity, c.imei()) {
                    (Some(before), now) => prop_assert_eq!(now, Some(before), "identity changed"),
                    (None, now) => identity = now,
                }
            }
        }
    }
}
