# shellcheck shell=bash
# shellcheck disable=SC2034 # constants for the scripts that source this file
# lib-quadlet.sh — steps of the systemd deployment, sourced after scripts/lib.sh
# by scripts/install.sh, scripts/uninstall.sh, the other scripts and the tests.
# Two kinds of unit, one name (code-interpreter.service of the service user):
#   quadlet  Podman >= 4.4: the gateway as a rootless container (quadlet/);
#   plain    older Podman (Debian 12's 4.3): the gateway binary itself, run by
#            the plain unit systemd/code-interpreter.service.
# Like lib.sh: each step prints one line and skips itself when already done.

GATEWAY_IMAGE=localhost/code-interpreter-gateway:latest
GATEWAY_CONTAINER=code-interpreter
GATEWAY_UNIT=code-interpreter.service
GATEWAY_LABEL=io.code-interpreter.gateway
STATE_VOLUME=systemd-code-interpreter-state
PODMAN_MIN_VERSION=4.4.0
# Where the unit publishes the API (PublishPort in quadlet/code-interpreter.container).
UNIT_URL=http://127.0.0.1:3874

# The plain unit (for Podman without Quadlet), in the repo and installed.
PLAIN_UNIT=$REPO/systemd/code-interpreter.service

quadlet_dir() { echo "$SVC_HOME/.config/containers/systemd"; }
plain_unit_path() { echo "$(user_unit_dir)/$GATEWAY_UNIT"; }


# version_ge A B: version A >= version B.
version_ge() { printf '%s\n' "$2" "$1" | sort -V -C; }

podman_version() { podman --version 2>/dev/null | awk '{ print $NF }'; }

require_systemd() {
	systemd_pid1 ||
		die "systemd is not running as PID 1 here: the systemd deployment needs it (use scripts/start.sh instead)"
}

# has_quadlet: the installed Podman has Quadlet (>= 4.4).
has_quadlet() { version_ge "$(podman_version)" "$PODMAN_MIN_VERSION"; }

# require_systemd_host: systemd and Podman; says which kind of unit this host gets.
require_systemd_host() {
	local version
	require_systemd
	command -v podman >/dev/null || die "podman is not installed"
	version=$(podman_version)
	if has_quadlet; then
		log "host: systemd, Podman $version: Quadlet units"
	else
		log "host: systemd, Podman $version (no Quadlet before $PODMAN_MIN_VERSION): the plain unit"
	fi
}

# installed_unit_kind: quadlet, plain or none (what install.sh installed here).
installed_unit_kind() {
	if [[ -f $(quadlet_dir)/code-interpreter.container ]]; then
		echo quadlet
	elif [[ -f $(plain_unit_path) ]]; then
		echo plain
	else
		echo none
	fi
}

# systemd_unit_installed: a running user manager and either kind of unit
# (scripts/start.sh, stop.sh and restart.sh then go through systemctl).
systemd_unit_installed() { user_systemd && [[ $(installed_unit_kind) != none ]]; }

# service_url: the API's base URL for local checks: the Quadlet unit publishes
# UNIT_URL; the plain unit listens where the config says.
service_url() {
	if [[ $(installed_unit_kind) == plain ]]; then gateway_url; else echo "$UNIT_URL"; fi
}

# service_token: the API token, from the gateway's container (Quadlet), else
# from the state directory the binary uses (plain unit, scripts/start.sh).
service_token() {
	if svc_exists && svc_podman container exists "$GATEWAY_CONTAINER" 2>/dev/null; then
		svc_podman exec "$GATEWAY_CONTAINER" code-interpreter token
		return
	fi
	if ! svc_exists || [[ ! -x $CI_BIN ]]; then
		die "gateway not installed: run scripts/install.sh or scripts/start.sh first"
	fi
	svc_run "$CI_BIN" token --config "$CI_CONFIG"
}

