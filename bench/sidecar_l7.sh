#!/usr/bin/env bash
# secmesh's L7 sidecar pair (protocol http) in the shared 2-hop mTLS benchmark (../shared/bench/run.sh),
# with an ALLOW policy of 1,000 rules loaded on the inbound side.
#
#   bench/sidecar_l7.sh              # all phases: h1 (wrk), h2 (h2load -m 10), h2-h1, grpc (h2load, unary)
#   PHASES="h1" RUNS=1 DURATION=5s bench/sidecar_l7.sh
#
# h1:   wrk through run.sh: direct, haproxy-http and secmesh, /ok and /64k (ratios printed by run.sh).
# h2:   the same run.sh topology, but the load generator is h2load (-m 10) against the plaintext
#       outbound listeners (h2c prior knowledge); a `wrk` shim on PATH translates run.sh's wrk call
#       into h2load and prints wrk's RESULT line (p50/p99 from h2load's per-request log).
# h2-h1: the h2 phase with HTTP/1.1 between the sidecars, HAProxy's shape in this kit (its outbound
#       backend says `alpn http/1.1`); the h2 phase keeps the default (`auto`: h2 stays h2, as Istio does).
# grpc: bench/sidecar_l7_grpc.py: unary gRPC QPS (h2load with gRPC frames) direct vs through the mesh.
# Every knob of run.sh (RUNS, DURATION, CONNS, PIN, KEEP …) passes through.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
KIT=${BENCH_KIT:-$REPO/../shared/bench/run.sh}
if [[ ! -f $KIT ]]; then
  echo "bench/sidecar_l7.sh: benchmark kit not found at $KIT (set BENCH_KIT=/path/to/run.sh)" >&2
  exit 2
fi
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || { echo "bench/sidecar_l7.sh: no interpreter at $PY (set PYTHON=)" >&2; exit 2; }
command -v h2load >/dev/null || { echo "bench/sidecar_l7.sh: h2load missing (apt-get install nghttp2-client)" >&2; exit 2; }

