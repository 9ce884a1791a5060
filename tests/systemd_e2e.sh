#!/usr/bin/env bash
# systemd_e2e.sh — the README's "Deploy on a server" under real systemd, in a
# Debian "machine" (systemd as PID 1) in a rootful Podman container on this
# host, one per supported kind of unit:
#   trixie    systemd 257, Podman 5.4: the Quadlet units (quadlet/);
#   bookworm  systemd 252, Podman 4.3 (no Quadlet): the plain unit
#             (systemd/code-interpreter.service).
# In the machine, as root: scripts/install.sh; systemctl --user -M
# code-interpreter@ start code-interpreter; a stateful /execute pair over
# curl; the token through scripts/token.sh; `systemctl --user restart` (the
# variable survives: the new gateway re-adopts the workers); `systemctl
# --user stop` ends "inactive" with no worker left; a reboot (restart of the
# machine) brings the service back by itself; the gateway's log in journald;
# scripts/uninstall.sh leaves no container. Quadlet also: the token through
# `podman exec`, the image's health check, the read-only config. Plain unit
# also: `kill -9` of the gateway (systemd restarts it, the session survives),
# and scripts/stop.sh and scripts/start.sh going through systemd.
#
# Needs root, the host prepared by scripts/start.sh --no-start (worker image)
# and target/release/code-interpreter. The machine has no network but a veth
# pair with a default route (Podman's pasta needs one); the images are loaded
# from archives of the host's, so nothing is downloaded after the first run,
# which debootstraps the suite (~50-90 s, cached in $BASE_CACHE_DIR by
# scripts/dev/machine-rootfs.sh).
#
# Skipped when its inputs (units, Containerfiles, scripts, sources, binary,
# worker image, this file) are those of its last pass on this machine for
# that suite; set CODE_INTERPRETER_E2E_FORCE=1 to run anyway
# (CODE_INTERPRETER_E2E_KEEP=1 keeps the machine for debugging). Everything it
# creates is removed on exit, failure included; the cached rootfs tarball, its
# imported image and the image archives stay (caches).
#
# Usage: tests/systemd_e2e.sh trixie|bookworm      (host side, as root)
#        tests/systemd_e2e.sh --inside PHASE        (run by the host side in the machine)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=scripts/lib-quadlet.sh
source "$REPO/scripts/lib-quadlet.sh"

ARCHIVES=$BASE_CACHE_DIR/e2e-images
# The service user's home in the machine: on a volume, so that rootless Podman
# there has a real filesystem (not overlay) under its storage.
MACHINE_HOME=/var/lib/code-interpreter
INPUT_PATHS=(quadlet systemd containerfiles scripts src tests/systemd_e2e.sh tests/checks.sh config.toml Cargo.toml Cargo.lock)

# shellcheck source=tests/checks.sh
source "$REPO/tests/checks.sh"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# =============================================================================
# Inside the machine (as root, PID 1 systemd, Podman 5); REPO is /src there.

SYSCTL=(systemctl --user -M "$SVC_USER@")

execute() { # execute USER CODE — prints the response body
	curl -sS --max-time 60 -X POST "$UNIT_URL/execute" \
		-H "X-Auth-Token: $(cat /root/e2e-token)" -H 'Content-Type: application/json' \
		-d "$(printf '{"user_uuid": "%s", "code": "%s"}' "$1" "$2")"
}

result_text_is() { # result_text_is EXPECTED JSON (no python in the machine)
	[[ $2 == *"\"result_text\":\"${1//$'\n'/\\n}\""* ]]
}

unit_state_is() { [[ $("${SYSCTL[@]}" is-active "$GATEWAY_UNIT" 2>/dev/null) == "$1" ]]; }
no_worker_container() { [[ -z $(svc_podman ps -aq --filter "label=$WORKER_LABEL") ]]; }
no_gateway_container() { [[ -z $(gateway_containers) ]]; }
no_container_at_all() { [[ -z $(svc_podman ps -aq) ]]; }
healthy_within() { wait_for "$1" unit_healthy; }