# Lingering gives the user a systemd manager (started at boot) and a D-Bus.
ensure_user_manager() {
	if ! wait_for 15 user_systemd; then
		die "no systemd user manager with a D-Bus for $SVC_USER after 15 s (linger enabled? dbus-user-session installed?)"
	fi
	log "service user: systemd user manager running"
}

# Rootless containers get cgroup limits only from controllers that systemd
# delegates to the user; say so loudly when it does not.
warn_undelegated_controllers() {
	local have missing=() c
	if ! cgroup_v2; then
		warn "cgroup v1: memory, pids and cpu limits of rootless containers are NOT enforced on this host (cgroup v2 needed)"
		return 0
	fi
	have=" $(user_delegated_controllers) "
	for c in memory pids cpu; do
		[[ $have == *" $c "* ]] || missing+=("$c")
	done
	if ((${#missing[@]} == 0)); then
		log "host: cgroup v2, controllers delegated to $SVC_USER:$have"
		return 0
	fi
	warn "cgroup v2 controllers NOT delegated to $SVC_USER: ${missing[*]}. Container limits would not be enforced.
  To delegate them (as root): mkdir -p /etc/systemd/system/user@.service.d && \\
    printf '[Service]\\nDelegate=cpu cpuset io memory pids\\n' >/etc/systemd/system/user@.service.d/delegate.conf && \\
    systemctl daemon-reload && systemctl restart user@$SVC_UID.service"
}

# The scripts/start.sh gateway and the unit would share port and workers.
stop_script_gateway() {
	if gateway_pid >/dev/null; then
		warn "the gateway started by scripts/start.sh is running: stopping it (the systemd unit replaces it)"
		stop_gateway
	fi
}

# sha256 of what the gateway image is made of: its Containerfile, the binary
# and the base image.
gateway_inputs_hash() {
	{
		sha256sum <"$REPO/containerfiles/gateway.Containerfile"
		sha256sum <"$1"
		svc_podman image inspect --format '{{.Id}}' "$BASE_IMAGE"
	} | sha256sum | cut -c1-64
}

# ensure_gateway_image BINARY: the gateway image from a binary built on the
# host, offline (COPY onto the base image); skipped when its inputs are unchanged.
ensure_gateway_image() {
	local bin=$1 hash tmp
	[[ -x $bin ]] || die "gateway binary $bin does not exist"
	hash=$(gateway_inputs_hash "$bin")
	if [[ $(image_inputs_label "$GATEWAY_IMAGE") == "$hash" ]]; then
		log "gateway image: $GATEWAY_IMAGE up to date (inputs ${hash:0:12})"
		return 0
	fi
	log "gateway image: building $GATEWAY_IMAGE from $bin (inputs ${hash:0:12})"
	# The context is a directory of the service user's (the repo may be unreadable to it).
	tmp=$(svc_run mktemp -d /var/tmp/code-interpreter-gateway.XXXXXX)
	svc_write "$tmp/gateway.Containerfile" <"$REPO/containerfiles/gateway.Containerfile"
	svc_write "$tmp/code-interpreter" <"$bin"
	svc_run chmod 0755 "$tmp/code-interpreter"
	build_image "gateway image" "$GATEWAY_IMAGE" "$tmp" gateway-build.log \
		--format docker -f "$tmp/gateway.Containerfile" --label "$INPUTS_LABEL=$hash" "$tmp"
}

# ensure_gateway_image_from_source: the same image compiled inside a Rust
# image (the Containerfile's "from-source" target); needs a reachable registry.
ensure_gateway_image_from_source() {
	local tmp rc=0
	log "gateway image: building $GATEWAY_IMAGE from source in a Rust container (needs a registry)"
	tmp=$(svc_run mktemp -d /var/tmp/code-interpreter-gateway.XXXXXX)
	tar -C "$REPO" -c Cargo.toml Cargo.lock src containerfiles/gateway.Containerfile | svc_run tar -C "$tmp" -x
	svc_podman build --format docker --target from-source \
		-f "$tmp/containerfiles/gateway.Containerfile" -t "$GATEWAY_IMAGE" "$tmp" || rc=$?
	svc_run rm -rf "$tmp"
	((rc == 0)) || die "gateway image build from source failed"
	log "gateway image: built from source"
}

# The repo's config.toml, unless the service user already has one (theirs wins).
install_config() {
	if [[ -f $CI_CONFIG ]]; then
		log "config: keeping $CI_CONFIG"
	else
		install_svc_file "$REPO/config.toml" "$CI_CONFIG" 0600
	fi
}

# The units of quadlet/ into the user's Quadlet directory (the plain unit
# out of the way), then a daemon-reload (which runs the generator); fails if
# the generator made no service.
install_units() {
	local unit dir
	dir=$(quadlet_dir)
	remove_plain_unit || true
	svc_run mkdir -p "$dir"
	for unit in "$REPO"/quadlet/*.container "$REPO"/quadlet/*.volume; do
		install_svc_file "$unit" "$dir/${unit##*/}" 0644
	done
	svc_systemctl daemon-reload
	svc_systemctl cat "$GATEWAY_UNIT" >/dev/null 2>&1 ||
		die "systemd has no $GATEWAY_UNIT after daemon-reload: Quadlet rejected the units (see: /usr/libexec/podman/quadlet -dryrun -user)"
	log "units: installed in $dir, $GATEWAY_UNIT generated"
}

# install_plain_unit: the plain unit into the user's unit directory (Quadlet
# units out of the way), daemon-reload, and enabled (with linger it starts at
# boot, as a Quadlet unit with WantedBy= does).
install_plain_unit() {
	local dst
	dst=$(plain_unit_path)
	remove_quadlet_units || true
	svc_run mkdir -p "${dst%/*}"
	install_svc_file "$PLAIN_UNIT" "$dst" 0644
	svc_systemctl daemon-reload
	if [[ $(svc_systemctl is-enabled "$GATEWAY_UNIT" 2>/dev/null) != enabled ]]; then
		svc_systemctl enable "$GATEWAY_UNIT" >/dev/null 2>&1 ||
			die "systemctl --user enable $GATEWAY_UNIT failed (see: systemctl --user -M $SVC_USER@ status $GATEWAY_UNIT)"
	fi
	log "units: $dst installed and enabled"
}

# remove_quadlet_units: the Quadlet units of quadlet/, if installed (no reload).
# Returns 1 when there was none.
remove_quadlet_units() {
	local unit dir removed=1
	dir=$(quadlet_dir)
	for unit in "$REPO"/quadlet/*.container "$REPO"/quadlet/*.volume; do
		if [[ -f $dir/${unit##*/} ]]; then
			svc_run rm -f "$dir/${unit##*/}"
			removed=0
		fi
	done
	return "$removed"
}

