//! Replays a committed fuzz corpus through a target's checks on stable Rust: included with
//! `#[path]` by the regression tests of the crates the targets exercise
//! (`protocol/tests/fuzz_regressions.rs`, `broker/tests/fuzz_regressions.rs`), not by the
//! fuzz targets themselves.

use std::path::Path;

/// Runs `check` on every file of `<fuzz>/corpus/<target>`, naming the file that fails;
/// `fuzz` is the `fuzz/` folder. Panics when the corpus is missing or empty.
pub(crate) fn replay(fuzz: &Path, target: &str, check: fn(&[u8])) {
    let dir = fuzz.join("corpus").join(target);
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