# The service user, its linger and the host's images, before install.sh (which
# then finds the worker image up to date and builds only the gateway image).
inside_prepare() {
	local t0 id name
	t0=$(date +%s.%N)
	# Ids unlike the host's own service user's (the machine has no user namespace).
	useradd --system --user-group --uid 888 --home-dir "$MACHINE_HOME" --shell /usr/sbin/nologin "$SVC_USER"
	svc_resolve
	chown "$SVC_UID:$SVC_GID" "$SVC_HOME"
	chmod 0700 "$SVC_HOME"
	usermod --add-subuids 400000-465535 --add-subgids 400000-465535 "$SVC_USER"
	loginctl enable-linger "$SVC_USER"
	wait_for 20 user_systemd || die "no user manager for $SVC_USER"
	# Podman's storage driver is fixed by its first command: the loads below
	# must find install.sh's storage.conf (Podman 4.3 would pick vfs).
	ensure_service_dirs
	ensure_podman_config >/dev/null
	while read -r id name; do
		svc_podman load -q -i "/e2e-images/$id.tar" >/dev/null
		svc_podman tag "$id" "$name"
	done </e2e-images/list
	log "prepare: user, linger and images in $(elapsed "$t0") s"
}

inside_install() {
	local t0
	t0=$(date +%s.%N)
	/src/scripts/install.sh --binary /src/target/release/code-interpreter
	log "install.sh: $(elapsed "$t0") s"
}

# The gateway's pid as systemd knows it (the plain unit's main process).
main_pid() { "${SYSCTL[@]}" show -p MainPID --value "$GATEWAY_UNIT"; }
restarts() { "${SYSCTL[@]}" show -p NRestarts --value "$GATEWAY_UNIT"; }
main_pid_is_not() { local p; p=$(main_pid) && [[ $p != 0 && $p != "$1" ]]; }
# pid_runs_as PID USER EXE: the process runs EXE as USER.
pid_runs_as() {
	[[ $(ps -o user= -p "$1") == "$2" && $(readlink "/proc/$1/exe") == "$3" ]]
}
the_token() { /src/scripts/token.sh 2>/dev/null || echo none; }

# Quadlet only: the container's own view.
run_quadlet_checks() {
	local token
	token=$(svc_podman exec "$GATEWAY_CONTAINER" code-interpreter token || echo none)
	check "scripts/token.sh prints the container's token" test "$(cat /root/e2e-token)" = "$token"
	check "the image's health check passes" svc_podman healthcheck run "$GATEWAY_CONTAINER"
	check "the config is mounted read-only" svc_podman exec "$GATEWAY_CONTAINER" \
		sh -c '! touch /etc/code-interpreter/config.toml 2>/dev/null'
}

# Plain unit only: the binary under systemd, its restart after a crash.
run_plain_checks() {
	local pid t0
	pid=$(main_pid)
	check "the gateway runs as $SVC_USER from $CI_BIN" pid_runs_as "$pid" "$SVC_USER" "$CI_BIN"
	check "no script-started gateway (no pid file)" bash -c "! test -e $GATEWAY_PIDFILE"
	check "scripts/token.sh prints the state directory's token" \
		test "$(cat /root/e2e-token)" = "$(svc_run cat "$CI_STATE/token")"
	t0=$(date +%s.%N)
	kill -KILL "$pid"
	check "after kill -9 systemd starts a new gateway (Restart=on-failure)" wait_for 30 main_pid_is_not "$pid"
	check "healthy within 60 s of the kill" healthy_within 60
	log "kill -9 -> healthy: $(elapsed "$t0") s (RestartSec=5)"
	check "systemd counted one restart" test "$(restarts)" = 1
	check "after kill -9 the variable is still there (re-adoption)" \
		result_text_is $'100\n' "$(execute e2e 'print(a)')"
}

