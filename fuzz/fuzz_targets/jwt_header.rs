//! Fuzz target `jwt_header`: the properties are in `checks/jwt_header.rs`, shared with the regression
//! test that replays this target's corpus on stable.
#![no_main]

#[path = "../checks/jwt_header.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
