#!/usr/bin/env bash
# quadlet_units.sh — fast checks of the Quadlet units in quadlet/ and of the
# plain unit in systemd/ (no systemd or Podman 5 needed; part of scripts/test.sh):
#   - Quadlet's generator (Podman 5.4, from trixie's podman .deb, cached by
#     scripts/dev/trixie.sh) turns every unit into a .service without error;
#   - `systemd-analyze verify --user` of every generated .service prints
#     nothing (it exits 0 on some bad values, so any output is a failure);
#   - every key of a [Container] or [Volume] section is one Podman 4.4's
#     Quadlet knows (newer keys make 4.4's generator reject the whole unit);
#   - a broken unit is refused (the checks can fail);
#   - the plain unit (systemd/code-interpreter.service, for Podman without
#     Quadlet) verifies silently too, with the Quadlet unit's ExecStopPost
#     (what keeps sessions over a restart and removes workers at stop).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=scripts/dev/trixie.sh
source "$REPO/scripts/dev/trixie.sh"

# Keys of Podman v4.4.0's Quadlet (pkg/systemd/quadlet/quadlet.go), the subset
# this project may use. Later versions added many (Health*, PodmanArgs,
# VolumeName, Pull, ...): add a key here only together with a higher minimum
# Podman version in the README and scripts/install.sh.
PODMAN44_CONTAINER_KEYS=" AddCapability AddDevice Annotation ContainerName DropCapability Environment
	Exec ExposeHostPort Group Image Label Network NoNewPrivileges Notify PublishPort ReadOnly
	RunInit Timezone User Volume VolatileTmp "
PODMAN44_VOLUME_KEYS=" Copy Device Group Label Options Type User "

# shellcheck source=tests/checks.sh
source "$REPO/tests/checks.sh"

TMP=$(mktemp -d /tmp/quadlet-units.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# generate UNITDIR OUTDIR: the generator over UNITDIR's units; its messages
# other than "Loading source unit file" go to OUTDIR.log.
generate() {
	local rc=0
	QUADLET_UNIT_DIRS=$1 "$QUADLET" -user -no-kmsg-log "$2" 2>"$2.raw" || rc=$?
	grep -v 'Loading source unit file' "$2.raw" >"$2.log" || true
	return "$rc"
}

generates_cleanly() { # generates_cleanly UNIT: one .service, no message
	local name=${1##*/} service
	case $name in
	*.container) service=${name%.container}.service ;;
	*.volume) service=${name%.volume}-volume.service ;;
	*) return 1 ;;
	esac
	if [[ ! -f $TMP/out/$service ]] || [[ -s $TMP/out.log ]]; then
		cat "$TMP/out.log" >&2
		return 1
	fi
}

verifies_silently() { # verifies_silently SERVICE: systemd-analyze verify prints nothing
	local output
	output=$(cd "$TMP/out" && XDG_RUNTIME_DIR=$TMP/runtime systemd-analyze verify --man=no --user "$1" 2>&1) || true
	[[ -z $output ]] || {
		printf '%s\n' "$output" >&2
		return 1
	}
}

# keys_known UNIT SECTION KEYS: every key of [SECTION] in UNIT is in KEYS.
keys_known() {
	local unknown
	unknown=$(awk -v sec="[$2]" -v known="$3" '
		BEGIN { gsub(/[[:space:]]+/, " ", known) }
		/^\[/ { in_sec = ($0 == sec); next }
		in_sec && /^[A-Za-z]/ { k = $0; sub(/=.*/, "", k); if (index(known, " " k " ") == 0) print k }
	' "$1" | sed 's/^[[:space:]]*//')
	[[ -z $unknown ]] || {
		echo "not in Podman 4.4's Quadlet: $unknown" >&2
		return 1
	}
}

# plain_unit_verifies: the plain unit under a fake home holding its binary
# (systemd-analyze resolves %h from $HOME and checks that ExecStart= exists).
plain_unit_verifies() {
	local home=$TMP/plain-home bin
	bin=$home/.local/lib/code-interpreter/bin/code-interpreter
	mkdir -p "${bin%/*}" "$TMP/plain"
	printf '#!/bin/sh\n' >"$bin"
	chmod 0755 "$bin"
	cp "$REPO/systemd/code-interpreter.service" "$TMP/plain/"
	HOME=$home verifies_silently "$TMP/plain/code-interpreter.service"
}

# gvisor_units_verify: the gVisor Podman service's socket and service units
# (with the drop-in install.sh writes) are silent under systemd-analyze verify.
gvisor_units_verify() {
	local dir=$TMP/gvisor unit
	mkdir -p "$dir/code-interpreter-podman-gvisor.service.d"
	cp "$REPO"/systemd/code-interpreter-podman-gvisor.* "$dir/"
	printf '[Service]\nEnvironment=CODE_INTERPRETER_RUNSC_WRAPPER=/usr/bin/true\n' \
		>"$dir/code-interpreter-podman-gvisor.service.d/runtime.conf"
	for unit in "$dir"/code-interpreter-podman-gvisor.socket "$dir"/code-interpreter-podman-gvisor.service; do
		verifies_silently "$unit" || return 1
	done
}

# same_stop_post: both kinds of unit stop the same way.
same_stop_post() {
	local quadlet plain
	quadlet=$(grep '^ExecStopPost=' "$REPO/quadlet/code-interpreter.container")
	plain=$(grep '^ExecStopPost=' "$REPO/systemd/code-interpreter.service")
	[[ -n $plain && $plain == "$quadlet" ]] || {
		printf 'quadlet: %s\nplain:   %s\n' "$quadlet" "$plain" >&2
		return 1
	}
}

broken_unit_refused() {
	mkdir -p "$TMP/bad"
	printf '[Container]\nImage=x\nNoSuchKey=1\n' >"$TMP/bad/bad.container"
	! generate "$TMP/bad" "$TMP/bad-out" && grep -q NoSuchKey "$TMP/bad-out.log"
}

main() {
	local unit service
	QUADLET=$(trixie_quadlet)
	mkdir -p "$TMP/out" "$TMP/runtime"
	chmod 0700 "$TMP/runtime"
	check "quadlet generator runs over quadlet/" generate "$REPO/quadlet" "$TMP/out"
	for unit in "$REPO"/quadlet/*.container "$REPO"/quadlet/*.volume; do
		[[ -e $unit ]] || continue
		check "${unit##*/}: generated without messages" generates_cleanly "$unit"
		case $unit in
		*.container) check "${unit##*/}: only Podman 4.4 keys" keys_known "$unit" Container "$PODMAN44_CONTAINER_KEYS" ;;
		*.volume) check "${unit##*/}: only Podman 4.4 keys" keys_known "$unit" Volume "$PODMAN44_VOLUME_KEYS" ;;
		esac
	done
	for service in "$TMP"/out/*.service; do
		check "${service##*/}: systemd-analyze verify --user is silent" verifies_silently "$service"
	done
	check "a unit with an unknown key is refused" broken_unit_refused
	check "systemd/code-interpreter.service: systemd-analyze verify --user is silent" plain_unit_verifies
	check "the plain unit's ExecStopPost is the Quadlet unit's" same_stop_post
	check "systemd/code-interpreter-podman-gvisor.{socket,service}: verify --user is silent" gvisor_units_verify

	echo "systemd units: $passed passed, $failed failed"
	((failed == 0))
}

main "$@"
