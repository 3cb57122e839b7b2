#!/usr/bin/env bash
# `make demo`: the whole product on loopback — CA, one agent per pod, the orders app, two sidecars;
# an allowed request, a denied identity, plaintext refused, rotation under load; then a summary.
# Unprivileged, in a temporary directory, everything stopped and removed on exit or Ctrl-C.
# Options are passed through: scripts/demo.sh --keep | --json | --non-interactive | --ttl 10s | --help
set -euo pipefail
exec secmesh demo "$@"
