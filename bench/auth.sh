# Sourced by the benchmarks: gpufn asks every caller for a token, so the benchmarks send one, as
# real callers do (the token check is part of the measured path; the nginx baseline gets the same
# header, so both proxies carry the same request bytes).
# bench_auth DATA_DIR: the header line for the gpufn started on DATA_DIR (its first admin token,
# written before it listens). Empty token for a gpufn build from before tokens existed.
bench_auth() {
  local t=""
  for _ in $(seq 1 200); do
    if [ -s "$1/admin.token" ]; then t=$(cat "$1/admin.token"); break; fi
    sleep 0.05
  done
  echo "authorization: Bearer $t"
}
