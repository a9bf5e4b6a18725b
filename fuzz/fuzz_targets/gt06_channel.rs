//! Drives the GT06 channel with whatever the decoder makes of arbitrary bytes, interleaved
//! with ticks, instructions and expiries chosen by the input. Any panic is a finding, and so
//! is a broken channel invariant:
//! - nothing is published or acknowledged before login;
//! - within one answer to a frame, every `Publish` comes before every `Send` (an
//!   acknowledgement never overtakes the event it acknowledges);
//! - a logged-in channel names its IMEI.
#![no_main]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::channel::gt06::{Gt06Channel, Gt06ChannelConfig};
use iothub::channel::{Action, Channel};
use iothub::codec::{gt06, CrcPolicy};
use iothub::command::Instruction;
use libfuzzer_sys::fuzz_target;

/// A valid extended login (IMEI 864717003664467), used when the input asks to start logged in.
const LOGIN: [u8; 22] = [
    0x78, 0x78, 0x11, 0x01, 0x08, 0x64, 0x71, 0x70, 0x03, 0x66, 0x44, 0x67, 0x10, 0x0F, 0x19,
    0x0A, 0x00, 0x02, 0xC6, 0xD2, 0x0D, 0x0A,
];

fn check(actions: &[Action], logged_in_before: bool, from_frame: bool) {
    let mut seen_send = false;
    // The login's own LOGIN event is published just before `LoggedIn` (durable first).
    let logged_in = logged_in_before
        || actions
            .iter()
            .any(|a| matches!(a, Action::LoggedIn { .. }));
    for a in actions {
        match a {
            Action::Publish(_) => {
                assert!(logged_in, "published before login");
                if from_frame {
                    assert!(!seen_send, "an acknowledgement overtook its event");
                }
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
    let mut channel = Gt06Channel::new(
        Gt06ChannelConfig {
            read_timeout: Duration::from_secs(180),
            login_timeout: Duration::from_secs(30),
        },
        now,
    );
    let mut input = Vec::new();
    if control & 1 == 1 {
        input.extend_from_slice(&LOGIN);
    }
    input.extend_from_slice(rest);
    let policy = if control & 2 == 2 { CrcPolicy::Reject } else { CrcPolicy::Warn };

    let mut at = 0;
    let mut step = 0u32;
    while at < input.len() {
        let decoded = match gt06::decode(&input[at..], policy) {
            Ok(Some(d)) => d,
            Ok(None) | Err(_) => break,
        };
        at += decoded.consumed;
        step += 1;
        let before = channel.imei().is_some();
        let actions = channel.handle_frame(decoded.frame, now);
        check(&actions, before, true);
        if actions.iter().any(|a| matches!(a, Action::LoggedIn { .. })) {
            assert!(channel.imei().is_some(), "logged in without an IMEI");
        }
        // Let the input steer time, instructions and expiries between frames.
        let selector = input.get(at.saturating_sub(1)).copied().unwrap_or(0);
        now += chrono::Duration::seconds(i64::from(selector % 61));
        match selector % 7 {
            0 => {
                let before = channel.imei().is_some();
                let actions = channel.handle_tick(now);
                check(&actions, before, false);
            }
            1 => {
                let instruction = Instruction {
                    pro_no: if selector & 0x80 == 0 { 128 } else { u32::from(selector) },
                    content: format!("STATUS,{step}#"),
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
