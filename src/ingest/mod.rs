//! Ingest: decoding and validating remote-write requests. Implemented on the ingest branch.
