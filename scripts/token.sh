#!/usr/bin/env bash
# token.sh — prints the gateway's API token (clients send it as a Bearer token).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! svc_exists || [[ ! -x $CI_BIN ]]; then
	die "gateway not installed: run scripts/start.sh first"
fi
svc_run "$CI_BIN" token --config "$CI_CONFIG"
