//! Drives the JT/T 808 channel with whatever the decoder makes of arbitrary bytes,
//! interleaved with store verdicts, ticks, instructions and expiries chosen by the input.
//! The store's answers arrive as a hostile connection makes them arrive: the input decides
//! after each frame whether the oldest outstanding check is answered now or only after later
//! frames (several frames of one read run before any of their checks is answered), and may
//! send answers naming checks no one asked for.
//! Any panic is a finding, and so is a broken channel invariant:
//! - nothing is published before authentication, and `LoggedIn` only follows a verdict;
//! - a verdict acts only on the request it answers: its `LoggedIn` and `StoreAuthCode` name
//!   the terminal and code of that authentication, a stray answer does nothing, and a
//!   connection that took an identity never takes another;
//! - within one answer, every `Publish` comes before every `Send` (an acknowledgement never
//!   overtakes the event it acknowledges), a `StoreAuthCode` comes before any `Send`, and a
//!   0x8100 carrying a code is only sent in answer to the registration verdict that stored it;
//! - an authenticated channel names its IMEI.
#![no_main]

use std::time::Duration;

use std::collections::VecDeque;

use chrono::{TimeZone, Utc};
use iothub::channel::jt808::{Jt808Channel, Jt808ChannelConfig};
use iothub::channel::{Action, AuthVerdict, Channel, CheckId, RegistrationVerdict};
use iothub::codec::jt808::{self, Limits};
use iothub::codec::CrcPolicy;
use iothub::command::Instruction;
use iothub::imei::Imei;
use libfuzzer_sys::fuzz_target;

/// 0x0102 authentication of terminal 012345678901 with code "17299841738".
const AUTH: [u8; 26] = [
    0x7e, 0x01, 0x02, 0x00, 0x0b, 0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x00, 0x00, 0x31, 0x37, 0x32,
    0x39, 0x39, 0x38, 0x34, 0x31, 0x37, 0x33, 0x38, 0xb5, 0x7e,
];

/// Proves the ordering invariants of one answer. `authenticated` is the state before it.
fn check(actions: &[Action], authenticated: bool, from_verdict: bool) {
    let mut seen_send = false;
    let mut logged_in = authenticated;
    for a in actions {
        match a {
            Action::LoggedIn { .. } => {
                assert!(from_verdict, "LoggedIn without a verdict of the store");
                logged_in = true;
            }
            Action::Publish(_) => {
                // The LOGIN event is published just before LoggedIn.
                let login_follows = actions.iter().any(|b| matches!(b, Action::LoggedIn { .. }));
                assert!(
                    logged_in || login_follows,
                    "published before authentication"
                );
                assert!(!seen_send, "an acknowledgement overtook its event");
            }
            Action::StoreAuthCode { .. } => {
                assert!(!seen_send, "an auth code was sent before it was stored");
            }
            Action::Send(bytes) => {
                seen_send = true;
                let message = jt808::decode(bytes, CrcPolicy::Reject)
                    .ok()
                    .flatten()
                    .map(|d| d.packet.message);
                if let Some(jt808::Message::RegisterResponse(r)) = message {
                    assert!(
                        r.auth_code.is_none() || from_verdict,
                        "a code was handed out before the store kept it"
                    );
                }
            }
            _ => {}
        }
    }
}

/// A check the channel asked for, as the driver keeps it until it answers.
enum Asked {
    Auth { imei: Imei, code: String },
    Registration,
}

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
            Action::RegisterTerminal { check, .. } => {
                asked.push_back((*check, Asked::Registration))
            }
            _ => {}
        }
    }
    assert!(asked.len() <= 1, "more than one store check outstanding");
}

/// The answer's actions name only the request it answers (`None`: a stray answer).
fn check_answer(actions: &[Action], answered: Option<&Asked>) {
    for a in actions {
        match (a, answered) {
            (Action::LoggedIn { imei }, Some(Asked::Auth { imei: asked, .. })) => {
                assert_eq!(imei, asked, "a verdict logged in another terminal")
            }
            (Action::StoreAuthCode { imei, code }, Some(Asked::Auth { imei: i, code: c })) => {
                assert_eq!((imei, code), (i, c), "a verdict stored another request's code")
            }
            (Action::LoggedIn { .. } | Action::StoreAuthCode { .. }, _) => {
                panic!("{a:?} answers no authentication")
            }
            (_, None) => panic!("a stray answer acted: {a:?}"),
            _ => {}
        }
    }
}

