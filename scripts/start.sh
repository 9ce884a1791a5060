#!/usr/bin/env bash
# start.sh — the one command that takes a fresh Debian 12 host to a running
# code-interpreter gateway: packages, service user, rootless Podman and its REST
# service, the worker image, the gateway binary and config, then the gateway.
# Every step is idempotent; a second run only checks and skips.
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

usage() { sed -n '8,15s/^# \{0,1\}//p' "$0"; }

main() {
	local start=1 build=1 bin token_file="" full=0 gvisor=0
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

	if [[ -n $token_file ]] && install_token "$token_file" && gateway_pid >/dev/null; then
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
