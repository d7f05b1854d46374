#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit, property and end-to-end tests.
# Needs: the Rust toolchain and python3 (the end-to-end tests run real Python function processes).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is required by the end-to-end tests" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked
