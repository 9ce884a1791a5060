# shellcheck shell=bash
# checks.sh — the counted checks of the shell tests (sourced). Each test ends
# with a "NAME: $passed passed, $failed failed" line.

passed=0
failed=0
check() { # check NAME COMMAND... — runs one check and counts it
	local name=$1
	shift
	if "$@"; then
		passed=$((passed + 1))
		log "ok - $name"
	else
		failed=$((failed + 1))
		log "FAILED - $name"
	fi
}
