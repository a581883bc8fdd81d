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

/// Runs `check` on every file of `fuzz/corpus/<target>`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the {target} checks",
            path.display()
        );
        count += 1;
    }
    assert!(count > 0, "the corpus {} is empty", dir.display());
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