inside_run() {
	local t0 token kind
	kind=$(installed_unit_kind)
	t0=$(date +%s.%N)
	check "systemctl --user start code-interpreter" "${SYSCTL[@]}" start code-interpreter
	check "healthy within 60 s of start" healthy_within 60
	log "start -> healthy: $(elapsed "$t0") s"
	check "the unit is active" unit_state_is active
	check "the unit is enabled (starts at boot)" bash -c "[[ \$(${SYSCTL[*]} is-enabled $GATEWAY_UNIT) =~ ^(enabled|generated)\$ ]]"
	the_token >/root/e2e-token
	token=$(cat /root/e2e-token)
	check "the token is 64 hex digits" grep -Eq '^[0-9a-f]{64}$' /root/e2e-token

	execute e2e 'a = 100' >/dev/null
	check 'a = 100 then print(a) gives "100"' result_text_is $'100\n' "$(execute e2e 'print(a)')"
	if [[ $kind == quadlet ]]; then run_quadlet_checks; else run_plain_checks; fi

	t0=$(date +%s.%N)
	check "systemctl --user restart code-interpreter" "${SYSCTL[@]}" restart code-interpreter
	check "healthy within 60 s of restart" healthy_within 60
	log "restart -> healthy: $(elapsed "$t0") s"
	check "the token survives a restart" test "$(the_token)" = "$token"
	check "after restart the variable is still there (re-adoption)" \
		result_text_is $'100\n' "$(execute e2e 'print(a)')"

	t0=$(date +%s.%N)
	check "systemctl --user stop code-interpreter" "${SYSCTL[@]}" stop code-interpreter
	log "stop: $(elapsed "$t0") s"
	check "after stop the unit is inactive, not failed" unit_state_is inactive
	check "after stop no worker container is left" no_worker_container
	check "after stop no gateway container is left" no_gateway_container

	if [[ $kind == plain ]]; then
		t0=$(date +%s.%N)
		check "scripts/start.sh starts the installed unit" /src/scripts/start.sh --no-build
		log "start.sh: $(elapsed "$t0") s"
		check "after start.sh the unit is active" unit_state_is active
		check "start.sh detached no gateway of its own (no pid file)" bash -c "! test -e $GATEWAY_PIDFILE"
		check "after start.sh the unit's gateway is $CI_BIN" pid_runs_as "$(main_pid)" "$SVC_USER" "$CI_BIN"
		execute e2e 'c = 3' >/dev/null
		check "scripts/stop.sh stops the unit" /src/scripts/stop.sh
		check "after stop.sh the unit is inactive" unit_state_is inactive
		check "after stop.sh no worker container is left" no_worker_container
	fi

	check "started again before the reboot" "${SYSCTL[@]}" start code-interpreter
	check "healthy again" healthy_within 60
	execute e2e 'b = 1' >/dev/null
}

inside_after_reboot() {
	local t0
	t0=$(date +%s.%N)
	check "after the reboot the service is healthy by itself (90 s)" healthy_within 90
	log "user manager -> healthy after boot: $(elapsed "$t0") s (after is-system-running)"
	check "after the reboot the unit is active" unit_state_is active
	check "after the reboot the token is the same" test "$(the_token)" = "$(cat /root/e2e-token)"
	check "after the reboot print(6 * 7) gives 42" result_text_is $'42\n' "$(execute e2e 'print(6 * 7)')"
	check "the journal has the gateway's log (README's journalctl, as root)" \
		bash -c 'journalctl --no-pager _SYSTEMD_USER_UNIT=code-interpreter.service | grep -q "code-interpreter listening"'
}

status_json() { curl -sS --max-time 10 -H "X-Auth-Token: $(cat /root/e2e-token)" "$UNIT_URL/status"; }
gvisor_socket_listening() { [[ $("${SYSCTL[@]}" is-active "$GVISOR_SOCKET_UNIT" 2>/dev/null) == active ]]; }

