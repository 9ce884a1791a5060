# shellcheck shell=bash
# shellcheck disable=SC2016 # sh -c '...' scripts here get their values as "$1"...
# lib.sh — shared paths and idempotent host-setup steps for code-interpreter.
#
# Sourced (never executed) by scripts/*.sh. The gateway runs as an unprivileged
# service user with rootless Podman; every step here brings a fresh Debian host
# one piece closer to that, prints one line, and skips itself when already done.
# Facts about the host (cgroup version, systemd, hard limits) are DETECTED, not
# assumed: CI is cgroup v1 without systemd, production is cgroup v2 with systemd.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKER_IMAGE=localhost/code-interpreter-worker:latest
# The "full" profile (containerfiles/worker-full.Containerfile), built on WORKER_IMAGE.
FULL_IMAGE=localhost/code-interpreter-worker-full:latest
BASE_IMAGE=docker.io/library/debian:bookworm-slim
INPUTS_LABEL=io.code-interpreter.inputs
WORKER_LABEL=io.code-interpreter.worker
BASE_CACHE_DIR=/var/cache/code-interpreter
SVC_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Extra VAR=value entries for svc_run's clean environment (callers may append).
[[ -v SVC_ENV ]] || SVC_ENV=()

log() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}
is_root() { [[ $(id -u) -eq 0 ]]; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds or time is up.
wait_for() {
	local tries=$(($1 * 10)) i
	shift
	for ((i = 0; i < tries; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# as_root CMD...: run CMD as root (sudo only when we are not root already).
as_root() {
	if is_root; then "$@"; else sudo "$@"; fi
}

# --- service user and the paths derived from it ------------------------------

if is_root; then
	SVC_USER=${CODE_INTERPRETER_USER:-code-interpreter}
else
	SVC_USER=$(id -un)
fi

# svc_resolve: (re)compute every path that depends on the service user. Called
# now and again by ensure_service_user once the user exists.
svc_resolve() {
	local entry
	entry=$(getent passwd "$SVC_USER" || true)
	if [[ -n $entry ]]; then
		SVC_UID=$(cut -d: -f3 <<<"$entry")
		SVC_GID=$(cut -d: -f4 <<<"$entry")
		SVC_HOME=$(cut -d: -f6 <<<"$entry")
	else
		SVC_UID=""
		SVC_GID=""
		SVC_HOME=/var/lib/code-interpreter
	fi
	SVC_RUNTIME=/run/user/${SVC_UID:-unknown}
	PODMAN_SOCK=$SVC_RUNTIME/podman/podman.sock
	CI_LIB_DIR=$SVC_HOME/.local/lib/code-interpreter
	CI_BIN=$CI_LIB_DIR/bin/code-interpreter
	CI_CONFIG=$SVC_HOME/.config/code-interpreter/config.toml
	CI_STATE=$SVC_HOME/.local/state/code-interpreter
	CI_RUN=$SVC_RUNTIME/code-interpreter
	CI_LOG=$CI_STATE/gateway.log
	PODMAN_PIDFILE=$CI_RUN/podman-service.pid
	# gVisor workers' Podman service (ensure_gvisor) and the runsc wrapper it runs.
	PODMAN_GVISOR_SOCK=$SVC_RUNTIME/podman/podman-gvisor.sock
	PODMAN_GVISOR_PIDFILE=$CI_RUN/podman-gvisor-service.pid
	# ... or, on a systemd host, its units (systemd/, installed by install.sh).
	GVISOR_SOCKET_UNIT=code-interpreter-podman-gvisor.socket
	GVISOR_SERVICE_UNIT=code-interpreter-podman-gvisor.service
	GVISOR_WRAPPER_DIR=$CI_LIB_DIR/libexec
	GATEWAY_PIDFILE=$CI_RUN/gateway.pid
}
svc_resolve

svc_exists() { [[ -n $SVC_UID ]]; }

# svc_run [VAR=value...] CMD...: run CMD as the service user, cwd /, with a
# clean environment (plus SVC_ENV and any leading VAR=value arguments, which
# env(1) takes as assignments). stdin, stdout and stderr pass through.
svc_run() {
	local env_args=(
		HOME="$SVC_HOME" USER="$SVC_USER" LOGNAME="$SVC_USER" PATH="$SVC_PATH"
		XDG_RUNTIME_DIR="$SVC_RUNTIME" XDG_CONFIG_HOME="$SVC_HOME/.config"
		XDG_DATA_HOME="$SVC_HOME/.local/share" XDG_STATE_HOME="$SVC_HOME/.local/state"
		LANG=C.UTF-8 "${SVC_ENV[@]}"
	)
	if [[ $(id -u) == "$SVC_UID" ]]; then
		(cd / && exec env -i "${env_args[@]}" "$@")
	else
		(cd / && exec runuser -u "$SVC_USER" -- env -i "${env_args[@]}" "$@")
	fi
}

svc_podman() { svc_run podman "$@"; }

# svc_write PATH: stdin into PATH, opened by the service user.
svc_write() { svc_run tee "$1" >/dev/null; }

# svc_write_if_changed PATH CONTENT [WHAT]: CONTENT to PATH as the service
# user unless PATH already holds it (logged as WHAT, default "install").
# Returns 1 when it was already there.
svc_write_if_changed() {
	local path=$1 content=$2 what=${3:-install}
	if [[ -f $path ]] && [[ $(<"$path") == "$content" ]]; then
		log "$what: $path up to date"
		return 1
	fi
	log "$what: writing $path"
	printf '%s\n' "$content" | svc_write "$path" || die "could not write $path"
}

# svc_systemctl ARGS...: systemctl --user of the service user's manager.
svc_systemctl() { svc_run systemctl --user "$@"; }

# The service user's own systemd units (the plain gateway unit, the gVisor
# Podman service's units and the drop-ins of scripts/install.sh).
user_unit_dir() { echo "$SVC_HOME/.config/systemd/user"; }

# svc_daemon PIDFILE LOGFILE CMD...: start CMD as the service user in its own
# session, detached from our stdio, appending to LOGFILE; PIDFILE gets the pid
# of CMD itself (the shell writes $$ and then execs CMD, so the pid stays).
svc_daemon() {
	local pidfile=$1 logfile=$2
	shift 2
	svc_run setsid sh -c 'echo $$ >"$1"; exec >>"$2" 2>&1 </dev/null; shift 2; exec "$@"' \
		sh "$pidfile" "$logfile" "$@" </dev/null >/dev/null 2>&1 &
}

# pid_alive PIDFILE EXE: print the pid in PIDFILE if that process is alive and
# runs EXE (checked through /proc/PID/exe, or argv[0] when exe is unreadable).
pid_alive() {
	local pidfile=$1 exe=$2 pid real argv0
	[[ -r $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] && [[ -d /proc/$pid ]] || return 1
	real=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
	real=${real% (deleted)}
	if [[ -z $real ]]; then
		argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1 || true)
		real=$argv0
	fi
	[[ $real == "$exe" ]] || return 1
	echo "$pid"
}

# proc_gone PID: the process has exited (a zombie counts as gone).
proc_gone() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	[[ ${stat:0:1} == Z ]]
}

# child_pids PID EXE: direct children of PID that run EXE. (Rootless podman,
# when it has to create its user namespace, forks the real service as a child
# and does not pass SIGTERM on: both must be signalled.)
child_pids() {
	local f stat ppid child
	for f in /proc/[0-9]*/stat; do
		stat=$(cat "$f" 2>/dev/null) || continue
		stat=${stat##*) }
		read -r _ ppid _ <<<"$stat"
		[[ $ppid == "$1" ]] || continue
		child=${f#/proc/}
		child=${child%/stat}
		[[ $(readlink "/proc/$child/exe" 2>/dev/null) == "$2" ]] && echo "$child"
	done
	return 0
}

# stop_pid PIDFILE EXE NAME: SIGTERM the verified pid (and its children that
# run EXE), wait up to 15 s, then SIGKILL those still running EXE. Removes the
# pid file. Quiet success if not running.
stop_pid() {
	local pidfile=$1 exe=$2 name=$3 pid pids p
	if ! pid=$(pid_alive "$pidfile" "$exe"); then
		log "$name: not running"
		rm -f "$pidfile"
		return 0
	fi
	mapfile -t pids < <(echo "$pid"; child_pids "$pid" "$exe")
	log "$name: stopping pid ${pids[*]}"
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for p in "${pids[@]}"; do
		wait_for 15 proc_gone "$p" && continue
		[[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$exe" ]] || continue
		warn "$name: pid $p ignored SIGTERM for 15 s, sending SIGKILL"
		kill -KILL "$p" 2>/dev/null || true
		wait_for 5 proc_gone "$p" || true
	done
	rm -f "$pidfile"
}

# --- host detection -----------------------------------------------------------

cgroup_v2() { [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; }
# Controllers systemd delegates to the service user's manager (cgroup v2 with a
# running user@UID.service; empty otherwise).
user_delegated_controllers() {
	cat "/sys/fs/cgroup/user.slice/user-$SVC_UID.slice/user@$SVC_UID.service/cgroup.controllers" 2>/dev/null || true
}
systemd_pid1() { [[ -d /run/systemd/system ]]; }
# A systemd user manager we can talk to (lingering user, logind running).
user_systemd() {
	systemd_pid1 && svc_exists && [[ -S $SVC_RUNTIME/systemd/private && -S $SVC_RUNTIME/bus ]]
}

# --- steps --------------------------------------------------------------------

# Packages rootless Podman needs on Debian 12 (Podman 4.3). --no-install-recommends
# keeps fuse-overlayfs and buildah out: native overlay is used instead.
required_packages() {
	local pkgs=(podman runc uidmap slirp4netns nftables debootstrap catatonit
		netavark aardvark-dns conmon golang-github-containers-common
		curl ca-certificates util-linux)
	cgroup_v2 && pkgs+=(crun)
	# rootless podman with the systemd cgroup manager needs a user D-Bus
	systemd_pid1 && pkgs+=(dbus-user-session)
	printf '%s\n' "${pkgs[@]}"
}

ensure_packages() {
	local pkgs
	mapfile -t pkgs < <(required_packages)
	apt_ensure packages "${pkgs[@]}"
}

# What only the test suite needs: Debian's Chromium and its WebDriver for the
# playground's browser test (tests/playground.rs), never a downloaded browser;
# Debian's HAProxy for the scale-out test (tests/scale_out.rs).
ensure_test_packages() {
	apt_ensure "test packages" chromium chromium-driver haproxy
	ensure_mcp_client
}

# ensure_mcp_client: a venv with the official MCP Python SDK (tests/mcp/requirements.txt,
# from PyPI), the real client of tests/mcp.rs. Cached by the hash of the requirements;
# sets MCP_PYTHON to its interpreter.
ensure_mcp_client() {
	local reqs=$REPO/tests/mcp/requirements.txt hash dir
	hash=$(sha256sum "$reqs" | cut -c1-12)
	dir=${XDG_CACHE_HOME:-$HOME/.cache}/code-interpreter/mcp-client-$hash
	MCP_PYTHON=$dir/bin/python
	if [[ -x $MCP_PYTHON && -f $dir/.complete ]]; then
		log "MCP client (Python SDK): cached in $dir"
		return 0
	fi
	python3 -c 'import ensurepip, venv' 2>/dev/null || apt_ensure "python venv" python3-venv
	log "MCP client (Python SDK): installing into $dir"
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir")"
	python3 -m venv "$dir"
	"$dir/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
		--no-deps -r "$reqs" || die "installing the MCP Python SDK from PyPI failed"
	touch "$dir/.complete"
}

# apt_ensure LABEL PKG...: install the packages that are not installed yet.
apt_ensure() {
	local label=$1 missing=() p
	shift
	for p in "$@"; do
		[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		log "$label: all present"
		return 0
	fi
	log "$label: installing ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >/dev/null
}

# next_subid_start: first id after every "name:start:count" range on stdin (>= 100000).
next_subid_start() {
	awk -F: 'BEGIN { m = 100000 } NF >= 3 && $2 + $3 > m { m = $2 + $3 } END { print m }'
}

ensure_service_user() {
	if svc_exists; then
		log "service user: $SVC_USER (uid $SVC_UID) exists"
	else
		is_root || die "service user $SVC_USER does not exist"
		log "service user: creating $SVC_USER (home $SVC_HOME)"
		useradd --system --user-group --create-home --home-dir "$SVC_HOME" \
			--shell /usr/sbin/nologin --comment "code-interpreter gateway" "$SVC_USER"
		chmod 0700 "$SVC_HOME"
		svc_resolve
	fi
	ensure_subids
	ensure_runtime_dir
	ensure_tun_access
	ensure_service_dirs
}

# Rootless Podman maps the container's uids onto these ranges. One start for
# both files, after every range already given to someone.
ensure_subids() {
	local start range
	if grep -q "^$SVC_USER:" /etc/subuid 2>/dev/null && grep -q "^$SVC_USER:" /etc/subgid 2>/dev/null; then
		return 0
	fi
	start=$(cat /etc/subuid /etc/subgid 2>/dev/null | next_subid_start)
	range=$start-$((start + 65535))
	log "service user: adding subordinate ids $range"
	grep -q "^$SVC_USER:" /etc/subuid 2>/dev/null || as_root usermod --add-subuids "$range" "$SVC_USER"
	grep -q "^$SVC_USER:" /etc/subgid 2>/dev/null || as_root usermod --add-subgids "$range" "$SVC_USER"
}

# XDG_RUNTIME_DIR: logind makes it (and starts the user's systemd) for a
# lingering user; without logind we make it.
ensure_runtime_dir() {
	if systemd_pid1 && command -v loginctl >/dev/null &&
		[[ ! -e /var/lib/systemd/linger/$SVC_USER ]]; then
		log "service user: enabling linger (starts its systemd user manager)"
		as_root loginctl enable-linger "$SVC_USER"
		wait_for 10 test -S "$SVC_RUNTIME/systemd/private" ||
			warn "no systemd user manager for $SVC_USER after 10 s"
	fi
	if [[ ! -d $SVC_RUNTIME ]]; then
		log "service user: creating $SVC_RUNTIME"
		as_root install -d -m 0700 -o "$SVC_UID" -g "$SVC_GID" "$SVC_RUNTIME"
	fi
	clear_stale_runtime_dir
}

# svc_live_pids: the service user's processes, one pid a line, zombies left
# out (they hold nothing; where PID 1 does not reap orphans they never go).
svc_live_pids() {
	ps -u "$SVC_UID" -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ { print $1 }'
}

# The runtime directory is meant to live on a tmpfs that ends with the user's
# processes (logind) or the boot. Where /run is on disk and the service user's
# processes were all ended without a reboot (a machine image taken while it
# ran, a container restarted), what is left there lies: Podman's "alive" flag
# says no reboot happened, so its database still lists containers as running
# and every podman command fails ("invalid internal status, try resetting the
# pause process": their conmon pids are gone). With none of the user's
# processes alive nothing can be using the directory: empty it, as a reboot would.
clear_stale_runtime_dir() {
	[[ -n $(svc_live_pids) ]] && return 0
	[[ -n $(as_root find "$SVC_RUNTIME" -mindepth 1 -maxdepth 1 -print -quit) ]] || return 0
	log "service user: no process of $SVC_USER runs; clearing the stale $SVC_RUNTIME"
	as_root find "$SVC_RUNTIME" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
}

# A Podman service killed while it created a worker (kill -9, the OOM killer)
# leaves a container that only its storage knows: no API call lists or removes
# it, and it keeps a container layer. Before a service starts, with none of the
# service user's processes alive, no create is under way: remove ours (named
# code-interpreter-*) as `podman rm --storage` is meant to.
remove_storage_only_workers() {
	local known id name
	[[ -n $(svc_live_pids) ]] && return 0
	known=$(svc_podman ps -a -q --no-trunc 2>/dev/null) || return 0
	while read -r id name; do
		[[ $name == code-interpreter-* && $known != *"$id"* ]] || continue
		if svc_podman rm --storage "$id" >/dev/null 2>&1; then
			log "podman: removed $name, left in storage only by an interrupted create"
		else
			warn "podman: could not remove $name ($id), left in storage only"
		fi
	done < <(svc_podman ps -a --external --no-trunc --format '{{.ID}} {{.Names}}' 2>/dev/null)
}

# slirp4netns (network of RUN steps in podman build) opens /dev/net/tun.
ensure_tun_access() {
	[[ -e /dev/net/tun ]] || return 0
	svc_run test -r /dev/net/tun -a -w /dev/net/tun && return 0
	log "host: making /dev/net/tun usable by unprivileged users (chmod 0666)"
	as_root chmod 0666 /dev/net/tun
}

ensure_service_dirs() {
	svc_run mkdir -p "$CI_LIB_DIR/bin" "$(dirname "$CI_CONFIG")" "$CI_STATE" "$CI_RUN" \
		"$SVC_HOME/.config/containers"
	svc_run chmod 0700 "$CI_STATE" "$CI_RUN"
}

# write_svc_file PATH CONTENT: a Podman configuration file, written unless it
# is already identical; sets PODMAN_CONFIG_CHANGED when it writes.
write_svc_file() {
	if svc_write_if_changed "$1" "$2" "podman config"; then
		PODMAN_CONFIG_CHANGED=1
	fi
}

# storage.conf must exist before the first podman command of the user: the
# storage database remembers its driver ("database graph driver vfs does not
# match overlay" otherwise). Native rootless overlay needs kernel >= 5.13.
ensure_podman_config() {
	local dir=$SVC_HOME/.config/containers storage_dir=$SVC_HOME/.local/share/containers/storage
	if [[ ! -f $dir/storage.conf && -d $storage_dir/vfs ]]; then
		warn "podman storage of $SVC_USER already uses vfs: leaving storage.conf alone"
	else
		write_svc_file "$dir/storage.conf" "# Written by code-interpreter scripts/lib.sh (ensure_podman_config).
[storage]
driver = \"overlay\""
	fi

	# Comments in the file say what was detected, so a reader knows why.
	local engine=()
	if ! cgroup_v2; then
		engine+=('# cgroup v1/hybrid: crun refuses it ("cgroups in hybrid mode not supported")'
			'runtime = "runc"')
	fi
	if ! user_systemd; then
		engine+=('# no systemd user session: no systemd cgroup manager, no journald'
			'cgroup_manager = "cgroupfs"' 'events_logger = "file"')
	fi
	local content ulimits
	ulimits=$(default_ulimits_line)
	# Podman 5 gives every container a pids limit of 2048 by default, and with
	# no pids controller every container then fails to start ("controller
	# pids is not available").
	if cgroup_v2 && [[ " $(user_delegated_controllers) " != *" pids "* ]]; then
		ulimits+=$'\n# cgroup v2 without a delegated pids controller: no default pids limit\npids_limit = 0'
	fi
	content="# Written by code-interpreter scripts/lib.sh (ensure_podman_config).
[containers]
$ulimits

[engine]"
	((${#engine[@]})) && content+=$'\n'$(printf '%s\n' "${engine[@]}")
	write_svc_file "$dir/containers.conf" "$content"
}

# Podman's default rlimits can exceed what the user may set (no CAP_SYS_RESOURCE
# in the bounding set; rootless podman also caps its own nproc): then every
# container, build steps included, fails with "setrlimit ... operation not
# permitted". Defaults never above the user's hard limits always fit. The
# open-file hard limit may go up to 65536: the Quadlet gateway container gets
# these defaults, and the gateway raises its soft limit to what its connections
# and workers need (src/front/nofile.rs). (It sets nofile/nproc on every worker.)
default_ulimits_line() {
	local nofile nproc
	nofile=$(svc_run bash -c 'ulimit -Hn')
	nproc=$(svc_run bash -c 'ulimit -Hu')
	[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
	[[ $nproc == unlimited || $nproc -gt 4096 ]] && nproc=4096
	printf 'default_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]' \
		"$((nofile < 1024 ? nofile : 1024))" "$nofile" "$nproc" "$nproc"
}

# podman_ping [SOCKET]: the Podman service on SOCKET ($PODMAN_SOCK) answers.
podman_ping() {
	local sock=${1:-$PODMAN_SOCK}
	[[ -S $sock ]] &&
		[[ $(curl -fsS --max-time 2 --unix-socket "$sock" http://d/v4.0.0/libpod/_ping 2>/dev/null) == OK ]]
}

# The gateway talks to Podman's REST API on $PODMAN_SOCK. Prefer the user's
# systemd podman.socket; without a systemd user session run the service ourselves.
ensure_podman_service() {
	if [[ -n ${PODMAN_CONFIG_CHANGED:-} ]]; then
		# A running service still has the old containers.conf.
		if user_systemd; then
			svc_run systemctl --user try-restart podman.service
		elif pid_alive "$PODMAN_PIDFILE" /usr/bin/podman >/dev/null; then
			log "podman service: restarting for the new configuration"
			stop_pid "$PODMAN_PIDFILE" /usr/bin/podman "podman service"
		fi
	fi
	if podman_ping; then
		log "podman service: answering on $PODMAN_SOCK"
		return 0
	fi
	remove_storage_only_workers
	if user_systemd; then
		log "podman service: enabling the user's podman.socket"
		svc_run systemctl --user enable --now podman.socket
	elif pid_alive "$PODMAN_PIDFILE" /usr/bin/podman >/dev/null; then
		log "podman service: started earlier, waiting for it"
	else
		log "podman service: starting 'podman system service' as $SVC_USER"
		svc_run mkdir -p "$(dirname "$PODMAN_SOCK")"
		svc_daemon "$PODMAN_PIDFILE" "$CI_STATE/podman-service.log" \
			podman system service --time=0 "unix://$PODMAN_SOCK"
	fi
	if wait_for 15 podman_ping; then
		log "podman service: ready"
		return 0
	fi
	tail -n 20 "$CI_STATE/podman-service.log" >&2 2>/dev/null || true
	die "podman service did not answer on $PODMAN_SOCK within 15 s"
}

# --- gVisor workers (workers.runtime = "gvisor") -----------------------------
# Podman 4.3's REST API ignores a container's own OCI runtime
# (containers/podman#28429), and runsc's flags are Podman global options: the
# gVisor workers come from a second Podman service of the service user, started
# with --runtime naming a runsc wrapper that adds the flags rootless Podman
# needs. Its name ends in the platform, which the gateway reports
# (src/worker/isolation.rs).

# wants_gvisor: CODE_INTERPRETER_WORKER_RUNTIME (which the gateway also reads),
# or the installed or the repo's config.toml, asks for gVisor workers.
wants_gvisor() {
	[[ ${CODE_INTERPRETER_WORKER_RUNTIME:-} == gvisor ]] ||
		grep -Eqs '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"gvisor"' "$CI_CONFIG" "$REPO/config.toml"
}

# gvisor_platform: the fastest platform the installed runsc has and the service
# user can use: systrap (runsc 2023+), kvm (when /dev/kvm is open to the
# service user), else ptrace.
gvisor_platform() {
	local platforms
	platforms=$(runsc flags 2>&1 | awk '/^[[:space:]]*-platform string/ { getline; print; exit }')
	if [[ $platforms == *systrap* ]]; then
		echo systrap
	elif [[ $platforms == *kvm* ]] && svc_run test -r /dev/kvm -a -w /dev/kvm; then
		echo kvm
	else
		echo ptrace
	fi
}

gvisor_ping() { podman_ping "$PODMAN_GVISOR_SOCK"; }

# ensure_gvisor_wrapper: writes the runsc wrapper for this host's platform
# (a change restarts the gVisor Podman service, whichever started it) and sets
# GVISOR_WRAPPER and GVISOR_PLATFORM.
ensure_gvisor_wrapper() {
	local text old
	GVISOR_PLATFORM=$(gvisor_platform)
	GVISOR_WRAPPER=$GVISOR_WRAPPER_DIR/code-interpreter-runsc-$GVISOR_PLATFORM
	text=$(printf '%s\n' '#!/bin/sh' \
		'# Written by code-interpreter scripts/lib.sh (ensure_gvisor): runsc as the gVisor' \
		'# workers Podman service runs it. --ignore-cgroups: rootless runsc cannot make' \
		'# cgroups; --network=none: no network at all (the sandbox has loopback only);' \
		'# --host-uds=all: the kernel'"'"'s ZeroMQ sockets on the bind-mounted worker' \
		'# directory reach the gateway; --oci-seccomp: the worker'"'"'s seccomp profile applies' \
		'# inside the sandbox too.' \
		"exec /usr/bin/runsc --ignore-cgroups --network=none --host-uds=all --oci-seccomp --platform=$GVISOR_PLATFORM \"\$@\"")
	old=$(svc_run cat "$GVISOR_WRAPPER" 2>/dev/null || true)
	[[ $old == "$text" ]] && return 0
	log "gVisor: writing $GVISOR_WRAPPER"
	svc_run mkdir -p "$GVISOR_WRAPPER_DIR"
	svc_run find "$GVISOR_WRAPPER_DIR" -name 'code-interpreter-runsc-*' -delete
	printf '%s\n' "$text" | svc_write "$GVISOR_WRAPPER"
	svc_run chmod 0755 "$GVISOR_WRAPPER"
	stop_pid "$PODMAN_GVISOR_PIDFILE" /usr/bin/podman "gVisor podman service" || true
	if user_systemd; then
		svc_systemctl try-restart "$GVISOR_SERVICE_UNIT" 2>/dev/null || true
	fi
}

# gvisor_socket_unit_installed: scripts/install.sh installed the systemd
# units of the gVisor Podman service (systemd/code-interpreter-podman-gvisor.*).
gvisor_socket_unit_installed() {
	user_systemd && [[ -f $(user_unit_dir)/$GVISOR_SOCKET_UNIT ]]
}

# ensure_gvisor: runsc, its wrapper, and the Podman service that runs it.
ensure_gvisor() {
	apt_ensure "gVisor" runsc
	ensure_gvisor_wrapper
	start_gvisor_service
}

# start_gvisor_service: the gVisor Podman service answering, through its
# socket unit where install.sh installed one, else detached (after
# ensure_gvisor_wrapper).
start_gvisor_service() {
	if gvisor_ping; then
		log "gVisor podman service: answering on $PODMAN_GVISOR_SOCK (platform $GVISOR_PLATFORM)"
		return 0
	fi
	if gvisor_socket_unit_installed; then
		log "gVisor podman service: starting $GVISOR_SOCKET_UNIT"
		svc_systemctl start "$GVISOR_SOCKET_UNIT"
	else
		log "gVisor podman service: starting 'podman --runtime $GVISOR_WRAPPER system service' as $SVC_USER"
		svc_run mkdir -p "$(dirname "$PODMAN_GVISOR_SOCK")" "$CI_RUN"
		svc_daemon "$PODMAN_GVISOR_PIDFILE" "$CI_STATE/podman-gvisor-service.log" \
			podman --runtime "$GVISOR_WRAPPER" system service --time=0 "unix://$PODMAN_GVISOR_SOCK"
	fi
	if wait_for 15 gvisor_ping; then
		log "gVisor podman service: ready (platform $GVISOR_PLATFORM)"
		return 0
	fi
	if gvisor_socket_unit_installed; then
		die "gVisor podman service did not answer on $PODMAN_GVISOR_SOCK within 15 s (see: journalctl _SYSTEMD_USER_UNIT=$GVISOR_SERVICE_UNIT)"
	fi
	tail -n 20 "$CI_STATE/podman-gvisor-service.log" >&2 2>/dev/null || true
	die "gVisor podman service did not answer on $PODMAN_GVISOR_SOCK within 15 s"
}

# Debian mirror of this host (deb822 sources first, then sources.list).
debian_mirror() {
	local uri
	uri=$(awk '
		/^URIs:/ { u = $2 }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") found = u }
		/^$/ { u = "" }
		END { print found }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[[ -n $uri ]] || uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' \
		/etc/apt/sources.list 2>/dev/null || true)
	echo "${uri:-http://deb.debian.org/debian}"
}

# Root filesystem tarball of a minimal bookworm, built with debootstrap from
# the host's own mirror (no container registry needed) and cached.
build_base_tarball() {
	local tarball=$1 mirror rootfs
	mirror=$(debian_mirror)
	log "base image: debootstrap --variant=minbase bookworm from $mirror (about a minute)"
	as_root mkdir -p "$BASE_CACHE_DIR"
	rootfs=$(as_root mktemp -d "$BASE_CACHE_DIR/rootfs.XXXXXX")
	if ! as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$BASE_CACHE_DIR/debootstrap.log" 2>&1; then
		tail -n 20 "$BASE_CACHE_DIR/debootstrap.log" >&2
		as_root rm -rf "$rootfs"
		die "debootstrap failed (log: $BASE_CACHE_DIR/debootstrap.log)"
	fi
	slim_rootfs "$rootfs"
	# Same apt sources as the host (security suite included), no caches.
	if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
		as_root cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
		as_root rm -f "$rootfs/etc/apt/sources.list"
	fi
	as_root sh -c 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb' sh "$rootfs"
	as_root tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
	as_root mv "$tarball.tmp" "$tarball"
	as_root rm -rf "$rootfs"
}

# Make a debootstrap rootfs like the official -slim images: dpkg excludes for
# docs, man pages and translations (so later apt installs skip them too), and
# the files they match removed (about 45 MB).
slim_rootfs() {
	local rootfs=$1
	as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/slim" >/dev/null <<-'EOF'
		# Written by code-interpreter scripts/lib.sh, as in Debian's -slim images.
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/lintian/overrides/*
		path-exclude /usr/share/locale/*
		path-exclude /usr/share/man/*
	EOF
	as_root sh -c 'cd "$1" && find usr/share/doc -type f ! -name copyright -delete &&
		rm -rf usr/share/groff/* usr/share/info/* usr/share/linda/* \
			usr/share/lintian/overrides/* usr/share/locale/* usr/share/man/*' sh "$rootfs"
}

# The worker's FROM image. Registries are not reachable everywhere (CI has
# none), so the default is an offline debootstrap import; set
# CODE_INTERPRETER_PULL_BASE=1 to try `podman pull` first.
ensure_base_image() {
	if svc_podman image exists "$BASE_IMAGE"; then
		log "base image: $BASE_IMAGE present"
		return 0
	fi
	if [[ ${CODE_INTERPRETER_PULL_BASE:-0} == 1 ]]; then
		log "base image: trying podman pull $BASE_IMAGE"
		if svc_run timeout 60 podman pull -q "$BASE_IMAGE" >/dev/null; then
			log "base image: pulled"
			return 0
		fi
		warn "pull failed, building the base image offline"
	fi
	local tarball=$BASE_CACHE_DIR/debian-bookworm-minbase-slim.tar
	if [[ -f $tarball ]]; then
		log "base image: importing cached $tarball"
	else
		build_base_tarball "$tarball"
	fi
	as_root cat "$tarball" | svc_podman import --quiet - "$BASE_IMAGE" >/dev/null
	log "base image: imported $BASE_IMAGE"
}

# sha256 of everything the worker image is built from (and of the base
# image's id). Notes (*.md) are not inputs.
worker_inputs_hash() {
	{
		(cd "$REPO/containerfiles" && find worker.Containerfile worker -type f ! -name '*.md' -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum)
		svc_podman image inspect --format '{{.Id}}' "$BASE_IMAGE"
	} | sha256sum | cut -c1-64
}

# image_inputs_label IMAGE: the inputs hash IMAGE was built from (empty if none).
image_inputs_label() {
	svc_podman image inspect --format "{{index .Labels \"$INPUTS_LABEL\"}}" "$1" 2>/dev/null || true
}

worker_image_label() { image_inputs_label "$WORKER_IMAGE"; }

ensure_worker_image() {
	local hash
	hash=$(worker_inputs_hash)
	if [[ $(worker_image_label) == "$hash" ]]; then
		log "worker image: $WORKER_IMAGE up to date (inputs ${hash:0:12})"
		return 0
	fi
	log "worker image: building $WORKER_IMAGE (inputs ${hash:0:12})"
	build_worker_image "$hash"
}

# full_inputs_hash: what the full profile is built from (its Containerfile and
# the default image it extends).
full_inputs_hash() {
	{
		sha256sum "$REPO/containerfiles/worker-full.Containerfile"
		svc_podman image inspect --format '{{.Id}}' "$WORKER_IMAGE"
	} | sha256sum | cut -c1-64
}

# wants_full_profile: the installed or the repo's config.toml names the full image.
wants_full_profile() {
	grep -Eqs '^[[:space:]]*image[[:space:]]*=[[:space:]]*"[^"]*code-interpreter-worker-full' \
		"$CI_CONFIG" "$REPO/config.toml"
}

# ensure_full_image: build the full profile unless it is up to date (Debian's
# LibreOffice, pandoc, ffmpeg, tesseract and Node.js: a few minutes once).
ensure_full_image() {
	local hash tmp
	hash=$(full_inputs_hash)
	if [[ $(image_inputs_label "$FULL_IMAGE") == "$hash" ]]; then
		log "full worker image: $FULL_IMAGE up to date (inputs ${hash:0:12})"
		return 0
	fi
	log "full worker image: building $FULL_IMAGE (inputs ${hash:0:12})"
	tmp=$(svc_run mktemp -d /var/tmp/code-interpreter-build.XXXXXX)
	svc_write "$tmp/worker-full.Containerfile" <"$REPO/containerfiles/worker-full.Containerfile"
	build_image "full worker image" "$FULL_IMAGE" "$tmp" worker-full-build.log \
		--pull=never --layers -f "$tmp/worker-full.Containerfile" \
		--build-arg "BASE=$WORKER_IMAGE" --label "$INPUTS_LABEL=$hash" "$tmp"
}

# build_image WHAT IMAGE CONTEXT_COPY LOG BUILD_ARGS...: `podman build
# BUILD_ARGS` as the service user, tagged IMAGE, logged to $CI_STATE/LOG.
# CONTEXT_COPY (the service user's copy of the build context) goes either way;
# a failed build dies with the log's tail. Then the image IMAGE was before goes
# too, unless a running container still uses it.
build_image() {
	local what=$1 image=$2 context_copy=$3 build_log=$CI_STATE/$4 old_id new_id t0 t1 rc=0
	shift 4
	old_id=$(svc_podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
	t0=$(date +%s.%N)
	svc_podman build -t "$image" "$@" >"$build_log" 2>&1 || rc=$?
	t1=$(date +%s.%N)
	svc_run rm -rf "$context_copy"
	if ((rc != 0)); then
		tail -n 30 "$build_log" >&2
		die "$what build failed (log: $build_log)"
	fi
	new_id=$(svc_podman image inspect --format '{{.Id}}' "$image")
	if [[ -n $old_id && $old_id != "$new_id" ]]; then
		svc_podman rmi "$old_id" >/dev/null 2>&1 || true
	fi
	# Earlier images of ours that could not go when they were replaced (the full
	# profile's image was built on them): untagged, unused, gone now.
	local dangling
	for dangling in $(svc_podman images -q --filter dangling=true --filter "label=$INPUTS_LABEL" 2>/dev/null); do
		svc_podman rmi "$dangling" >/dev/null 2>&1 || true
	done
	log "$what: built in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, $(($(svc_podman image inspect --format '{{.Size}}' "$image") / 1000000)) MB"
}

# The repo may be unreadable to the service user (/root/...): copy the build
# context into a directory it owns. pip in RUN steps needs the host's CA bundle
# (TLS-intercepting proxies), mounted read-only beside, not over, the image's.
build_worker_image() {
	local hash=$1 tmp
	local ca_args=()
	tmp=$(svc_run mktemp -d /var/tmp/code-interpreter-build.XXXXXX)
	if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
		ca_args=(-v "$tmp/ca:/mnt/host-ca:ro" --build-arg PIP_CA_BUNDLE=/mnt/host-ca/ca.crt)
	fi
	if ! { svc_run mkdir "$tmp/context" "$tmp/ca" &&
		tar -C "$REPO/containerfiles" -c worker.Containerfile worker | svc_run tar -C "$tmp/context" -x &&
		{ ((${#ca_args[@]} == 0)) || svc_write "$tmp/ca/ca.crt" </etc/ssl/certs/ca-certificates.crt; }; }; then
		svc_run rm -rf "$tmp"
		die "could not copy the build context to $tmp"
	fi
	build_image "worker image" "$WORKER_IMAGE" "$tmp" worker-build.log \
		--pull=never --layers -f "$tmp/context/worker.Containerfile" \
		--label "$INPUTS_LABEL=$hash" "${ca_args[@]}" "$tmp/context"
}

# install_files BINARY: the gateway binary and the repo's config.toml, owned by
# the service user. Copies only what changed; a running binary is replaced by
# rename, never overwritten in place.
install_files() {
	local bin=$1
	install_svc_file "$bin" "$CI_BIN" 0755
	if [[ -f $REPO/config.toml ]]; then
		install_svc_file "$REPO/config.toml" "$CI_CONFIG" 0600
	else
		warn "no $REPO/config.toml: $CI_CONFIG not installed"
	fi
}

install_svc_file() {
	local src=$1 dst=$2 mode=$3
	[[ -f $src ]] || die "$src does not exist"
	if cmp -s "$src" "$dst" 2>/dev/null; then
		log "install: $dst up to date"
		return 0
	fi
	log "install: $src -> $dst"
	svc_write "$dst.new" <"$src"
	svc_run chmod "$mode" "$dst.new"
	svc_run mv -f "$dst.new" "$dst"
}

# remove_workers: every worker container (label $WORKER_LABEL), then the stale
# per-worker directories. Those may hold files of the container's uid that the
# service user cannot delete, hence `podman unshare` (root of the user namespace).
remove_workers() {
	local ids
	command -v podman >/dev/null || return 0
	ids=$(svc_podman ps -aq --filter "label=$WORKER_LABEL")
	if [[ -n $ids ]]; then
		log "workers: removing $(wc -w <<<"$ids") container(s)"
		# shellcheck disable=SC2086 # one id per word
		svc_podman rm -f -t 0 $ids >/dev/null
	else
		log "workers: none"
	fi
	if [[ -d $CI_RUN/workers ]]; then
		svc_podman unshare find "$CI_RUN/workers" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	fi
}

# --- gateway ------------------------------------------------------------------

# Listen address: env CODE_INTERPRETER_LISTEN, else `listen` in [server] of
# the installed config, else the default.
gateway_listen() {
	local addr=${CODE_INTERPRETER_LISTEN:-}
	if [[ -z $addr && -r $CI_CONFIG ]]; then
		addr=$(awk '
			/^[[:space:]]*\[/ { sec = $0; gsub(/[[:space:]\[\]]/, "", sec); next }
			sec == "server" && /^[[:space:]]*listen[[:space:]]*=/ {
				sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit }' "$CI_CONFIG")
	fi
	echo "${addr:-127.0.0.1:3874}"
}

# Base URL for local health checks: wildcard listen addresses become loopback.
gateway_url() {
	local addr host port
	addr=$(gateway_listen)
	port=${addr##*:}
	host=${addr%:*}
	case $host in
	0.0.0.0 | "") host=127.0.0.1 ;;
	"[::]") host="[::1]" ;;
	esac
	echo "http://$host:$port"
}

gateway_healthy() { curl -fsS --max-time 2 "$(gateway_url)/health" >/dev/null 2>&1; }

# config_number SECTION KEY DEFAULT: a whole number from the installed config, else DEFAULT.
config_number() {
	local value=""
	[[ -r $CI_CONFIG ]] && value=$(awk -v want="$1" -v key="$2" '
		/^[[:space:]]*\[/ { sec = $0; gsub(/[[:space:]\[\]]/, "", sec); next }
		sec == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
			sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]#].*/, ""); print; exit }' "$CI_CONFIG")
	if [[ $value =~ ^[0-9]+$ ]]; then echo "$value"; else echo "$3"; fi
}

# gateway_nofile: open files the gateway needs, sized as it sizes them itself
# (src/front/nofile.rs): [server] max_connections, 5 kernel sockets per worker
# ([pool] max_workers; 0 = host memory / [limits] memory_mb), plus 256.
gateway_nofile() {
	local connections workers memory_mb
	connections=$(config_number server max_connections 1024)
	workers=$(config_number pool max_workers 0)
	if ((workers == 0)); then
		memory_mb=$(config_number limits memory_mb 1024)
		workers=$(($(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo) / (memory_mb > 0 ? memory_mb : 1)))
	fi
	echo $((connections + 5 * workers + 256))
}

# raise_nofile N: this shell's open-file limit to at least N, the hard limit
# too when allowed (root); a child inherits it. The gateway raises its soft
# limit by itself, so the hard limit is what matters.
raise_nofile() {
	local want=$1 hard
	hard=$(ulimit -Hn)
	if [[ $hard != unlimited ]] && ((hard < want)); then
		ulimit -Hn "$want" 2>/dev/null ||
			warn "open files: hard limit $hard < $want needed, cannot raise it (needs root); the gateway serves fewer connections (see its log)"
		hard=$(ulimit -Hn)
		[[ $hard == unlimited ]] || ((hard >= want)) || want=$hard
	fi
	local soft
	soft=$(ulimit -Sn)
	[[ $soft == unlimited ]] || ((soft >= want)) || ulimit -Sn "$want"
}

gateway_pid() { pid_alive "$GATEWAY_PIDFILE" "$CI_BIN"; }

stop_gateway() { stop_pid "$GATEWAY_PIDFILE" "$CI_BIN" gateway; }

# install_token FILE: the API token from FILE's first line, written to the
# gateway's token file (0600, the service user's; the gateway reads it at start
# unless config.toml's server.token or CODE_INTERPRETER_TOKEN sets one).
# Returns 1 when the token was already that one.
install_token() {
	local file=$1 token dst=$CI_STATE/token
	[[ -r $file ]] || die "--token-file: cannot read $file"
	IFS= read -r token <"$file" || [[ -n $token ]] || die "--token-file: $file is empty"
	token=${token%$'\r'}
	((${#token} >= 16)) || die "--token-file: the token in $file must have at least 16 characters"
	[[ $token =~ ^[[:graph:]]+$ ]] ||
		die "--token-file: the token in $file must be printable characters without spaces"
	if [[ $(svc_run cat "$dst" 2>/dev/null) == "$token" ]]; then
		log "token: unchanged ($dst)"
		return 1
	fi
	svc_run mkdir -p "$CI_STATE"
	printf '%s\n' "$token" | svc_run sh -c 'umask 077 && cat >"$1.new" && mv -f "$1.new" "$1"' sh "$dst"
	log "token: set from $file ($dst)"
}

# start_gateway: start it as the service user unless running; wait for /health.
start_gateway() {
	local pid i
	if pid=$(gateway_pid); then
		log "gateway: already running (pid $pid)"
	else
		[[ -x $CI_BIN ]] || die "$CI_BIN is not installed"
		log "gateway: starting $CI_BIN serve --config $CI_CONFIG"
		[[ -n ${CODE_INTERPRETER_LISTEN:-} ]] && SVC_ENV+=("CODE_INTERPRETER_LISTEN=$CODE_INTERPRETER_LISTEN")
		[[ -n ${RUST_LOG:-} ]] && SVC_ENV+=("RUST_LOG=$RUST_LOG")
		[[ -n ${CODE_INTERPRETER_WORKER_RUNTIME:-} ]] &&
			SVC_ENV+=("CODE_INTERPRETER_WORKER_RUNTIME=$CODE_INTERPRETER_WORKER_RUNTIME")
		# The log is a file: no colour codes in it.
		SVC_ENV+=(NO_COLOR=1)
		# Every connection is a file: raise the limit the gateway inherits
		# (in a subshell: the rest of this script keeps its own).
		(
			raise_nofile "$(gateway_nofile)"
			svc_daemon "$GATEWAY_PIDFILE" "$CI_LOG" "$CI_BIN" serve --config "$CI_CONFIG"
		)
	fi
	for ((i = 0; i < 600; i++)); do
		if gateway_healthy; then
			log "gateway: healthy at $(gateway_url)"
			return 0
		fi
		# Fail early once the process is gone (after it had time to write its pid).
		((i > 10)) && ! gateway_pid >/dev/null && break
		sleep 0.1
	done
	warn "gateway did not become healthy at $(gateway_url)/health; last log lines ($CI_LOG):"
	tail -n 30 "$CI_LOG" >&2 2>/dev/null || true
	exit 1
}

# build_gateway: cargo build --release [--locked] --no-default-features (the
# gateway without `bench`); prints the binary's path.
build_gateway() {
	command -v cargo >/dev/null ||
		die "cargo not found: install a Rust toolchain (https://rustup.rs) to build the gateway"
	local args=(--release)
	[[ -f $REPO/Cargo.lock ]] && args+=(--locked)
	args+=(--no-default-features)
	log "gateway: cargo build ${args[*]}" >&2
	(cd "$REPO" && cargo build "${args[@]}") >&2
	echo "$REPO/target/release/code-interpreter"
}

# print_access [URL TOKEN]: how to reach the gateway (default: the one
# start_gateway started).
print_access() {
	local url=${1:-} token=${2:-}
	[[ -n $url ]] || url=$(gateway_url)
	[[ -n $token ]] || token=$(svc_run "$CI_BIN" token --config "$CI_CONFIG")
	cat <<EOF

code-interpreter is running.
  URL:   $url
  token: $token
  playground: $url/#token=$token
  try:   curl -sS -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \\
           -d '{"user_uuid": "demo", "code": "print(6 * 7)"}' $url/execute
EOF
}
