//! Placeholder: filled by the conformance/bench work of issue 2.
fn main() {}
