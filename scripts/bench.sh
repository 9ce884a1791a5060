#!/usr/bin/env bash
# bench.sh — the published benchmark, rerunnable: see docs/benchmarks.md.
#
# 1. Prepares the baseline's Python (a venv under /var/cache/code-interpreter,
#    ipykernel + jupyter_client + numpy at exactly the worker image's versions
#    from containerfiles/worker/requirements.lock; skipped when up to date).
# 2. Unless --url is given, starts a dedicated gateway (instance "bench", its
#    own port, runtime and state directories) as the service user, with a warm
#    pool of USERS workers, and removes it and its workers at the end.
# 3. Runs `code-interpreter bench --baseline` at saturation (think 0 0) and with
#    the original's think time (0.1-0.5 s), then measures the idle workers'
#    memory, and the cold start of each worker from the gateway's log.
#
# 4. With --default-service instead: issue 14's figures against a gateway with
#    the shipped [pool] defaults (bursts of 30 and 100 new users, the
#    original's workload with sessions created inside the run, the cold-start
#    profile, first import pandas and plot, idle memory), then with preload.
#
# 5. With --profiles: the cold start and idle memory of the default and the
#    full worker image (build the full one first: scripts/start.sh --profile full).
#
# 6. With --runtimes: runc and gVisor side by side (issue 18): the cold start,
#    a trivial /execute round trip, a new session's first import pandas, and
#    the original's workload (installs runsc and its Podman service if needed).
#
# 7. With --scale-out: two gateways (instances bench-a and bench-b) behind
#    HAProxy as scripts/scale-out.sh renders it: the same workload direct to
#    one gateway, then through HAProxy across both (README, "Scaling out").
#
# Usage: scripts/bench.sh [--url URL] [--plot DIR] [--json DIR] [--default-service | --profiles | --runtimes | --scale-out] [-- extra bench args]
#        scripts/bench.sh --venv-only   (step 1 only)
# Env: BENCH_USERS (30), BENCH_REQUESTS (100), BENCH_SCENARIO (mixed), BENCH_PORT (3875).
# Needs the host prepared by scripts/start.sh --no-start (Podman, worker image).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USERS=${BENCH_USERS:-30}
REQUESTS=${BENCH_REQUESTS:-100}
SCENARIO=${BENCH_SCENARIO:-mixed}
PORT=${BENCH_PORT:-3875}
VENV=${CODE_INTERPRETER_BENCH_VENV:-$BASE_CACHE_DIR/bench-venv}
INSTANCE=bench
LOCK=$REPO/containerfiles/worker/requirements.lock
# The bench gateway's pid, scratch and runtime directories (globals: the EXIT
# trap uses them), the bench binary, the token and extra bench arguments.
pid="" scratch="" run_dir="" bin="" token="" extra=()

# ensure_venv: the baseline's Python, pinned to the worker image's lock.
ensure_venv() {
	local stamp want
	want=$(sha256sum "$LOCK" | cut -c1-16)
	stamp=$VENV/.lock-hash
	if [[ -x $VENV/bin/python && $(cat "$stamp" 2>/dev/null) == "$want" ]]; then
		log "baseline venv: $VENV up to date"
		return
	fi
	log "baseline venv: creating $VENV (ipykernel, jupyter_client, numpy as pinned in $LOCK)"
	rm -rf "$VENV"
	/usr/bin/python3 -m venv "$VENV"
	# The lock's name==version lines, without hashes: constraints for pip.
	grep -Eo '^[A-Za-z0-9_.-]+==[^ \\]+' "$LOCK" >"$VENV/constraints.txt"
	"$VENV/bin/pip" install --quiet --only-binary=:all: -c "$VENV/constraints.txt" \
		ipykernel jupyter_client numpy
	echo "$want" >"$stamp"
}

