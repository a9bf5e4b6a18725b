//! # What a new viewer is sent first: metadata, sequence headers, the last GOP
