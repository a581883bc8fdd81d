#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 180), one after another on one core, then
# minimizes each corpus with `cargo fuzz cmin`. For humans, not CI: CI replays the committed
# corpora on stable through protocol/tests/fuzz_regressions.rs and
# broker/tests/fuzz_regressions.rs.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). A crash leaves its
# input in fuzz/artifacts/<target>/ and stops this script (set -e); see README.md.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${1:-180}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(client_frame server_frame topic_pattern_scope jwt_header)
fi

# Tokens may be up to 8 KiB (MAX_TOKEN_BYTES) and the jwt generator pads past it.
max_len() {
    case "$1" in
        jwt_header) echo 12288 ;;
        *) echo 4096 ;;
    esac
}

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" \
        -timeout=10 -rss_limit_mb=4096 -print_final_stats=1

    # cmin renames every file after its hash: keep the hand-written `seed-*` files by name.
    seeds="$(mktemp -d)"
    cp "corpus/$target"/seed-* "$seeds"/ 2>/dev/null || true
    cargo +nightly fuzz cmin "$target" "corpus/$target" -- -max_len="$(max_len "$target")"
    for seed in "$seeds"/seed-*; do
        [ -e "$seed" ] || continue
        # Drop the hashed copy that cmin may have kept of the same seed, then restore it.
        rm -f "corpus/$target/$(sha1sum "$seed" | cut -d' ' -f1)"
        cp "$seed" "corpus/$target/"
    done
    rm -rf "$seeds"
    echo "== $target: $(ls "corpus/$target" | wc -l) files, $(du -sh "corpus/$target" | cut -f1)"
done
