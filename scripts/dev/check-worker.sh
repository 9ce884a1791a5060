#!/usr/bin/env bash
# check-worker.sh — proves the worker container contract on this host.
#
# Starts one worker exactly as the gateway does (same podman flags, same
# per-worker directory and connection file), then, as the service user,
# drives its kernel over the ipc sockets with jupyter_client
# (check-worker.py): code execution, a matplotlib PNG with a Chinese title,
# the scientific imports, the sandbox's privileges, and the time from
# `podman run` to the first kernel_info_reply. Container and directory are
# removed on any exit. Needs scripts/start.sh --no-start to have run.
#
# Usage: scripts/dev/check-worker.sh [--save-png PATH]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
source "$here/../lib.sh"

CHECK_VENV=$SVC_HOME/.cache/code-interpreter/check-venv
# Host side of the check: the lock's jupyter_client and its dependencies.
CLIENT_PACKAGES="jupyter-client jupyter-core platformdirs python-dateutil pyzmq tornado traitlets typing-extensions tzdata"

# The lock's entries (pin + hashes) for the packages named in $1.
lock_subset() {
	awk -v want=" $1 " '
		/^[a-z0-9]/ {
			name = $1; sub(/==.*/, "", name); keep = index(want, " " name " ") > 0
			if (keep) printf "%s%s", (n++ ? "\n" : ""), $1
			next
		}
		keep && /--hash=/ { printf " %s", $1 }
		END { print "" }' "$REPO/containerfiles/worker/requirements.lock"
}

ensure_check_venv() {
	if svc_run test -x "$CHECK_VENV/bin/python" &&
		svc_run "$CHECK_VENV/bin/python" -c 'import jupyter_client' 2>/dev/null; then
		return 0
	fi
	log "check: creating $CHECK_VENV (jupyter_client from the lock)"
	if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
	fi
	svc_run mkdir -p "$(dirname "$CHECK_VENV")"
	svc_run /usr/bin/python3 -m venv --clear "$CHECK_VENV"
	local cert=()
	[[ -r /etc/ssl/certs/ca-certificates.crt ]] && cert=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
	# (a file of its own: /dev/stdin, a pipe made by root, is not openable by the user)
	lock_subset "$CLIENT_PACKAGES" | svc_write "$CHECK_VENV/requirements.txt"
	svc_run "${cert[@]}" "$CHECK_VENV/bin/pip" install -q --disable-pip-version-check \
		--only-binary=:all: --require-hashes -r "$CHECK_VENV/requirements.txt"
}

main() {
	svc_podman image exists "$WORKER_IMAGE" || die "no $WORKER_IMAGE: run scripts/start.sh --no-start"
	ensure_check_venv

	local id dir name key
	id=check$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
	dir=$CI_RUN/workers/$id
	name=ci-w-$id
	key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
	# shellcheck disable=SC2064 # expand now: the names are fixed
	trap "svc_podman rm -f -t 0 '$name' >/dev/null 2>&1 || true; svc_run rm -rf '$dir'" EXIT

	# The per-worker directory: 0777 inside a 0700 parent owned by the service user.
	svc_run mkdir -p "$CI_RUN/workers"
	svc_run chmod 0700 "$CI_RUN/workers"
	svc_run mkdir -m 0777 "$dir"
	printf '{"transport":"ipc","ip":"/run/kernel/k","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"key":"%s","signature_scheme":"hmac-sha256","kernel_name":"python3"}\n' "$key" |
		svc_write "$dir/connection.json"
	svc_run chmod 0666 "$dir/connection.json"
	# The loopback-only ruleset the gateway builds (src/worker/firewall.rs), by hand.
	local chains="" rules="" chain
	for chain in input output forward; do
		chains+=$(printf '{"add":{"chain":{"family":"inet","table":"code_interpreter","name":"%s","type":"filter","hook":"%s","prio":0,"policy":"drop"}}},' "$chain" "$chain")
	done
	rules+='{"add":{"rule":{"family":"inet","table":"code_interpreter","chain":"input","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"lo"}},{"accept":null}]}}},'
	rules+='{"add":{"rule":{"family":"inet","table":"code_interpreter","chain":"output","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"lo"}},{"accept":null}]}}}'
	printf '{"nftables":[{"add":{"table":{"family":"inet","name":"code_interpreter"}}},%s%s]}\n' "$chains" "$rules" |
		svc_write "$dir/ruleset.json"

	local t0
	t0=$(date +%s.%N)
	svc_podman run -d --name "$name" --label "$WORKER_LABEL=1" \
		--network none --user 0:0 --cap-drop all \
		--cap-add NET_ADMIN --cap-add SETUID --cap-add SETGID --cap-add SETPCAP --read-only \
		--tmpfs /tmp:rw,size=100m,mode=1777 --tmpfs /sandbox:rw,size=500m,mode=1777 \
		--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --ulimit fsize=$((500 << 20)):$((500 << 20)) \
		--init --workdir /sandbox -e CI_LIMIT_AS=$((2048 << 20)) \
		-v "$dir:/run/kernel:rw" "$WORKER_IMAGE" >/dev/null

	local rc=0
	svc_run T0="$t0" WORKER_DIR="$dir" KERNEL_KEY="$key" \
		"$CHECK_VENV/bin/python" - "$@" <"$here/check-worker.py" || rc=$?
	log "--- container log"
	svc_podman logs "$name" 2>&1 | tail -n 30
	return "$rc"
}

main "$@"
