#!/usr/bin/env bash
# e2e_scripts.sh — the README's quick start, checked as a person would run it:
# scripts/start.sh, the curl example (a = 100, then print(a) gives "100"),
# scripts/token.sh, scripts/restart.sh (the session survives it), an
# operator's token from start.sh --token-file (and back), then
# scripts/stop.sh leaves no worker
# container. Then the same service with gVisor workers
# (CODE_INTERPRETER_WORKER_RUNTIME=gvisor, as config.toml's workers.runtime):
# a new user's print(1), a plot, a file upload and download, a timeout (504)
# and the fresh session after it. Last, start.sh after every process of the
# service user was killed without a reboot (a machine image taken while the
# service ran). Stops the service on failure too.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

# shellcheck source=tests/checks.sh
source "$REPO/tests/checks.sh"

execute() { # execute USER CODE — prints the response body
	curl -sS --max-time 60 -X POST "$(gateway_url)/execute" \
		-H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
		-d "$(printf '{"user_uuid": "%s", "code": "%s"}' "$1" "$2")"
}

result_text_is() { # result_text_is EXPECTED JSON
	python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[2])["result_text"] == sys.argv[1] else 1)' "$1" "$2"
}

worker_containers() { # of the service's instance ("default" in config.toml)
	svc_podman ps -a -q --filter "label=io.code-interpreter.instance=default" | wc -l
}

cleanup() { "$REPO/scripts/stop.sh" >/dev/null 2>&1 || true; }
trap cleanup EXIT

json_field() { # json_field EXPR JSON — prints EXPR of the parsed JSON (d); a tuple space-separated
	python3 -c 'import json,sys; d=json.loads(sys.argv[2]); v=eval(sys.argv[1])
print(" ".join(map(str, v)) if isinstance(v, tuple) else v)' "$1" "$2"
}

gvisor_leg() {
	CODE_INTERPRETER_WORKER_RUNTIME=gvisor "$REPO/scripts/start.sh" --no-build
	local status body
	status=$(curl -sS -H "X-Auth-Token: $TOKEN" "$(gateway_url)/status")
	check "gVisor: /status isolation says gvisor, and its platform" \
		test "$(json_field 'd["isolation"]["runtime"], d["isolation"]["platform"] in ("systrap", "kvm", "ptrace")' "$status")" = "gvisor True"
	check "gVisor: a new user's print(1)" result_text_is $'1\n' "$(execute gv-user 'print(1)')"
	body=$(execute gv-user 'import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 1])\nplt.show()')
	check "gVisor: a plot comes back as a PNG" \
		test "$(json_field 'd["result_base64"][:12]' "$body")" = iVBORw0KGgoA
	curl -sS -X PUT "$(gateway_url)/files/upload.bin?user_uuid=gv-user" -H "X-Auth-Token: $TOKEN" \
		--data-binary 'gVisor file bytes' >/dev/null
	check "gVisor: an uploaded file is seen by the code" \
		result_text_is $'gVisor file bytes\n' "$(execute gv-user 'print(open(\"upload.bin\").read())')"
	execute gv-user 'open(\"made.txt\", \"w\").write(\"made under gVisor\")' >/dev/null
	check "gVisor: a file the code wrote downloads" test "$(curl -sS -H "X-Auth-Token: $TOKEN" \
		"$(gateway_url)/files/made.txt?user_uuid=gv-user")" = "made under gVisor"
	execute gv-user 'kept = 1' >/dev/null
	check "gVisor: code that runs too long gets 504" test "$(curl -sS -o /dev/null -w '%{http_code}' \
		--max-time 60 -X POST "$(gateway_url)/execute" -H "X-Auth-Token: $TOKEN" \
		-H 'Content-Type: application/json' \
		-d '{"user_uuid": "gv-user", "code": "while True: pass", "timeout": 3}')" = 504
	body=$(execute gv-user 'print(\"kept\" in globals())')
	check "gVisor: then a fresh session" test "$(json_field 'd["result_text"].strip(), d["session_created"]' "$body")" = "False True"
	"$REPO/scripts/stop.sh"
	check "gVisor: stop.sh leaves no worker container" test "$(worker_containers)" -eq 0
}

