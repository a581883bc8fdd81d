//! Replays the committed fuzz corpora of the protocol targets (`fuzz/corpus/client_frame`,
//! `server_frame`, `topic_pattern_scope`) through the very checks the fuzz targets run (the
//! files in `fuzz/checks/` are included with `#[path]`), so CI exercises them on stable without
//! cargo-fuzz. Crashes the fuzzers found get a named test here as well.

use std::path::PathBuf;

#[path = "../../fuzz/checks/client_frame.rs"]
mod client_frame;
#[path = "../../fuzz/checks/server_frame.rs"]
mod server_frame;
#[path = "../../fuzz/checks/topic_pattern_scope.rs"]
mod topic_pattern_scope;

#[path = "../../fuzz/checks/replay.rs"]
mod corpus;

/// Runs `check` on every file of `fuzz/corpus/<target>`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    corpus::replay(&fuzz, target, check);
}

#[test]
fn client_frame_corpus_passes_its_checks() {
    replay("client_frame", client_frame::check);
}

#[test]
fn server_frame_corpus_passes_its_checks() {
    replay("server_frame", server_frame::check);
}

#[test]
fn topic_pattern_scope_corpus_passes_its_checks() {
    replay("topic_pattern_scope", topic_pattern_scope::check);
}
