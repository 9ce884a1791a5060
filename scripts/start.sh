#!/usr/bin/env bash
# start.sh — the one command that takes a fresh Debian 12 host to a running
# code-interpreter gateway: packages, service user, rootless Podman and its REST
# service, the worker image, the gateway binary and config, then the gateway.
# Every step is idempotent; a second run only checks and skips. Where systemd
# runs and scripts/install.sh installed the service, the gateway is started
# through it (`systemctl --user start code-interpreter`: supervised, logs in
# journald); elsewhere (containers, CI) as a detached background process.
#
# Usage: scripts/start.sh [--no-start] [--no-build] [--token-file FILE] [--profile full] [--gvisor]
#   --no-start  do everything except starting the gateway (used by tests)
#   --no-build  do not run cargo; install target/release/code-interpreter if it exists
#   --token-file FILE  the API token (first line of FILE, 16+ printable characters)
#   --profile full  also build the full worker image (LibreOffice, pandoc, ffmpeg,
#                   tesseract, Node.js); built anyway when config.toml's worker.image names it
#   --gvisor     also install gVisor (runsc) and start its workers' Podman service;
#                done anyway when config.toml says workers.runtime = "gvisor"
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

usage() { sed -n '11,18s/^# \{0,1\}//p' "$0"; }

# start_service: `systemctl --user start` of the installed unit (a restart
# when RESTART is 1: a new token), then wait for /health; the unit's log if not.
start_service() {
	local restart=$1
	if ((restart)); then
		log "service: restarting $GATEWAY_UNIT for the new token (sessions are kept)"
		svc_systemctl restart "$GATEWAY_UNIT"
	else
		log "service: starting $GATEWAY_UNIT (systemd user service of $SVC_USER)"
		svc_systemctl start "$GATEWAY_UNIT"
	fi
	if ! wait_for 60 unit_healthy; then
		warn "$GATEWAY_UNIT did not become healthy at $(service_url)/health within 60 s; its last log lines:"
		journalctl --no-pager -n 30 "_SYSTEMD_USER_UNIT=$GATEWAY_UNIT" >&2 2>/dev/null || true
		exit 1
	fi
	log "service: healthy at $(service_url)"
}

main() {
	local start=1 build=1 bin token_file="" full=0 new_token=0 gvisor=0
	while (($#)); do
		case $1 in
		--no-start) start=0 ;;
		--no-build) build=0 ;;
		--gvisor) gvisor=1 ;;
		--profile)
			[[ ${2:-} == full ]] || die "--profile takes \"full\" (the default profile is always built)"
			full=1
			shift
			;;
		--token-file)
			(($# > 1)) || die "--token-file needs a file"
			token_file=$2
			shift
			;;
		-h | --help) usage && return 0 ;;
		*) usage >&2 && die "unknown option $1" ;;
		esac
		shift
	done

	ensure_packages
	ensure_service_user
	ensure_podman_config
	ensure_podman_service
	if ((gvisor)) || wants_gvisor; then
		ensure_gvisor
	fi
	ensure_base_image
	ensure_worker_image
	if ((full)) || wants_full_profile; then
		ensure_full_image
	fi

	bin=$REPO/target/release/code-interpreter
	if ((build)); then
		if [[ -f $REPO/Cargo.toml ]]; then
			bin=$(build_gateway)
		else
			warn "no Cargo.toml in $REPO: gateway not built"
		fi
	fi
	if [[ -x $bin ]]; then
		install_files "$bin"
	elif ((start)); then
		die "no gateway binary at $bin"
	else
		warn "no gateway binary at $bin: not installed"
	fi

	if [[ -n $token_file ]] && install_token "$token_file"; then
		new_token=1
	fi

	if systemd_unit_installed; then
		[[ $(installed_unit_kind) == quadlet && -n $token_file ]] &&
			warn "--token-file: the Quadlet unit keeps its token in the volume $STATE_VOLUME, not in $CI_STATE"
		if ((start)); then
			# A running gateway holds the old token: restart it (sessions are kept).
			if ((new_token)) && svc_systemctl is-active --quiet "$GATEWAY_UNIT"; then
				start_service 1
			else
				start_service 0
			fi
			print_access "$(service_url)" "$(service_token)"
		else
			log "done (--no-start): podman service and worker image ready; $GATEWAY_UNIT not started"
		fi
		return 0
	fi
	if ((new_token)) && gateway_pid >/dev/null; then
		# A running gateway holds the old token: restart it (sessions are kept).
		stop_gateway
	fi

	if ((start)); then
		start_gateway
		print_access
	else
		log "done (--no-start): podman service and worker image ready; gateway not started"
	fi
}

main "$@"
