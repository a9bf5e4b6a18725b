//! # Annex-B H.264 and H.265: NAL units, parameter sets, picture size