# Kill every live process of the service user; true once none is left. Killed
# again on each call: a process forked between listing and killing (Podman
# starting the pool's next worker) would otherwise outlive the rest.
no_svc_process() {
	local pids
	pids=$(svc_live_pids)
	[[ -z $pids ]] && return 0
	# shellcheck disable=SC2086 # one pid a word
	kill -KILL $pids 2>/dev/null
	return 1
}

# A machine restored from an image taken while the service ran, as CI's are:
# /run is on disk here, so every process of the service user is gone but its
# runtime directory is as it was (Podman's "no reboot yet" flag, workers it
# believes running). start.sh must still bring the service up.
stale_runtime_leg() {
	"$REPO/scripts/start.sh" --no-build
	execute stale-user 'x = 1' >/dev/null
	check "every process of $SVC_USER ended (kill -9, no reboot)" wait_for 20 no_svc_process
	check "start.sh brings the service up over the stale runtime directory" \
		"$REPO/scripts/start.sh" --no-build
	check "then a new user's print(1) gives 1" result_text_is $'1\n' "$(execute stale-user-2 'print(1)')"
	"$REPO/scripts/stop.sh"
	check "stop.sh leaves no worker container" test "$(worker_containers)" -eq 0
}

main() {
	"$REPO/scripts/start.sh"
	svc_resolve
	TOKEN=$("$REPO/scripts/token.sh")
	check "token.sh prints a 64-hex token" grep -Eq '^[0-9a-f]{64}$' <<<"$TOKEN"

	execute e2e-user 'a = 100' >/dev/null
	check 'a = 100 then print(a) gives "100"' result_text_is $'100\n' "$(execute e2e-user 'print(a)')"

	"$REPO/scripts/restart.sh"
	check "the gateway answers after restart.sh" gateway_healthy
	check "token.sh gives the same token after restart" test "$("$REPO/scripts/token.sh")" = "$TOKEN"
	check "the session survives restart.sh (print(a) still gives 100)" \
		result_text_is $'100\n' "$(execute e2e-user 'print(a)')"

	# An operator's own token (start.sh --token-file), then the generated one back.
	local generated=$TOKEN token_file
	token_file=$(mktemp)
	echo "operator-chosen-token-0123456789" >"$token_file"
	"$REPO/scripts/start.sh" --token-file "$token_file"
	TOKEN=operator-chosen-token-0123456789
	check "start.sh --token-file sets the token" test "$("$REPO/scripts/token.sh")" = "$TOKEN"
	check "the gateway takes it, and the session is kept" \
		result_text_is $'100\n' "$(execute e2e-user 'print(a)')"
	check "the previous token is refused" test "$(curl -s -o /dev/null -w '%{http_code}' \
		-H "X-Auth-Token: $generated" "$(gateway_url)/status")" = 401
	printf '%s\n' "$generated" >"$token_file"
	"$REPO/scripts/start.sh" --token-file "$token_file"
	rm -f "$token_file"
	TOKEN=$generated
	check "start.sh --token-file puts the generated token back" \
		test "$("$REPO/scripts/token.sh")" = "$TOKEN"

	"$REPO/scripts/stop.sh"
	check "stop.sh stops the gateway" bash -c "! curl -fsS --max-time 2 $(gateway_url)/health"
	check "stop.sh leaves no worker container" test "$(worker_containers)" -eq 0
	"$REPO/scripts/stop.sh"
	check "stop.sh is idempotent" true

	gvisor_leg
	stale_runtime_leg

	echo "e2e: $passed passed, $failed failed"
	((failed == 0))
}

main "$@"