PHASES=${PHASES:-h1 h2 h2-h1 grpc}
WORKERS=${WORKERS:-1}
RULES=${RULES:-1000}
ACCESS=$([[ ${ACCESS_LOG:-1} == 1 ]] && echo --access-log || echo --no-access-log)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/secmesh-l7bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ALLOW policies with $RULES rules in all (500 per policy, Istio's validation cap is 512): one per
# (service account, path prefix), the last one the benchmark client's.
"$PY" - "$RULES" > "$WORK/policy.yaml" <<'PYEOF'
import sys
n = int(sys.argv[1])
per = 500
rules = [(f"bench.local/ns/ns{i}/sa/svc{i}", f"/api/v{i}/*") for i in range(n - 1)]
rules.append(("bench.local/ns/default/sa/client", None))
for k in range(0, len(rules), per):
    print(f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-allow-{k // per}, namespace: default}}\nspec:\n  action: ALLOW\n  rules:")
    for principal, path in rules[k:k + per]:
        paths = f'["{path}"]' if path else '["/ok", "/64k", "/*"]'
        methods = '["GET"]' if path else '["GET", "POST"]'
        print(f"  - from: [{{source: {{principals: [\"{principal}\"]}}}}]\n    to: [{{operation: {{methods: {methods}, paths: {paths}}}}}]")
PYEOF

COMMON="--ca {CA} --cert {CERT} --key {KEY} --workers $WORKERS $ACCESS --log-level info --trust-domain bench.local --protocol http"
export CANDIDATE_NAME=${CANDIDATE_NAME:-secmesh}
export CANDIDATE_INBOUND_CMD="env PYTHONPATH=$REPO $PY -m secmesh sidecar inbound --listen 127.0.0.1:{LISTEN_PORT} --upstream {UPSTREAM_HOST}:{UPSTREAM_PORT} $COMMON --policies $WORK/policy.yaml --upstream-protocol http1"
# Between the sidecars: as the client speaks (h2 multiplexed for h2 clients; OUT_UPSTREAM_PROTOCOL=http1
# translates to HTTP/1.1 keep-alive between the sidecars as HAProxy does; gRPC is always h2).
OUT_UP=${OUT_UPSTREAM_PROTOCOL:-auto}
outbound_cmd() { echo "env PYTHONPATH=$REPO $PY -m secmesh sidecar outbound --listen 127.0.0.1:{LISTEN_PORT} --upstream {UPSTREAM_HOST}:{UPSTREAM_PORT} $COMMON --peer-id {PEER_ID} --upstream-protocol $1"; }
export CANDIDATE_OUTBOUND_CMD=$(outbound_cmd "$OUT_UP")

for phase in $PHASES; do
  case $phase in
    h1)
      echo "=== phase h1: wrk, HTTP/1.1 through the 2-hop mTLS path ($RULES-rule ALLOW policy on the inbound) ==="
      CONFIGS=${CONFIGS_H1:-"direct haproxy-http $CANDIDATE_NAME"} HS_SECONDS=0 bash "$KIT" ;;
    h2|h2-h1)
      if [[ $phase == h2-h1 ]]; then
        export CANDIDATE_OUTBOUND_CMD=$(outbound_cmd http1)
        echo "=== phase h2-h1: as h2, with HTTP/1.1 between the sidecars (as the kit's HAProxy) ==="
      else
        export CANDIDATE_OUTBOUND_CMD=$(outbound_cmd "$OUT_UP")
      fi
      echo "=== phase h2: h2load -m ${H2_STREAMS:-10} against the plaintext outbound listeners (h2c) ==="
      mkdir -p "$WORK/shim"
      cat > "$WORK/shim/wrk" <<SHIM
#!/usr/bin/env bash
# wrk → h2load shim for run.sh: same arguments in, same RESULT line out.
conns=50; dur=10s; url=""
while [[ \$# -gt 0 ]]; do
  case \$1 in
    -c) conns=\$2; shift 2 ;; -c*) conns=\${1#-c}; shift ;;
    -d) dur=\$2; shift 2 ;; -d*) dur=\${1#-d}; shift ;;
    -t|-s) shift 2 ;; -t*|-s*) shift ;;
    *) url=\$1; shift ;;
  esac
done
log=\$(mktemp)
out=\$(h2load -c "\$conns" -m ${H2_STREAMS:-10} -t 1 -D "\${dur%s}" --log-file="\$log" "\$url" 2>&1)
rps=\$(awk '/^finished in/ { gsub(",", "", \$4); print \$4 }' <<<"\$out")
failed=\$(awk '/^requests:/ { print \$10 + \$12 + \$14 }' <<<"\$out")
non2xx=\$(awk '/^status codes:/ { print \$5 + \$7 + \$9 }' <<<"\$out")
read -r p50 p99 < <(awk '{ print \$3 }' "\$log" | sort -n | awk '{ a[NR] = \$1 } END { if (NR) printf "%.3f %.3f\n", a[int(NR * 0.5) + 1] / 1000, a[int(NR * 0.99) + 1] / 1000; else print "0 0" }')
rm -f "\$log"
echo "RESULT rps=\${rps:-0} p50_ms=\$p50 p99_ms=\$p99 sock_errors=\${failed:-0} non2xx=\${non2xx:-0} requests=0"
SHIM
      chmod +x "$WORK/shim/wrk"
      PATH="$WORK/shim:$PATH" CONFIGS=${CONFIGS_H2:-"haproxy-http $CANDIDATE_NAME"} URL_PATHS=${URL_PATHS_H2:-/ok} \
        HS_SECONDS=0 bash "$KIT" ;;
    grpc)
      echo "=== phase grpc: unary gRPC QPS, direct vs through the mesh ==="
      "$PY" "$REPO/bench/sidecar_l7_grpc.py" ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