# worker_memory: PSS and RSS of every process of this instance's workers
# (conmon, init, entrypoint, kernel), summed.
worker_memory() {
	local ids conmons
	mapfile -t ids < <(svc_podman ps -q --filter "label=io.code-interpreter.instance=$INSTANCE")
	((${#ids[@]})) || { log "worker memory: no workers"; return; }
	mapfile -t conmons < <(svc_podman inspect -f '{{.State.ConmonPid}}' "${ids[@]}")
	ps -e -o pid=,ppid= | awk -v roots="${conmons[*]}" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
		{ parent[$1] = $2 }
		END {
			changed = 1
			while (changed) { changed = 0
				for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
			for (p in keep) print p
		}' | while read -r proc; do
		cat "/proc/$proc/smaps_rollup" 2>/dev/null || true
	done | awk -v n="${#ids[@]}" '
		/^Pss:/ { pss += $2 } /^Rss:/ { rss += $2 }
		END { printf "worker memory: %d idle workers: PSS %.0f MiB in total (%.1f MiB each), RSS %.0f MiB in total\n", n, pss/1024, pss/1024/n, rss/1024 }'
}

# cold_starts LOG: percentiles of "worker ready ms=N" (container create to the
# kernel's first reply) in the gateway's log.
cold_starts() {
	grep 'worker ready' "$1" | grep -o ' ms=[0-9]*' | cut -d= -f2 | sort -n | awk '
		{ v[NR] = $1 }
		END { if (NR) printf "cold worker start (container create to first kernel reply), %d workers: p50 %d ms, p95 %d ms, max %d ms\n",
			NR, v[int((NR + 1) / 2)], v[int(NR * 0.95 + 0.999)], v[NR] }'
}

# start_gateway POOL_TOML MEMORY_MB IMAGE RUNTIME: a dedicated bench gateway
# (instance "bench", port $PORT) with these [pool] lines (empty: the shipped
# defaults), optionally a memory cap, a worker image and a worker runtime;
# sets pid, scratch and run_dir; stop_gateway (or the EXIT trap) removes it.
start_gateway() {
	local pool=$1 memory=${2:-} image=${3:-} runtime=${4:-}
	svc_exists || die "no service user $SVC_USER: run scripts/start.sh --no-start first"
	podman_ping || die "the Podman socket $PODMAN_SOCK does not answer: run scripts/start.sh --no-start"
	scratch=$(mktemp -d /tmp/ci-bench.XXXXXX)
	chmod 755 "$scratch"
	chown "$SVC_UID:$SVC_GID" "$scratch"
	run_dir=$SVC_RUNTIME/code-interpreter-$INSTANCE
	cp "$bin" "$scratch/code-interpreter"
	{
		printf '[server]\nlisten = "127.0.0.1:%s"\n' "$PORT"
		printf '[paths]\nruntime_dir = "%s"\nstate_dir = "%s-state"\n' "$run_dir" "$run_dir"
		printf '[worker]\ninstance = "%s"\n' "$INSTANCE"
		[[ -n $image ]] && printf 'image = "%s"\n' "$image"
		[[ -n $runtime ]] && printf 'runtime = "%s"\n' "$runtime"
		[[ -n $memory ]] && printf '[limits]\nmemory_mb = %s\n' "$memory"
		printf '[pool]\n%s\n' "$pool"
	} >"$scratch/config.toml"
	chmod 644 "$scratch/config.toml"
	trap stop_gateway EXIT
	SVC_ENV+=(CODE_INTERPRETER_TOKEN="$token" RUST_LOG=info)
	svc_daemon "$scratch/gateway.pid" "$scratch/gateway.log" \
		"$scratch/code-interpreter" serve --config "$scratch/config.toml"
	wait_for 10 test -s "$scratch/gateway.pid" || die "the bench gateway did not start"
	pid=$(<"$scratch/gateway.pid")
	wait_for 30 curl -fs "http://127.0.0.1:$PORT/health" -o /dev/null ||
		die "the bench gateway is not healthy: $(cat "$scratch/gateway.log")"
	log "bench gateway: pid $pid at http://127.0.0.1:$PORT, [pool] ${pool:-(shipped defaults)}"
}

stop_gateway() {
	if [[ -n ${pid:-} ]] && kill -TERM "$pid" 2>/dev/null; then
		wait_for 30 proc_gone "$pid" || warn "the bench gateway (pid $pid) is still running"
	fi
	pid=""
	local ids
	mapfile -t ids < <(svc_podman ps -aq --filter "label=io.code-interpreter.instance=$INSTANCE")
	((${#ids[@]})) && svc_podman rm -f -t 0 "${ids[@]}" >/dev/null
	[[ -n ${run_dir:-} ]] && svc_run rm -rf "$run_dir" "$run_dir-state"
	[[ -n ${scratch:-} ]] && rm -rf "$scratch"
	scratch=""
}

# measure_default_service: issue 14's figures against the pool as shipped
# (config.toml's [pool] defaults): bursts of 30 and 100 new users, the
# original's workload with its sessions created inside the run, quiet cold
# starts and their phases, a new session's first import pandas and plot,
# and the idle workers' memory; then the same first steps and memory with
# pool.preload = ["numpy", "pandas", "matplotlib.pyplot"].
measure_default_service() {
	local url=http://127.0.0.1:$PORT
	log "== default service: bursts, cold starts, first imports (load: $(cut -d' ' -f1-3 /proc/loadavg))"
	"$bin" bench --url "$url" --no-workload --burst 30 --burst 100 --new-users 20 --first-imports 5 "${extra[@]}"
	worker_memory
	log "== default service: the original's workload, sessions created inside the run"
	"$bin" bench --url "$url" --no-wait --users 30 --requests 100 --think 0.1 0.5 --new-users 0 \
		--gateway-pid "$pid" "${extra[@]}"
	stop_gateway
	start_gateway 'preload = ["numpy", "pandas", "matplotlib.pyplot"]'
	log "== pool.preload = numpy, pandas, matplotlib.pyplot: first imports"
	"$bin" bench --url "$url" --no-workload --new-users 0 --first-imports 5 "${extra[@]}"
	worker_memory
}

# measure_profiles: the cold start (20 quiet starts) and the idle memory of
# both worker profiles, the default image and the full one.
measure_profiles() {
	local image
	for image in "$WORKER_IMAGE" "$FULL_IMAGE"; do
		start_gateway "min_idle = 2" "" "$image"
		log "== profile $image: $(($(svc_podman image inspect --format '{{.Size}}' "$image") / 1000000)) MB"
		"$bin" bench --url "http://127.0.0.1:$PORT" --no-workload --new-users 20 "${extra[@]}"
		worker_memory
		stop_gateway
	done
}

# measure_runtimes: runc and gVisor side by side, each with the shipped pool
# of 32 idle workers (what min_idle = "auto" keeps on this host): 20 quiet
# cold starts and 5 first `import pandas`; one user's trivial requests back
# to back (the round trip); the original's workload (30 x 100, think 0.1-0.5 s)
# with its sessions created inside the run.
measure_runtimes() {
	local runtime url=http://127.0.0.1:$PORT
	ensure_gvisor
	for runtime in runc gvisor; do
		start_gateway "min_idle = 32" "" "" "$runtime"
		log "== runtime $runtime: $(curl -fsS -H "X-Auth-Token: $token" "$url/status" |
			python3 -c 'import json,sys; print(json.load(sys.stdin)["isolation"])') (load: $(cut -d' ' -f1-3 /proc/loadavg))"
		"$bin" bench --url "$url" --no-workload --new-users 20 --first-imports 5 "${extra[@]}"
		log "== runtime $runtime: trivial round trips, one user, no think time"
		"$bin" bench --url "$url" --users 1 --requests 200 --think 0 0 --scenario arithmetic \
			--new-users 0 "${extra[@]}"
		log "== runtime $runtime: the original's workload, sessions created inside the run"
		"$bin" bench --url "$url" --no-wait --users 30 --requests 100 --think 0.1 0.5 --new-users 0 \
			--gateway-pid "$pid" "${extra[@]}"
		stop_gateway
	done
}

# measure_scale_out: the workload (saturation and think time) direct to one
# gateway, then through HAProxy over two, each node with a warm pool of USERS.
measure_scale_out() {
	# lb_dir and haproxy_pid are globals: the EXIT trap needs them.
	local pool nodes=() name port lb_port=$((PORT + 2)) mode think
	haproxy_pid=
	pool=$(printf 'min_idle = %s\nmax_workers = %s' "$USERS" "$USERS")
	lb_dir=$(mktemp -d /tmp/ci-bench-haproxy.XXXXXX)
	# Both gateways and HAProxy go at the end, whatever happens.
	stop_scale_out() {
		[[ -n $haproxy_pid ]] && kill "$haproxy_pid" 2>/dev/null && wait "$haproxy_pid" 2>/dev/null
		haproxy_pid=""
		local node
		for node in a b; do
			eval "pid=\${pid_$node:-} scratch=\${scratch_$node:-} run_dir=\${run_dir_$node:-}"
			INSTANCE=bench-$node stop_gateway
		done
		rm -rf "$lb_dir"
	}
	trap stop_scale_out EXIT
	for name in a b; do
		port=$PORT
		[[ $name == b ]] && port=$((PORT + 1))
		INSTANCE=bench-$name PORT=$port start_gateway "$pool" 512
		trap stop_scale_out EXIT
		eval "pid_$name=\$pid scratch_$name=\$scratch run_dir_$name=\$run_dir"
		nodes+=("$name=127.0.0.1:$port")
	done
	"$REPO/scripts/scale-out.sh" --no-chroot --listen "127.0.0.1:$lb_port" \
		--socket "$lb_dir/admin.sock" "${nodes[@]}" >"$lb_dir/haproxy.cfg"
	/usr/sbin/haproxy -db -f "$lb_dir/haproxy.cfg" >"$lb_dir/haproxy.log" 2>&1 &
	haproxy_pid=$!
	wait_for 10 curl -fs "http://127.0.0.1:$lb_port/health" -o /dev/null ||
		die "HAProxy did not start: $(cat "$lb_dir/haproxy.log")"
	log "HAProxy $(/usr/sbin/haproxy -v | head -1 | cut -d' ' -f3) at http://127.0.0.1:$lb_port over ${nodes[*]}"
	for mode in direct balanced; do
		local url=http://127.0.0.1:$PORT args=(--gateway-pid "$pid_a")
		[[ $mode == balanced ]] && url=http://127.0.0.1:$lb_port args=()
		for think in "0 0" "0.1 0.5"; do
			log "== $mode, $url, think $think s, load: $(cut -d' ' -f1-3 /proc/loadavg)"
			# shellcheck disable=SC2086 # $think is two numbers
			"$bin" bench --url "$url" --users "$USERS" --requests "$REQUESTS" \
				--scenario "$SCENARIO" --think $think --new-users 0 "${args[@]}" "${extra[@]}"
		done
	done
	local ticks requests
	ticks=$(awk '{print $14 + $15}' "/proc/$haproxy_pid/stat")
	requests=$(grep -c 'POST /execute' "$lb_dir/haproxy.log" || true)
	log "HAProxy: $requests requests to /execute, per node: $(grep 'POST /execute' "$lb_dir/haproxy.log" |
		grep -o 'gateways/[a-z]*' | sort | uniq -c | tr -s ' \n' ' ')"
	log "HAProxy CPU: $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
		'BEGIN { printf "%.2f s, %.3f ms/request", t / hz, n ? 1000 * t / hz / n : 0 }')"
	stop_scale_out
	trap - EXIT
}

main() {
	local url="" plot="" json="" default_service=0
	while (($#)); do
		case $1 in
		--url) url=$2; shift ;;
		--plot) plot=$2; shift ;;
		--json) json=$2; shift ;;
		--venv-only) ensure_venv; return ;;
		--default-service) default_service=1 ;;
		--profiles) default_service=2 ;;
		--runtimes) default_service=3 ;;
		--scale-out) default_service=4 ;;
		--) shift; extra=("$@"); break ;;
		*) die "unknown argument $1 (usage: scripts/bench.sh [--url URL] [--plot DIR] [--json DIR] [--default-service | --profiles | --runtimes | --scale-out] [-- bench args])" ;;
		esac
		shift
	done
	ensure_venv
	# The default features include `bench` (scripts/lib.sh builds the installed gateway without).
	(cd "$REPO" && cargo build --release --locked --quiet)
	bin=$REPO/target/release/code-interpreter
	token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
	export CODE_INTERPRETER_TOKEN=$token CODE_INTERPRETER_BENCH_PYTHON=$VENV/bin/python

	if ((default_service)); then
		[[ -z $url ]] || die "--default-service, --profiles, --runtimes and --scale-out start their own gateways: drop --url"
		if ((default_service == 4)); then
			measure_scale_out
		elif ((default_service == 3)); then
			measure_runtimes
		elif ((default_service == 2)); then
			measure_profiles
		else
			start_gateway ""
			measure_default_service
		fi
		return
	fi
	if [[ -z $url ]]; then
		start_gateway "$(printf 'min_idle = %s\nmax_workers = %s' "$USERS" "$USERS")" 512
		url=http://127.0.0.1:$PORT
	fi

	local common=(--url "$url" --users "$USERS" --requests "$REQUESTS" --scenario "$SCENARIO" --baseline)
	[[ -n $pid ]] && common+=(--gateway-pid "$pid")
	local mode think out
	for mode in saturation think; do
		case $mode in
		saturation) think=(0 0) ;;
		think) think=(0.1 0.5) ;;
		esac
		out=()
		[[ -n $plot ]] && out+=(--plot "$plot/$mode")
		log "== $mode (think ${think[*]} s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
		if [[ -n $json ]]; then
			mkdir -p "$json"
			"$bin" bench "${common[@]}" --think "${think[@]}" "${out[@]}" --json "${extra[@]}" | tee "$json/$mode.json"
		else
			"$bin" bench "${common[@]}" --think "${think[@]}" "${out[@]}" "${extra[@]}"
		fi
	done
	if [[ -n $pid ]]; then
		worker_memory
		cold_starts "$scratch/gateway.log"
		log "gateway RSS now $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") KiB, peak $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") KiB"
	fi
}

main "$@"