# remove_plain_unit: the plain unit, stopped (a Quadlet unit replacing it
# needs its port), disabled and removed, if installed (no reload). Returns 1
# when there was none.
remove_plain_unit() {
	local dst
	dst=$(plain_unit_path)
	[[ -f $dst ]] || return 1
	if user_systemd; then
		svc_systemctl stop "$GATEWAY_UNIT" 2>/dev/null || true
		svc_systemctl disable "$GATEWAY_UNIT" >/dev/null 2>&1 || true
	fi
	svc_run rm -f "$dst"
}

unit_healthy() { curl -fsS --max-time 2 "$(service_url)/health" >/dev/null 2>&1; }

gateway_containers() { svc_podman ps -aq --filter "label=$GATEWAY_LABEL"; }

# --- gVisor workers under systemd (workers.runtime = "gvisor") -----------------
# The gVisor Podman service as the units systemd/code-interpreter-podman-gvisor.*
# (socket-activated, like the user's podman.socket), a drop-in naming the runsc
# wrapper, and a drop-in making the gateway's unit require its socket. Both
# kinds of gateway unit find the socket at the same place: the plain unit at
# $XDG_RUNTIME_DIR/podman/podman-gvisor.sock, the Quadlet container (which
# mounts %t/podman) at /run/podman/podman-gvisor.sock.

