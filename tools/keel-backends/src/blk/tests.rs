//! Tests of the block backend.
