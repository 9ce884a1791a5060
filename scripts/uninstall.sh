#!/usr/bin/env bash
# uninstall.sh — reverses scripts/install.sh: stops the service (the gateway
# removes its workers), removes the units (Quadlet or plain), the gateway
# container and any worker container left, and reloads the user's systemd.
# Keeps the state (token: the volume or ~/.local/state/code-interpreter), the
# config, the images and the binary unless --purge is given, and the service
# user always. Idempotent. Fails if a container is left.
#
# Usage: scripts/uninstall.sh [--purge]
#   --purge   also remove the state, the config, both images, the binary,
#             and disable linger for the service user
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

usage() { sed -n '8,10s/^# \{0,1\}//p' "$0"; }

remove_units() {
	local removed=0
	remove_quadlet_units && removed=1
	remove_plain_unit && removed=1
	remove_gvisor_units && removed=1
	if user_systemd; then
		svc_systemctl daemon-reload
		svc_systemctl reset-failed "$GATEWAY_UNIT" code-interpreter-state-volume.service 2>/dev/null || true
	fi
	if ((removed)); then log "units: removed"; else log "units: none installed"; fi
}

main() {
	local purge=0 ids left kept
	case ${1:-} in
	--purge) purge=1 ;;
	"") ;;
	-h | --help) usage && return 0 ;;
	*) usage >&2 && die "unknown option $1" ;;
	esac
	if ! svc_exists; then
		log "service user $SVC_USER does not exist: nothing to uninstall"
		return 0
	fi
	case $(installed_unit_kind) in
	quadlet) kept="the state volume $STATE_VOLUME" ;;
	*) kept="the state directory $CI_STATE" ;;
	esac
	if user_systemd; then
		log "service: stopping $GATEWAY_UNIT"
		svc_systemctl stop "$GATEWAY_UNIT" code-interpreter-state-volume.service 2>/dev/null || true
	fi
	remove_units
	if command -v podman >/dev/null; then
		ids=$(gateway_containers)
		if [[ -n $ids ]]; then
			log "gateway: removing its container"
			# shellcheck disable=SC2086 # one id per word
			svc_podman rm -f -t 10 $ids >/dev/null
		fi
		remove_workers
	fi
	if ((purge)); then
		log "purge: state volume and directory, config, images, binary"
		svc_podman volume rm -f "$STATE_VOLUME" >/dev/null 2>&1 || true
		svc_run rm -rf "$CI_STATE" "$CI_LIB_DIR"
		svc_run rm -f "$CI_CONFIG"
		svc_podman rmi -f "$GATEWAY_IMAGE" "$WORKER_IMAGE" >/dev/null 2>&1 || true
		if systemd_pid1 && [[ -e /var/lib/systemd/linger/$SVC_USER ]]; then
			log "purge: disabling linger for $SVC_USER"
			as_root loginctl disable-linger "$SVC_USER"
		fi
	fi
	if command -v podman >/dev/null; then
		left=$(gateway_containers && svc_podman ps -aq --filter "label=$WORKER_LABEL")
		[[ -z $left ]] || die "containers are left: ${left//$'\n'/ }"
	fi
	log "uninstalled: no gateway or worker container left$( ((purge)) || echo "; kept: $kept, $CI_CONFIG, images, binary")"
}

main "$@"