# workers.runtime = "gvisor" in the installed config, install.sh again (runsc,
# its Podman service's units, the gateway's drop-in), a restart: new sessions
# run under gVisor, a restart re-adopts them, a stop removes them.
inside_gvisor() {
	local t0 status platform out
	sed -i 's/^runtime = "runc"$/runtime = "gvisor"/' "$CI_CONFIG"
	check "the installed config says runtime = \"gvisor\"" grep -q '^runtime = "gvisor"$' "$CI_CONFIG"
	t0=$(date +%s.%N)
	check "scripts/install.sh with workers.runtime = \"gvisor\"" \
		/src/scripts/install.sh --binary /src/target/release/code-interpreter
	log "install.sh (gVisor): $(elapsed "$t0") s"
	check "the gVisor Podman socket unit is enabled and listening" gvisor_socket_listening
	check "the gateway's unit requires it (drop-in)" \
		bash -c "${SYSCTL[*]} show -p Requires --value $GATEWAY_UNIT | grep -q $GVISOR_SOCKET_UNIT"
	t0=$(date +%s.%N)
	check "systemctl --user restart code-interpreter (gVisor)" "${SYSCTL[@]}" restart code-interpreter
	check "healthy within 60 s of the restart" healthy_within 60
	log "restart (gVisor) -> healthy: $(elapsed "$t0") s"
	status=$(status_json)
	platform=$(grep -o '"platform":"[a-z]*"' <<<"$status" || echo none)
	log "gVisor: /status isolation: $(grep -o '"isolation":{[^}]*}' <<<"$status" || echo none)"
	check "/status says the workers run under gVisor" grep -q '"runtime":"gvisor"' <<<"$status"
	check "/status names the gVisor platform" grep -Eq '"platform":"(systrap|kvm|ptrace)"' <<<"$status"
	check "/status says there is no nftables firewall (no network at all)" grep -q '"firewall":"none"' <<<"$status"
	t0=$(date +%s.%N)
	out=$(execute e2e 'print(b)')
	log "first gVisor answer: $(elapsed "$t0") s ($platform)"
	check "the runc session was not re-adopted: a fresh session (NameError)" grep -q NameError <<<"$out"
	check "print(1) under gVisor gives 1" result_text_is $'1\n' "$(execute gv 'print(1)')"
	out=$(execute gv 'import os; print(os.uname().release)')
	log "gVisor: the code sees kernel release $out"
	check "the kernel release the code sees is gVisor's, not the machine's ($(uname -r))" \
		bash -c '[[ $1 == *result_text* && $1 != *"$2"* ]]' sh "$out" "$(uname -r)"
	execute gv 'g = 7' >/dev/null
	check "systemctl --user restart code-interpreter (gVisor, again)" "${SYSCTL[@]}" restart code-interpreter
	check "healthy again" healthy_within 60
	check "after the restart the gVisor session is still there (re-adoption)" \
		result_text_is $'7\n' "$(execute gv 'print(g)')"
	check "systemctl --user stop code-interpreter (gVisor)" "${SYSCTL[@]}" stop code-interpreter
	check "after stop no gVisor worker container is left" no_worker_container
}

inside_uninstall() {
	check "scripts/uninstall.sh" /src/scripts/uninstall.sh
	check "after uninstall no container of $SVC_USER is left" no_container_at_all
	check "after uninstall the unit is gone" bash -c "! ${SYSCTL[*]} cat $GATEWAY_UNIT >/dev/null 2>&1"
	check "after uninstall the gVisor Podman units are gone" \
		bash -c "! ${SYSCTL[*]} cat $GVISOR_SOCKET_UNIT >/dev/null 2>&1"
}

# =============================================================================
# Host side.

# sha256 over everything the test depends on.
inputs_hash() {
	{
		(cd "$REPO" && git ls-files -z --cached --others --exclude-standard -- "${INPUT_PATHS[@]}" | xargs -0 sha256sum)
		sha256sum <"$REPO/target/release/code-interpreter"
		worker_inputs_hash
		machine_packages "$SUITE"
	} | sha256sum | cut -c1-64
}

# The machine's image: the suite's cached rootfs, imported into root's storage.
machine_image() {
	local tarball name
	tarball=$(machine_rootfs "$SUITE")
	name=localhost/ci-e2e-machine-$SUITE:$(basename "$tarball" .tar | sed 's/.*-//')
	if ! podman image exists "$name"; then
		log "machine: importing $tarball" >&2
		podman import -q "$tarball" "$name" >/dev/null
	fi
	echo "$name"
}

