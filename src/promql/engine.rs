//! The evaluator. Implemented on the engine branch.
