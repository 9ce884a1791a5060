#!/usr/bin/env bash
# token.sh — prints the gateway's API token (clients send it in the X-Auth-Token header).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

# The Quadlet deployment keeps its token in its container; the plain unit
# and scripts/start.sh in the state directory.
service_token
