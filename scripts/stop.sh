#!/usr/bin/env bash
# stop.sh — stops what start.sh started: the gateway (`systemctl --user stop`
# where the systemd unit of scripts/install.sh runs it, else by its pid file),
# every worker container, and the podman services if start.sh started them
# (the gVisor workers' one too; a systemd podman.socket is left alone).
# Idempotent: exits 0 when nothing runs.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

main() {
	if ! svc_exists; then
		log "service user $SVC_USER does not exist: nothing to stop"
		return 0
	fi
	if systemd_unit_installed; then
		log "service: stopping $GATEWAY_UNIT (it removes its workers)"
		svc_systemctl stop "$GATEWAY_UNIT"
	fi
	stop_gateway
	remove_workers
	stop_pid "$PODMAN_PIDFILE" /usr/bin/podman "podman service"
	stop_pid "$PODMAN_GVISOR_PIDFILE" /usr/bin/podman "gVisor podman service"
}

main "$@"
