//! # FLV bytes: header, tags, onMetaData, AVC/HEVC/AAC/G.711 tag bodies
