//! # What a new viewer is sent first: metadata, sequence headers, the last GOP
//!
//! A player joining a live stream cannot decode anything until it has the decoder
//! configuration and a key frame, and would otherwise wait up to a GOP for one. The cache
//! keeps the latest onMetaData, the latest video and audio sequence headers, and every tag
//! since the last key frame, so a viewer starts with a picture at once. Both bounds hold at
//! all times: a GOP that grows past them (a device that never sends a key frame) is dropped,
//! and caching resumes at the next key frame.

use std::collections::VecDeque;

use super::flv;
use super::{FlvTag, TagKind};

#[cfg(test)]
mod tests;

/// The start of a live stream, bounded in tags and bytes.
#[derive(Debug, Clone)]
pub struct GopCache {
    max_tags: usize,
    max_bytes: usize,
    metadata: Option<FlvTag>,
    video_header: Option<FlvTag>,
    audio_header: Option<FlvTag>,
    /// From a key frame on (video streams) or the latest audio tags (audio-only streams).
    gop: VecDeque<FlvTag>,
    gop_bytes: usize,
    /// True between a key frame and the moment the GOP overflowed.
    collecting: bool,
    has_video: bool,
    has_audio: bool,
}

impl GopCache {
    /// `max_tags` and `max_bytes` bound the cached GOP (headers and metadata come on top: one
    /// of each).
    pub fn new(max_tags: usize, max_bytes: usize) -> GopCache {
        GopCache {
            max_tags,
            max_bytes,
            metadata: None,
            video_header: None,
            audio_header: None,
            gop: VecDeque::new(),
            gop_bytes: 0,
            collecting: false,
            has_video: false,
            has_audio: false,
        }
    }

    pub fn push(&mut self, tag: &FlvTag) {
        match tag.kind {
            TagKind::Script => {
                if flv::is_on_metadata(&tag.body) {
                    self.metadata = Some(FlvTag {
                        body: flv::without_set_data_frame(&tag.body),
                        ..tag.clone()
                    });
                }
            }
            TagKind::Video => {
                if !self.has_video {
                    // Audio cached while the stream looked audio-only does not start a GOP.
                    self.clear_gop();
                    self.has_video = true;
                }
                if tag.is_sequence_header() {
                    self.video_header = Some(tag.clone());
                } else if tag.is_key_frame() {
                    self.clear_gop();
                    self.collecting = true;
                    self.append(tag);
                } else if self.collecting {
                    self.append(tag);
                }
            }
            TagKind::Audio => {
                self.has_audio = true;
                if tag.is_sequence_header() {
                    self.audio_header = Some(tag.clone());
                } else if self.has_video {
                    if self.collecting {
                        self.append(tag);
                    }
                } else {
                    self.push_audio_only(tag);
                }
            }
        }
    }

    /// What a new viewer is sent, in order: metadata, video sequence header, audio sequence
    /// header, then the GOP from its key frame (or the latest audio of an audio-only stream).
    pub fn start_tags(&self) -> Vec<FlvTag> {
        self.metadata
            .iter()
            .chain(&self.video_header)
            .chain(&self.audio_header)
            .chain(&self.gop)
            .cloned()
            .collect()
    }

    pub fn has_video(&self) -> bool {
        self.has_video
    }

    pub fn has_audio(&self) -> bool {
        self.has_audio
    }

    /// Body bytes held: GOP, headers and metadata.
    pub fn bytes(&self) -> usize {
        self.gop_bytes
            + [&self.metadata, &self.video_header, &self.audio_header]
                .iter()
                .filter_map(|t| t.as_ref())
                .map(|t| t.body.len())
                .sum::<usize>()
    }

    /// Tags in the GOP part.
    pub fn gop_len(&self) -> usize {
        self.gop.len()
    }

    fn append(&mut self, tag: &FlvTag) {
        if self.gop.len() + 1 > self.max_tags || self.gop_bytes + tag.body.len() > self.max_bytes {
            self.clear_gop();
            self.collecting = false;
            return;
        }
        self.gop_bytes += tag.body.len();
        self.gop.push_back(tag.clone());
    }

    fn push_audio_only(&mut self, tag: &FlvTag) {
        if tag.body.len() > self.max_bytes || self.max_tags == 0 {
            return;
        }
        while self.gop.len() + 1 > self.max_tags || self.gop_bytes + tag.body.len() > self.max_bytes
        {
            match self.gop.pop_front() {
                Some(old) => self.gop_bytes -= old.body.len(),
                None => break,
            }
        }
        self.gop_bytes += tag.body.len();
        self.gop.push_back(tag.clone());
    }

    fn clear_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
    }
}
