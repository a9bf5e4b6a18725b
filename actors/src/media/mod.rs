//! Media work that needs more than pure code: transcoding through native codecs.

pub mod transcode;
