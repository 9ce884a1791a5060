#!/usr/bin/env bash
# token.sh — prints the gateway's API token (clients send it in the X-Auth-Token header).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

# The systemd deployment (scripts/install.sh) keeps its token in its container.
if svc_exists && svc_podman container exists "$GATEWAY_CONTAINER" 2>/dev/null; then
	svc_podman exec "$GATEWAY_CONTAINER" code-interpreter token
	exit
fi
if ! svc_exists || [[ ! -x $CI_BIN ]]; then
	die "gateway not installed: run scripts/start.sh first"
fi
svc_run "$CI_BIN" token --config "$CI_CONFIG"