gateway_gvisor_dropin() { echo "$(user_unit_dir)/$GATEWAY_UNIT.d/gvisor.conf"; }

# install_gvisor_units: runsc and its wrapper, the units and drop-ins, the
# socket enabled and listening (a script-started gVisor service stopped first:
# it listens on the same path). Then a daemon-reload.
install_gvisor_units() {
	local dir
	dir=$(user_unit_dir)
	apt_ensure "gVisor" runsc
	ensure_gvisor_wrapper
	stop_pid "$PODMAN_GVISOR_PIDFILE" /usr/bin/podman "gVisor podman service (started by scripts/start.sh)" || true
	svc_run mkdir -p "$dir/$GVISOR_SERVICE_UNIT.d" "$dir/$GATEWAY_UNIT.d"
	install_svc_file "$REPO/systemd/$GVISOR_SOCKET_UNIT" "$dir/$GVISOR_SOCKET_UNIT" 0644
	install_svc_file "$REPO/systemd/$GVISOR_SERVICE_UNIT" "$dir/$GVISOR_SERVICE_UNIT" 0644
	svc_write_if_changed "$dir/$GVISOR_SERVICE_UNIT.d/runtime.conf" "$(printf '%s\n' \
		"# Written by scripts/install.sh: the runsc wrapper of this host's gVisor platform." \
		'[Service]' "Environment=CODE_INTERPRETER_RUNSC_WRAPPER=$GVISOR_WRAPPER")" || true
	svc_write_if_changed "$(gateway_gvisor_dropin)" "$(printf '%s\n' \
		"# Written by scripts/install.sh: workers.runtime = \"gvisor\"; the gateway creates" \
		"# its workers through the gVisor Podman service's socket." \
		'[Unit]' "Requires=$GVISOR_SOCKET_UNIT" "After=$GVISOR_SOCKET_UNIT $GVISOR_SERVICE_UNIT")" || true
	svc_systemctl daemon-reload
	if [[ $(svc_systemctl is-enabled "$GVISOR_SOCKET_UNIT" 2>/dev/null) != enabled ]]; then
		svc_systemctl enable "$GVISOR_SOCKET_UNIT" >/dev/null 2>&1 ||
			die "systemctl --user enable $GVISOR_SOCKET_UNIT failed"
	fi
	# Started, not restarted: the gateway's unit requires the socket, and a
	# restart of the socket would restart the gateway too (a changed wrapper
	# already restarted the service behind it: ensure_gvisor_wrapper).
	start_gvisor_service
	log "units: gVisor Podman service ($GVISOR_SOCKET_UNIT, platform $GVISOR_PLATFORM) installed and listening"
}

# remove_gvisor_units: the units and drop-ins, if installed (stopped and
# disabled first; no reload). Returns 1 when there was none.
remove_gvisor_units() {
	local dir
	dir=$(user_unit_dir)
	[[ -f $dir/$GVISOR_SOCKET_UNIT || -f $(gateway_gvisor_dropin) ]] || return 1
	if user_systemd; then
		svc_systemctl disable --now "$GVISOR_SOCKET_UNIT" >/dev/null 2>&1 || true
		svc_systemctl stop "$GVISOR_SERVICE_UNIT" 2>/dev/null || true
	fi
	svc_run rm -rf "$dir/$GVISOR_SOCKET_UNIT" "$dir/$GVISOR_SERVICE_UNIT" "$dir/$GVISOR_SERVICE_UNIT.d" \
		"$(gateway_gvisor_dropin)"
	svc_run rmdir "$dir/$GATEWAY_UNIT.d" 2>/dev/null || true
	log "units: gVisor Podman service removed"
}
