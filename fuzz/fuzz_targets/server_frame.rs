//! Fuzz target `server_frame`: the properties are in `checks/server_frame.rs`, shared with the regression
//! test that replays this target's corpus on stable.
#![no_main]

#[path = "../checks/server_frame.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
