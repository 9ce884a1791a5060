#!/usr/bin/env bash
# test.sh — the whole test suite, as CI runs it (.ci/run calls this).
#
# 1. scripts/start.sh --no-start --profile full --gvisor: packages, service
#    user, rootless Podman and its REST socket, gVisor (runsc) and its workers'
#    Podman service, the worker images of both profiles (cached by input
#    hash), release build;
#    then Debian's chromium and chromium-driver for the browser test, and
#    Debian's haproxy for the scale-out test.
# 2. cargo test --release: unit tests, then integration tests that start real
#    gateways as the service user against real rootless Podman. As root, a
#    private rootful Podman (tests/rootful_podman.sh) also runs, so the
#    limits tests prove cgroup enforcement where rootless cannot have it.
#    Then the sandbox, hostile and core tests again with gVisor workers
#    (CI_TEST_RUNTIME=gvisor; tests/gvisor.rs compares the two runtimes).
# 3. tests/e2e_scripts.sh: the README's flow (start.sh, curl, stop.sh), then
#    the same service with gVisor workers.
# 4. tests/quadlet_units.sh: the Quadlet units through Quadlet's generator and
#    systemd-analyze verify, and the plain unit through the latter (fast).
# 5. tests/systemd_e2e.sh: the README's "Deploy on a server" under systemd in
#    machine containers (root only; each skipped when its inputs are unchanged
#    since its last pass here): trixie (Podman 5.4, the Quadlet units) and
#    bookworm (Podman 4.3, the plain unit).
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
	"$REPO/scripts/start.sh" --no-start --profile full --gvisor
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

	log "== the sandbox and core tests again, with gVisor workers (workers.runtime = \"gvisor\")"
	(cd "$REPO" && CI_TEST_RUNTIME=gvisor cargo test --release --locked --test sandbox \
		--test hostile --test sessions --test stream --test files -- --test-threads=2 "$@")

	log "== end-to-end through the README's scripts"
	bash "$REPO/tests/e2e_scripts.sh"

	log "== systemd units (Quadlet and plain)"
	bash "$REPO/tests/quadlet_units.sh"

	log "== systemd deployment end to end: Quadlet (trixie, Podman 5), plain unit (bookworm, Podman 4.3)"
	if is_root; then
		bash "$REPO/tests/systemd_e2e.sh" trixie
		bash "$REPO/tests/systemd_e2e.sh" bookworm
	else
		log "skipped: tests/systemd_e2e.sh needs root (it starts rootful containers)"
	fi
}

main "$@"
