#!/usr/bin/env bash
# restart_podman.sh — restarts the service user's Podman REST service, as a
# socket-activated service restarting would: stop it (by the pid file that
# scripts/start.sh wrote), wait DOWN_SECONDS, start it again. Used by the
# chaos tests; does nothing (exit 3) when systemd manages the service.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
svc_resolve
if user_systemd; then
	echo "podman is managed by systemd here: not restarting it" >&2
	exit 3
fi
stop_pid "$PODMAN_PIDFILE" /usr/bin/podman "podman service"
sleep "${1:-2}"
ensure_podman_service
