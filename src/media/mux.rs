//! # JT/T 1078 frames to FLV tags
