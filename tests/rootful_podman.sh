#!/usr/bin/env bash
# rootful_podman.sh — a private rootful Podman service for the limits tests.
#
# On hosts where rootless Podman cannot enforce cgroup limits (cgroup v1, or v2
# without delegation), rootful Podman can. The limits tests run once against
# it so both enforcement paths are proven. Everything here is private to the
# tests: its own containers.conf, storage root and socket under
# $ROOTFUL_DIR, so the machine's own root Podman setup is untouched.
#
# Usage (as root): rootful_podman.sh start | stop | env
#   start  configure, start the service, copy the worker image into it (cached)
#   stop   stop the service (by its pid) and remove its containers
#   env    print the exports the integration tests read
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROOTFUL_DIR=/run/code-interpreter-rootful
ROOTFUL_STORAGE=/var/lib/code-interpreter-rootful/storage
ROOTFUL_SOCK=$ROOTFUL_DIR/podman.sock
ROOTFUL_PIDFILE=$ROOTFUL_DIR/podman.pid
export CONTAINERS_CONF=$ROOTFUL_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$ROOTFUL_DIR/storage.conf

rootful_ping() { curl -fsS --max-time 2 --unix-socket "$ROOTFUL_SOCK" http://d/v4.0.0/libpod/_ping >/dev/null 2>&1; }

write_config() {
	mkdir -p "$ROOTFUL_DIR" "$ROOTFUL_STORAGE"
	chmod 0700 "$ROOTFUL_DIR"
	cat >"$CONTAINERS_STORAGE_CONF" <<CONF
# Private storage of the rootful limits tests (tests/rootful_podman.sh).
[storage]
driver = "overlay"
graphroot = "$ROOTFUL_STORAGE"
runroot = "$ROOTFUL_DIR/storage"
CONF
	local engine=""
	cgroup_v2 || engine+=$'runtime = "runc"\n'
	[[ -d /run/systemd/system ]] || engine+=$'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
	cat >"$CONTAINERS_CONF" <<CONF
# Private configuration of the rootful limits tests (tests/rootful_podman.sh).
[containers]
default_ulimits = ["nofile=1024:4096", "nproc=4096:4096"]
[engine]
$engine
CONF
}

copy_worker_image() {
	local want have
	want=$(svc_podman image inspect --format "{{index .Labels \"$INPUTS_LABEL\"}}" "$WORKER_IMAGE")
	have=$(podman image inspect --format "{{index .Labels \"$INPUTS_LABEL\"}}" "$WORKER_IMAGE" 2>/dev/null || true)
	if [[ -n $want && $want == "$have" ]]; then
		log "rootful podman: worker image up to date"
		return 0
	fi
	log "rootful podman: copying $WORKER_IMAGE from $SVC_USER's storage"
	svc_podman save "$WORKER_IMAGE" | podman load -q >/dev/null
}

start() {
	is_root || die "rootful_podman.sh must run as root"
	svc_resolve
	write_config
	if ! rootful_ping; then
		log "rootful podman: starting a private service on $ROOTFUL_SOCK"
		# From its own directory: conmon writes a file named "oom" into its
		# working directory when a container is OOM-killed (the cgroup test
		# does that on purpose), which from the checkout left a stray ./oom.
		(cd "$ROOTFUL_DIR" && setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$ROOTFUL_PIDFILE" \
			podman system service --time=0 "unix://$ROOTFUL_SOCK" \
			</dev/null >>"$ROOTFUL_DIR/service.log" 2>&1 &)
		wait_for 15 rootful_ping || die "rootful podman service did not answer; see $ROOTFUL_DIR/service.log"
	fi
	copy_worker_image
}

stop() {
	[[ -f $ROOTFUL_PIDFILE ]] || return 0
	podman ps -aq --filter "label=$WORKER_LABEL" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
	stop_pid "$ROOTFUL_PIDFILE" /usr/bin/podman "rootful podman service" || true
}

case ${1:-} in
start) start ;;
stop) stop ;;
env)
	printf 'export CI_TEST_ROOTFUL_SOCKET=%q CI_TEST_ROOTFUL_DIR=%q CONTAINERS_CONF_ROOTFUL=%q CONTAINERS_STORAGE_CONF_ROOTFUL=%q\n' \
		"$ROOTFUL_SOCK" "$ROOTFUL_DIR" "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF"
	;;
*) die "usage: $0 start|stop|env" ;;
esac
