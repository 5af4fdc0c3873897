#!/usr/bin/env bash
# Fuzz brownout's parsers, each target for SECONDS (600 unless given), one after another;
# outside CI. Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# New inputs go to target/fuzz-corpus/TARGET, starting from the seeds in fuzz/corpus;
# a crash leaves its input in fuzz/artifacts/TARGET and stops the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
for target in toxic_spec jsonrpc lines sse scenario_file; do
    work="../target/fuzz-corpus/$target"
    mkdir -p "$work"
    echo "==> $target for ${seconds}s"
    cargo +nightly fuzz run -O "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
