//! Fuzz target `topic_pattern_scope`: the properties are in `checks/topic_pattern_scope.rs`, shared with the regression
//! test that replays this target's corpus on stable.
#![no_main]

#[path = "../checks/topic_pattern_scope.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
