#!/usr/bin/env bash
# secmesh's L4 sidecar pair in the shared 2-hop mTLS benchmark (../shared/bench/run.sh).
#
#   bench/sidecar.sh                       # direct, haproxy-tcp, haproxy-http and secmesh
#   RUNS=1 DURATION=5s bench/sidecar.sh    # quick
#   CONFIGS="direct haproxy-tcp secmesh" WORKERS=2 bench/sidecar.sh
#   RESUMPTION=0 ACCESS_LOG=0 bench/sidecar.sh   # no TLS session tickets between the sidecars; no access log
#
# Every knob of run.sh (RUNS, DURATION, CONNS, URL_PATHS, HS_SECONDS, PIN, CONFIGS, KEEP …)
# passes through. The kit is referenced, not copied: it must exist at ../shared/bench.
# After the kit's tables, one more line: the largest RSS of any secmesh sidecar process during the run.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
KIT=${BENCH_KIT:-$REPO/../shared/bench/run.sh}
if [[ ! -x $KIT && ! -f $KIT ]]; then
  echo "bench/sidecar.sh: benchmark kit not found at $KIT (expected ../shared/bench/run.sh relative to the repo root;" \
       "set BENCH_KIT=/path/to/run.sh)" >&2
  exit 2
fi
PY=${PYTHON:-$REPO/.venv/bin/python}
if [[ ! -x $PY ]]; then
  echo "bench/sidecar.sh: no interpreter at $PY (run 'make test' once, or set PYTHON=)" >&2
  exit 2
fi
WORKERS=${WORKERS:-1}
# Access logging costs a JSON line per connection; keep it on (as deployed) unless ACCESS_LOG=0.
ACCESS=$([[ ${ACCESS_LOG:-1} == 1 ]] && echo --access-log || echo --no-access-log)
# TLS 1.3 session resumption between the two sidecars (the default, as HAProxy's ssl-reuse); RESUMPTION=0 turns it off.
RESUME=$([[ ${RESUMPTION:-1} == 1 ]] && echo --session-resumption || echo --no-session-resumption)
COMMON="--ca {CA} --cert {CERT} --key {KEY} --workers $WORKERS $ACCESS $RESUME --log-level info"

export CANDIDATE_NAME=${CANDIDATE_NAME:-secmesh}
export CANDIDATE_INBOUND_CMD="env PYTHONPATH=$REPO $PY -m secmesh sidecar inbound --listen 127.0.0.1:{LISTEN_PORT} --upstream {UPSTREAM_HOST}:{UPSTREAM_PORT} $COMMON --allow-principal {PEER_ID}"
export CANDIDATE_OUTBOUND_CMD="env PYTHONPATH=$REPO $PY -m secmesh sidecar outbound --listen 127.0.0.1:{LISTEN_PORT} --upstream {UPSTREAM_HOST}:{UPSTREAM_PORT} $COMMON --peer-id {PEER_ID}"
export CONFIGS=${CONFIGS:-"direct haproxy-tcp haproxy-http $CANDIDATE_NAME"}
# Resident memory of every secmesh sidecar process (the issue's "RSS per worker"), sampled every
# 0.5 s while the kit runs; the largest value seen is printed after the kit's tables.
RSS_LOG=$(mktemp "${TMPDIR:-/tmp}/secmesh-rss.XXXXXX")
(
  while sleep 0.5; do
    for pid in $(pgrep -f "secmesh sidecar (inbound|outbound)" || true); do
      awk -v p="$pid" '/^VmRSS:/ { print p, $2 }' "/proc/$pid/status" 2>/dev/null || true
    done
  done >>"$RSS_LOG"
) &
SAMPLER=$!
status=0
bash "$KIT" "$@" || status=$?
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
if [[ -s $RSS_LOG ]]; then
  awk '{ if ($2 > max[$1]) max[$1] = $2 } END { n = 0; for (p in max) { if (max[p] > top) top = max[p]; n++ }
        printf "\nsecmesh sidecar RSS: max %.1f MB over %d processes (sampled every 0.5 s during the run)\n", top / 1024, n }' "$RSS_LOG"
fi
rm -f "$RSS_LOG"
exit "$status"
