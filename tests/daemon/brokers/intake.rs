//! Reply requests read from a broker.
