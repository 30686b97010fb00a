//! Self-metrics and logs. Implemented on main.
