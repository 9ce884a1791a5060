#!/usr/bin/env bash
# restart.sh — restarts the gateway only, e.g. after a code change: rebuilds
# it, reinstalls binary and config if they changed, stops the running gateway
# (by its pid file) and starts the new one; where scripts/install.sh's systemd
# unit runs it, `systemctl --user restart` instead (the Quadlet unit runs its
# image: scripts/install.sh rebuilds that). Worker containers and the podman
# service keep running. The build comes first, so a failed build leaves the
# old gateway serving.
#
# Usage: scripts/restart.sh [--no-build]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

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
	if systemd_unit_installed; then
		install_files "$bin"
		log "service: restarting $GATEWAY_UNIT (sessions are kept)"
		svc_systemctl restart "$GATEWAY_UNIT"
		wait_for 60 unit_healthy || die "$GATEWAY_UNIT did not become healthy within 60 s (see its log)"
		log "service: healthy at $(service_url)"
		return 0
	fi
	stop_gateway
	install_files "$bin"
	start_gateway
}

main "$@"
