#!/usr/bin/env bash
# Starts the upstream nginx on $PORT (as a gpufn function or by hand) in the foreground.
set -euo pipefail
# Run by gpufn as a function it has no BENCH_DIR (instances get a clean environment) and runs as
# gpufn's unprivileged user: a directory of that user's own.
DIR="${BENCH_DIR:-/tmp/gpufn-bench-$(id -u)}"
mkdir -p "$DIR/tmp-$PORT"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
# nginx workers run as an unprivileged user: they must be able to read the 1 MiB body.
chmod 755 "$DIR"
[ -f "$DIR/1m.bin" ] || { head -c 1048576 /dev/urandom > "$DIR/1m.bin"; chmod 644 "$DIR/1m.bin"; }
sed -e "s|__PORT__|$PORT|g" -e "s|__DIR__|$DIR|g" -e "s|__BODY__|$BODY|" \
  "$(dirname "$0")/upstream.conf.tmpl" > "$DIR/upstream-$PORT.conf"
exec nginx -p "$DIR" -c "$DIR/upstream-$PORT.conf"