/// Answers the oldest outstanding check with the verdict `selector` picks.
fn answer(
    channel: &mut Jt808Channel,
    asked: &mut VecDeque<(CheckId, Asked)>,
    selector: u8,
    now: chrono::DateTime<Utc>,
) {
    let Some((id, request)) = asked.pop_front() else {
        return;
    };
    let before = channel.imei().is_some();
    let actions = match request {
        Asked::Auth { .. } => {
            let verdict = match selector % 4 {
                0 => AuthVerdict::Match,
                1 => AuthVerdict::Mismatch,
                2 => AuthVerdict::Unknown,
                _ => AuthVerdict::Unavailable,
            };
            channel.handle_auth_verdict(id, verdict, now)
        }
        Asked::Registration => {
            let verdict = match selector % 4 {
                0 => RegistrationVerdict::Registered,
                1 => RegistrationVerdict::AlreadyRegistered,
                2 => RegistrationVerdict::RateLimited,
                _ => RegistrationVerdict::Unavailable,
            };
            channel.handle_registration_verdict(id, verdict, now)
        }
    };
    check(&actions, before, true);
    check_answer(&actions, Some(&request));
    if actions.iter().any(|a| matches!(a, Action::LoggedIn { .. })) {
        assert!(channel.imei().is_some(), "authenticated without an IMEI");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut channel = Jt808Channel::new(
        Jt808ChannelConfig {
            read_timeout: Duration::from_secs(180),
            login_timeout: Duration::from_secs(30),
            auth_grace: Duration::from_secs(10),
            new_imei_rule: control & 4 == 4,
            accept_unknown_auth_codes: control & 8 == 8,
            allow_reregistration: control & 16 == 16,
            registrations_per_connection: 3,
            subpackages: Limits::default(),
            auth_code_seed: 7,
        },
        now,
    );
    let mut input = Vec::new();
    if control & 1 == 1 {
        input.extend_from_slice(&AUTH);
    }
    input.extend_from_slice(rest);
    let policy = if control & 2 == 2 {
        CrcPolicy::Reject
    } else {
        CrcPolicy::Warn
    };

    let mut at = 0;
    let mut step = 0u32;
    let mut asked: VecDeque<(CheckId, Asked)> = VecDeque::new();
    let mut identity: Option<Imei> = None;
    while at < input.len() {
        let decoded = match jt808::decode(&input[at..], policy) {
            Ok(Some(d)) => d,
            Ok(None) | Err(_) => break,
        };
        at += decoded.consumed;
        step += 1;
        let before = channel.imei().is_some();
        let actions = channel.handle_frame(decoded.packet, now);
        check(&actions, before, false);
        remember(&actions, &mut asked);
        let selector = input.get(at.saturating_sub(1)).copied().unwrap_or(0);
        // Bit 3 of the selector holds the answer back until after the next frame.
        if selector & 8 == 0 {
            answer(&mut channel, &mut asked, selector, now);
        }
        if selector & 0x30 == 0x30 {
            let stray = CheckId(u32::from(selector >> 6) + step);
            if !asked.iter().any(|(c, _)| *c == stray) {
                let mut actions = channel.handle_auth_verdict(stray, AuthVerdict::Match, now);
                actions.extend(channel.handle_registration_verdict(
                    stray,
                    RegistrationVerdict::Registered,
                    now,
                ));
                check_answer(&actions, None);
            }
        }
        match (identity, channel.imei()) {
            (Some(before), now) => assert_eq!(now, Some(before), "a connection changed identity"),
            (None, now) => identity = now,
        }
        now += chrono::Duration::seconds(i64::from(selector % 61));
        match selector % 7 {
            0 => {
                let before = channel.imei().is_some();
                let actions = channel.handle_tick(now);
                check(&actions, before, false);
            }
            1 => {
                let pro_no = [128, 33028, 37121, 37381, 33027][usize::from(selector >> 5) % 5];
                let instruction = Instruction {
                    pro_no,
                    content: String::from_utf8_lossy(&input[at.min(input.len())..]).into_owned(),
                    server_flag_id: step,
                };
                if let Ok(actions) = channel.handle_instruction(&instruction, now) {
                    let before = channel.imei().is_some();
                    check(&actions, before, false);
                }
            }
            2 => channel.instruction_expired(step.wrapping_sub(1)),
            _ => {}
        }
    }
    answer(&mut channel, &mut asked, 0, now);
    let before = channel.imei().is_some();
    let actions = channel.handle_close(now);
    check(&actions, before, false);
});
