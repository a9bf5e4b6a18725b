//! Drives the JT/T 808 channel with whatever the decoder makes of arbitrary bytes,
//! interleaved with store verdicts, ticks, instructions and expiries chosen by the input.
//! Any panic is a finding, and so is a broken channel invariant:
//! - nothing is published before authentication, and `LoggedIn` only follows a verdict;
//! - within one answer, every `Publish` comes before every `Send` (an acknowledgement never
//!   overtakes the event it acknowledges), and a `StoreAuthCode` comes before the `Send` of
//!   the 0x8100 that hands the code out;
//! - an authenticated channel names its IMEI.
#![no_main]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::channel::jt808::{Jt808Channel, Jt808ChannelConfig};
use iothub::channel::{Action, AuthVerdict, Channel};
use iothub::codec::jt808::{self, Limits};
use iothub::codec::CrcPolicy;
use iothub::command::Instruction;
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
            Action::Send(_) => seen_send = true,
            _ => {}
        }
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
        let selector = input.get(at.saturating_sub(1)).copied().unwrap_or(0);
        if actions
            .iter()
            .any(|a| matches!(a, Action::VerifyAuthCode { .. }))
        {
            let verdict = match selector % 4 {
                0 => AuthVerdict::Match,
                1 => AuthVerdict::Mismatch,
                2 => AuthVerdict::Unknown,
                _ => AuthVerdict::Unavailable,
            };
            let before = channel.imei().is_some();
            let actions = channel.handle_auth_verdict(verdict, now);
            check(&actions, before, true);
            if actions.iter().any(|a| matches!(a, Action::LoggedIn { .. })) {
                assert!(channel.imei().is_some(), "authenticated without an IMEI");
            }
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
    let before = channel.imei().is_some();
    let actions = channel.handle_close(now);
    check(&actions, before, false);
});
