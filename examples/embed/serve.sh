#!/bin/sh
# Starts the embed server: the release build if there is one (what scripts/run.sh builds), else the
# debug build (what `cargo test` builds). gpufn runs this from examples/embed with PORT set.
for bin in ../../target/release/gpufn-embed ../../target/debug/gpufn-embed; do
  [ -x "$bin" ] && exec "$bin"
done
echo "gpufn-embed is not built: cargo build --release -p gpufn-example-embed" >&2
exit 1
