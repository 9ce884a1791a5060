#!/usr/bin/env bash
# restart.sh — restarts the gateway only, e.g. after a code change: rebuilds
# it, reinstalls binary and config if they changed, stops the running gateway
# (by its pid file) and starts the new one. Worker containers and the podman
# service keep running. The build comes first, so a failed build leaves the
# old gateway serving.
#
# Usage: scripts/restart.sh [--no-build]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
	local build=1 bin=$REPO/target/release/code-interpreter
	case ${1:-} in
	--no-build) build=0 ;;
	"") ;;
	*) die "usage: $0 [--no-build]" ;;
	esac
	svc_exists || die "service user $SVC_USER does not exist: run scripts/start.sh first"
	podman_ping || warn "podman service not answering on $PODMAN_SOCK: run scripts/start.sh"
	((build)) && bin=$(build_gateway)
	stop_gateway
	install_files "$bin"
	start_gateway
}

main "$@"
