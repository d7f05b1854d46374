#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) with libFuzzer, growing fuzz/corpus/<target>/,
# and prints execs and crashes per target. Needs nightly and cargo-fuzz
# (`rustup toolchain install nightly && cargo install cargo-fuzz`). Not run by CI: CI replays the
# corpus through the same entry points as ordinary tests.
set -euo pipefail
cd "$(dirname "$0")"
S=${1:-60}
cargo +nightly fuzz build -O
for t in spec request_head response_head chunked fc_signature trace; do
  mkdir -p corpus/$t
  log=$(mktemp)
  if cargo +nightly fuzz run -O $t corpus/$t -- -max_total_time=$S -max_len=4096 > "$log" 2>&1; then status=ok; else status=CRASH; fi
  execs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}' || true)
  echo "$t: $status, ${execs:-?} execs in ${S}s, corpus $(ls corpus/$t | wc -l) inputs"
  [ "$status" = ok ] || tail -30 "$log"
done
