#!/usr/bin/env bash
# install.sh — deploys the gateway as a systemd user service of the service
# user `code-interpreter` (or $CODE_INTERPRETER_USER), managed with
# `systemctl --user`, started at boot. With Podman >= 4.4 the gateway is a
# rootless container run by Quadlet units (quadlet/); with an older Podman
# (Debian 12's 4.3 has no Quadlet) the gateway binary runs under the plain
# unit systemd/code-interpreter.service. Run as root (it creates the service
# user) or as the user that will run the service. Idempotent: a second run
# only checks and skips.
#
# Steps: packages (Debian family, as root), host checks (systemd, Podman
# version, cgroup delegation), service user with linger, rootless Podman
# configuration and the user's podman.socket, the worker image, the gateway
# (Quadlet: its image; plain unit: the binary in ~/.local/lib/code-interpreter),
# config, unit(s), `systemctl --user daemon-reload`; when the config says
# workers.runtime = "gvisor", also runsc and the units of its Podman service
# (systemd/code-interpreter-podman-gvisor.*). It does not start the
# service unless --start is given; it prints the commands to do so.
#
# Usage: scripts/install.sh [--binary PATH | --build-in-container] [--start]
#   --binary PATH           install this gateway binary (default:
#                           `cargo build --release --no-default-features` here)
#   --build-in-container    compile the gateway in a Rust container image
#                           instead (Quadlet only; needs a reachable registry)
#   --start                 start the service and wait until it is healthy
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

usage() { sed -n '18,23s/^# \{0,1\}//p' "$0"; }

# Commands for an administrator: root reaches the user's manager with -M.
print_next_steps() {
	local sysctl token logs
	if is_root; then
		sysctl="systemctl --user -M $SVC_USER@"
		token="$REPO/scripts/token.sh"
		# (journalctl --user -u only reads the caller's own journal)
		logs="journalctl _SYSTEMD_USER_UNIT=$GATEWAY_UNIT -f"
	else
		sysctl="systemctl --user"
		if [[ $(installed_unit_kind) == quadlet ]]; then
			token="podman exec $GATEWAY_CONTAINER code-interpreter token"
		else
			token="$CI_BIN token"
		fi
		logs="journalctl --user -u code-interpreter -f"
	fi
	cat <<EOM

code-interpreter is installed as the systemd user service $GATEWAY_UNIT of $SVC_USER.
  start:   $sysctl start code-interpreter
  status:  $sysctl status code-interpreter
  logs:    $logs
  token:   $token
  config:  $CI_CONFIG (then: $sysctl restart code-interpreter)
  URL:     $(service_url)
It starts by itself at boot (linger is enabled for $SVC_USER).
EOM
}

main() {
	local bin="" from_source=0 start=0
	while (($#)); do
		case $1 in
		--binary)
			(($# >= 2)) || die "--binary needs a path"
			bin=$2
			shift
			;;
		--build-in-container) from_source=1 ;;
		--start) start=1 ;;
		-h | --help) usage && return 0 ;;
		*) usage >&2 && die "unknown option $1" ;;
		esac
		shift
	done

	require_systemd
	if is_root && command -v dpkg-query >/dev/null; then
		ensure_packages
	fi
	require_systemd_host
	if ! has_quadlet && ((from_source)); then
		die "--build-in-container builds the Quadlet unit's image: Podman $(podman_version) has no Quadlet (give --binary PATH or build with cargo)"
	fi
	ensure_service_user
	ensure_user_manager
	ensure_podman_config
	ensure_podman_service
	warn_undelegated_controllers
	stop_script_gateway

	ensure_base_image
	ensure_worker_image
	if ((from_source)); then
		ensure_gateway_image_from_source
	else
		[[ -n $bin ]] || bin=$(build_gateway)
		[[ -x $bin ]] || die "gateway binary $bin does not exist"
		if has_quadlet; then
			ensure_gateway_image "$bin"
		else
			install_svc_file "$bin" "$CI_BIN" 0755
		fi
	fi

	install_config
	if has_quadlet; then
		install_units
	else
		install_plain_unit
	fi
	if wants_gvisor; then
		install_gvisor_units
	elif remove_gvisor_units; then
		svc_systemctl daemon-reload
	fi
	if ((start)); then
		log "service: starting $GATEWAY_UNIT"
		svc_systemctl start "$GATEWAY_UNIT"
		wait_for 60 unit_healthy || die "$GATEWAY_UNIT did not become healthy within 60 s (see its log)"
		log "service: healthy at $(service_url)"
	fi
	print_next_steps
}

main "$@"