# The host's worker image if it was built from this tree, else one built from
# this tree as :e2e (the service user is shared by every checkout on a
# development machine; the layer cache makes this a few seconds). Prints its id.
e2e_worker_image() {
	local hash image=$WORKER_IMAGE
	hash=$(worker_inputs_hash)
	if [[ $(image_inputs_label "$image") != "$hash" ]]; then
		image=${WORKER_IMAGE%:*}:e2e
		if [[ $(image_inputs_label "$image") != "$hash" ]]; then
			log "images: the host's $WORKER_IMAGE is not built from this tree: building $image" >&2
			WORKER_IMAGE=$image build_worker_image "$hash" >&2
		fi
	fi
	svc_podman image inspect --format '{{.Id}}' "$image"
}

# Archives of the base and worker images (oci-archive keeps image ids, so the
# worker image's inputs hash still matches in the machine), cached by id, and
# the list "ID NAME" the machine loads them from.
image_archives() {
	local id name file
	as_root mkdir -p "$ARCHIVES"
	{
		echo "$(svc_podman image inspect --format '{{.Id}}' "$BASE_IMAGE") $BASE_IMAGE"
		echo "$(e2e_worker_image) $WORKER_IMAGE"
	} >"$WORK/list"
	while read -r id name; do
		if [[ ! -f $ARCHIVES/$id.tar ]]; then
			log "images: saving $name (${id:0:12})" >&2
			svc_podman save -q --format oci-archive -o "/var/tmp/e2e-$id.tar" "$id"
			mv "/var/tmp/e2e-$id.tar" "$ARCHIVES/$id.tar"
		fi
	done <"$WORK/list"
	cp "$WORK/list" "$ARCHIVES/list"
	# Archives of images no longer current.
	while read -r file; do
		grep -q "^${file%.tar} " "$WORK/list" || rm -f "$ARCHIVES/$file"
	done < <(cd "$ARCHIVES" && ls -- *.tar 2>/dev/null)
}

# PID 1 of the machine: cgroup v2 (the host is v1/hybrid; systemd and Podman 5
# want the unified hierarchy), shared mounts, a default route into a veth pair
# for pasta (this kernel has no dummy interfaces),
# no gettys or kernel modules, network-online.target reached at boot (else every rootless
# Podman 5 unit waits 90 s for it), then systemd.
write_init() {
	cat >"$WORK/init" <<-'EOF'
		#!/bin/sh
		set -e
		awk '$2 ~ "^/sys/fs/cgroup/" { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount "$m"; done
		umount /sys/fs/cgroup 2>/dev/null || true
		mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
		mount --make-rshared /
		ip link add e2e0 type veth peer name e2e1
		ip link set e2e1 up
		ip link set e2e0 up
		ip addr add 192.0.2.2/24 dev e2e0
		ip route add default via 192.0.2.1
		ln -sf /usr/lib/systemd/system/network-online.target /etc/systemd/system/multi-user.target.wants/
		for unit in console-getty.service getty@tty1.service systemd-firstboot.service systemd-modules-load.service; do
			ln -sf /dev/null "/etc/systemd/system/$unit"
		done
		exec /usr/lib/systemd/systemd
	EOF
	chmod 0755 "$WORK/init"
}

machine_exec() { podman exec "$MACHINE" "$@"; }

booted() {
	local state
	state=$(timeout 60 podman exec "$MACHINE" systemctl is-system-running --wait 2>/dev/null || true)
	[[ $state == running || $state == degraded ]]
}

wait_booted() {
	if ! wait_for 120 booted; then
		podman exec "$MACHINE" systemctl --failed --no-pager >&2 || true
		die "the machine did not boot within 120 s"
	fi
	if ! podman exec "$MACHINE" systemctl is-system-running >/dev/null 2>&1; then
		podman exec "$MACHINE" systemctl --failed --no-pager --plain --no-legend >&2 || true
	fi
}

# inside PHASE: runs this script's PHASE in the machine; its checks count here.
inside() {
	local out rc=0
	out=$(podman exec "$MACHINE" bash /src/tests/systemd_e2e.sh --inside "$1" 2>&1) || rc=$?
	printf '%s\n' "$out"
	passed=$((passed + $(grep -c '^ok - ' <<<"$out" || true)))
	failed=$((failed + $(grep -c '^FAILED - ' <<<"$out" || true)))
	((rc == 0)) || {
		failed=$((failed + 1))
		log "FAILED - phase $1 exited with $rc"
	}
}

