#!/usr/bin/env bash
# test.sh — the whole test suite, as CI runs it (.ci/run calls this).
#
# 1. scripts/start.sh --no-start --profile full: packages, service user,
#    rootless Podman and its REST socket, the worker images of both profiles
#    (cached by input hash), release build;
#    then Debian's chromium and chromium-driver for the browser test.
# 2. cargo test --release: unit tests, then integration tests that start real
#    gateways as the service user against real rootless Podman. As root, a
#    private rootful Podman (tests/rootful_podman.sh) also runs, so the
#    limits tests prove cgroup enforcement where rootless cannot have it.
# 3. tests/e2e_scripts.sh: the README's flow (start.sh, curl, stop.sh).
# 4. tests/quadlet_units.sh: the Quadlet units through Quadlet's generator and
#    systemd-analyze verify (fast).
# 5. tests/quadlet_e2e.sh: the README's "Deploy on a server" under systemd and
#    Podman 5 in a trixie machine container (root only; skipped when its inputs
#    are unchanged since its last pass here).
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
	"$REPO/scripts/start.sh" --no-start --profile full
	ensure_test_packages
	svc_resolve

	# Where the integration tests find the service user's Podman.
	if is_root; then
		export CI_TEST_SVC_USER=$SVC_USER
	fi
	export CI_TEST_SVC_HOME=$SVC_HOME CI_TEST_SVC_RUNTIME=$SVC_RUNTIME
	# The MCP Python SDK's venv (ensure_mcp_client), for tests/mcp.rs.
	export CI_TEST_MCP_PYTHON=$MCP_PYTHON
	if is_root; then
		trap 'bash "$REPO/tests/rootful_podman.sh" stop' EXIT
		bash "$REPO/tests/rootful_podman.sh" start
		eval "$(bash "$REPO/tests/rootful_podman.sh" env)"
	fi

	log "== cargo test"
	(cd "$REPO" && cargo test --release --locked -- --test-threads=2 "$@")

	log "== end-to-end through the README's scripts"
	bash "$REPO/tests/e2e_scripts.sh"

	log "== Quadlet units"
	bash "$REPO/tests/quadlet_units.sh"

	log "== Quadlet deployment end to end (systemd + Podman 5)"
	if is_root; then
		bash "$REPO/tests/quadlet_e2e.sh"
	else
		log "skipped: tests/quadlet_e2e.sh needs root (it starts a rootful container)"
	fi
}

main "$@"
