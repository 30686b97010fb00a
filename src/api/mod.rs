//! The HTTP edge (axum). Implemented across the ingest and queryapi branches.
