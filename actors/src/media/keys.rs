//! Stream keys: the one name of a stream, whatever URL or connection reaches it.
//!
//! The Jimi hub's URLs name each stream by convention, and iothub keeps both numbering
//! conventions as they are: JIMI dashcams number channels from 0 and publish over RTMP,
//! JT/T 1078 dashcams number them from 1 and stream from their SIM.
//!
//! | stream | RTMP (app / name) | HTTP-FLV path | key |
//! |---|---|---|---|
//! | JIMI live | `live` / `<ch>/<imei>` | `/live/<ch>/<imei>.flv` | `live/<ch>/<imei>` |
//! | JIMI history replay | `live` / `<imei>` | `/live/<imei>.flv` | `live/<imei>` |
//! | talk audio for a device | `live` / `chat_<imei>` | `/live/chat_<imei>.flv` | `live/chat_<imei>` |
//! | JT/T live (0x9101) | `<ch>` / `<imei>` | `/<ch>/<imei>.flv` | `<ch>/<imei>` |
//! | JT/T playback (0x9201) | `<ch>` / `<imei>.history` | `/<ch>/<imei>.history.flv` | `<ch>/<imei>.history` |

use std::fmt;

use iothub::imei::Imei;

/// Which of the conventions above a stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    JimiLive { channel: u8 },
    JimiHistory,
    Talk,
    JtLive { channel: u8 },
    JtPlayback { channel: u8 },
}

/// A stream: the device it belongs to and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub imei: Imei,
    pub kind: StreamKind,
}

impl StreamKey {
    /// From a key path as in the table (`live/1/868120303960873`, `3/868120303960873`).
    pub fn parse(path: &str) -> Option<StreamKey> {
        let path = path.trim_start_matches('/');
        let mut parts = path.split('/');
        let first = parts.next()?;
        let second = parts.next();
        let third = parts.next();
        if parts.next().is_some() {
            return None;
        }
        match (first, second, third) {
            ("live", Some(ch), Some(imei)) => Some(StreamKey {
                imei: imei_of(imei)?,
                kind: StreamKind::JimiLive {
                    channel: channel_of(ch)?,
                },
            }),
            ("live", Some(name), None) => match name.strip_prefix("chat_") {
                Some(imei) => Some(StreamKey {
                    imei: imei_of(imei)?,
                    kind: StreamKind::Talk,
                }),
                None => Some(StreamKey {
                    imei: imei_of(name)?,
                    kind: StreamKind::JimiHistory,
                }),
            },
            (ch, Some(name), None) => {
                let channel = channel_of(ch)?;
                match name.strip_suffix(".history") {
                    Some(imei) => Some(StreamKey {
                        imei: imei_of(imei)?,
                        kind: StreamKind::JtPlayback { channel },
                    }),
                    None => Some(StreamKey {
                        imei: imei_of(name)?,
                        kind: StreamKind::JtLive { channel },
                    }),
                }
            }
            _ => None,
        }
    }

    /// From an HTTP-FLV request path (`/live/1/<imei>.flv`, `/1/<imei>.history.flv`).
    pub fn from_flv_path(path: &str) -> Option<StreamKey> {
        StreamKey::parse(path.strip_suffix(".flv")?)
    }

    /// From an RTMP application and stream name, as FFmpeg splits `rtmp://host/app/name`
    /// (a query such as `?sign=` already removed).
    pub fn from_rtmp(app: &str, name: &str) -> Option<StreamKey> {
        let name = name.strip_suffix(".flv").unwrap_or(name);
        StreamKey::parse(&format!(
            "{}/{}",
            app.trim_matches('/'),
            name.trim_matches('/')
        ))
    }

    /// A JT/T 1078 stream a device sends from its SIM on the live or playback port.
    pub fn jt1078(imei: Imei, channel: u8, playback: bool) -> StreamKey {
        let kind = if playback {
            StreamKind::JtPlayback { channel }
        } else {
            StreamKind::JtLive { channel }
        };
        StreamKey { imei, kind }
    }

    /// A JT/T live stream iothub may ask the device for (0x9101) when a viewer wants it.
    pub fn on_demand_channel(&self) -> Option<u8> {
        match self.kind {
            StreamKind::JtLive { channel } => Some(channel),
            _ => None,
        }
    }

    /// The metric label of the kind.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            StreamKind::JimiLive { .. } => "jimi_live",
            StreamKind::JimiHistory => "jimi_history",
            StreamKind::Talk => "talk",
            StreamKind::JtLive { .. } => "jt_live",
            StreamKind::JtPlayback { .. } => "jt_playback",
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StreamKind::JimiLive { channel } => write!(f, "live/{channel}/{}", self.imei),
            StreamKind::JimiHistory => write!(f, "live/{}", self.imei),
            StreamKind::Talk => write!(f, "live/chat_{}", self.imei),
            StreamKind::JtLive { channel } => write!(f, "{channel}/{}", self.imei),
            StreamKind::JtPlayback { channel } => write!(f, "{channel}/{}.history", self.imei),
        }
    }
}

fn channel_of(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn imei_of(s: &str) -> Option<Imei> {
    Imei::parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMEI: &str = "868120303960873";

    fn key(path: &str) -> String {
        StreamKey::parse(path)
            .map(|k| k.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn jimi_live_keeps_its_zero_based_channel() {
        assert_eq!(
            StreamKey::from_flv_path(&format!("/live/0/{IMEI}.flv")).map(|k| k.kind),
            Some(StreamKind::JimiLive { channel: 0 })
        );
    }

    #[test]
    fn jt_live_and_playback_are_told_apart_by_the_history_suffix() {
        assert_eq!(
            StreamKey::from_flv_path(&format!("/1/{IMEI}.history.flv")).map(|k| k.kind),
            Some(StreamKind::JtPlayback { channel: 1 })
        );
        assert_eq!(
            StreamKey::from_flv_path(&format!("/1/{IMEI}.flv")).map(|k| k.kind),
            Some(StreamKind::JtLive { channel: 1 })
        );
    }

    #[test]
    fn rtmp_and_http_flv_name_the_same_stream() {
        assert_eq!(
            StreamKey::from_rtmp("live", &format!("3/{IMEI}")),
            StreamKey::from_flv_path(&format!("/live/3/{IMEI}.flv"))
        );
        assert_eq!(
            StreamKey::from_rtmp("2", IMEI),
            StreamKey::from_flv_path(&format!("/2/{IMEI}.flv"))
        );
    }

    #[test]
    fn talk_keys_carry_the_chat_prefix() {
        assert_eq!(
            key(&format!("live/chat_{IMEI}")),
            format!("live/chat_{IMEI}")
        );
    }

    #[test]
    fn every_key_prints_as_it_parses() {
        for path in [
            format!("live/0/{IMEI}"),
            format!("live/{IMEI}"),
            format!("live/chat_{IMEI}"),
            format!("1/{IMEI}"),
            format!("4/{IMEI}.history"),
        ] {
            assert_eq!(key(&path), path);
        }
    }

    #[test]
    fn paths_outside_the_conventions_are_refused() {
        for path in [
            "",
            "live",
            "live/1/2/3",
            "../etc/passwd",
            "live/1/not-an-imei",
            "9999/868120303960873",
            "x/868120303960873",
        ] {
            assert_eq!(StreamKey::parse(path), None, "{path}");
        }
    }
}
