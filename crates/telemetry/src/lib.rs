//! courier-telemetry