cleanup() {
	if [[ ${CODE_INTERPRETER_E2E_KEEP:-0} == 1 ]]; then
		log "kept for debugging: machine $MACHINE (podman exec -it $MACHINE bash), $WORK"
		return 0
	fi
	if podman container exists "$MACHINE" 2>/dev/null; then
		podman rm -f -t 0 "$MACHINE" >/dev/null 2>&1 || true
	fi
	podman volume rm -f "$MACHINE-home" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}

host_main() {
	local hash image t0 t1
	is_root || die "run as root (it starts a rootful container)"
	t0=$(date +%s.%N)
	[[ -x $REPO/target/release/code-interpreter ]] || die "no target/release/code-interpreter: cargo build --release first"
	hash=$(inputs_hash)
	if [[ ${CODE_INTERPRETER_E2E_FORCE:-0} != 1 && -f $STAMP && $(<"$STAMP") == "$hash" ]]; then
		echo "systemd e2e ($SUITE): skipped, inputs unchanged since its last pass (${hash:0:12}; CODE_INTERPRETER_E2E_FORCE=1 runs it)"
		return 0
	fi
	WORK=$(mktemp -d "/var/tmp/ci-systemd-e2e-$SUITE.XXXXXX")
	trap cleanup EXIT
	image=$(machine_image)
	image_archives
	# The repo as committed or edited (tracked files), plus the binary.
	mkdir -p "$WORK/src/target/release"
	(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c --no-recursion) | tar -C "$WORK/src" -x
	cp "$REPO/target/release/code-interpreter" "$WORK/src/target/release/"
	write_init

	log "machine: starting $MACHINE ($SUITE: $(describe_suite))"
	# Podman's default rlimits may exceed this host's hard limits: ask for those.
	podman run -d --name "$MACHINE" --hostname e2e --privileged --systemd=always \
		--cgroupns=private --runtime runc --network none \
		--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
		-v "$MACHINE-home:$MACHINE_HOME" -v "$WORK/src:/src:ro" -v "$ARCHIVES:/e2e-images:ro" \
		-v "$WORK/init:/usr/local/sbin/e2e-init:ro" \
		"$image" /usr/local/sbin/e2e-init >/dev/null
	wait_booted
	log "machine: booted in $(elapsed "$t0") s since the test started"

	inside prepare
	inside install
	inside run
	t1=$(date +%s.%N)
	log "machine: rebooting (podman restart)"
	podman restart -t 60 "$MACHINE" >/dev/null
	wait_booted
	log "machine: rebooted in $(elapsed "$t1") s"
	inside after-reboot
	inside gvisor
	inside uninstall

	echo "systemd e2e ($SUITE): $passed passed, $failed failed in $(elapsed "$t0") s"
	((failed == 0)) || return 1
	echo "$hash" >"$STAMP"
}

# describe_suite: what the suite's machine has, and which unit it gets.
describe_suite() {
	case $SUITE in
	trixie) echo "systemd 257, Podman 5.4: Quadlet" ;;
	bookworm) echo "systemd 252, Podman 4.3: the plain unit" ;;
	esac
}

# shellcheck source=scripts/dev/machine-rootfs.sh
source "$REPO/scripts/dev/machine-rootfs.sh"
if [[ ${1:-} == --inside ]]; then
	case ${2:-} in
	prepare) inside_prepare ;;
	install) inside_install ;;
	run) inside_run ;;
	after-reboot) inside_after_reboot ;;
	gvisor) inside_gvisor ;;
	uninstall) inside_uninstall ;;
	*) die "unknown phase ${2:-}" ;;
	esac
	((failed == 0))
else
	SUITE=${1:-}
	[[ $SUITE == trixie || $SUITE == bookworm ]] || die "usage: $0 trixie|bookworm"
	STAMP=$BASE_CACHE_DIR/systemd-e2e-$SUITE.pass
	MACHINE=ci-systemd-e2e-$SUITE-$$
	host_main
fi
