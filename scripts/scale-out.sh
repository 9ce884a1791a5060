#!/usr/bin/env bash
# scale-out.sh — renders the HAProxy configuration that spreads users over
# several gateways (README, "Scaling out"; deploy/haproxy/haproxy.cfg is its
# output for two example nodes). It prints the file; it starts nothing.
#
# Usage: scripts/scale-out.sh [options] NAME=HOST:PORT...
#   --listen ADDR:PORT        where HAProxy takes the clients' traffic (default *:3874)
#   --socket PATH             HAProxy's admin socket, for draining (default /run/haproxy/admin.sock)
#   --execution-timeout SECS  the nodes' [execution] timeout_secs (default 30)
#   --max-queue N             the nodes' [server] max_queue_per_user (default 8)
#   --queue-timeout SECS      the nodes' [pool] queue_timeout_secs (default 30)
#   --session-idle SECS       the nodes' [sessions] idle_timeout_secs (default 1800)
#   --check-interval MS       health check period of each node (default 2000)
#   --no-chroot               run as the invoking user without chroot (tests)
# Example: scripts/scale-out.sh gw-1=10.0.0.11:3874 gw-2=10.0.0.12:3874 >/etc/haproxy/haproxy.cfg
#
# Every node runs its own gateway, rootless Podman and workers, knows nothing
# of the others, and has the same token. HAProxy sends every request of a user
# to one node: a consistent hash of the user decides a newcomer's node, and a
# stick table keeps the user there while its session may live.
set -euo pipefail

die() {
	printf 'scale-out.sh: %s\n' "$*" >&2
	exit 2
}

command="scripts/scale-out.sh $*"
listen='*:3874' socket=/run/haproxy/admin.sock execution=30 max_queue=8 queue_timeout=30
idle=1800 interval=2000 chroot=yes nodes=()
while (($#)); do
	case $1 in
	--listen) listen=${2:?--listen needs ADDR:PORT} && shift ;;
	--socket) socket=${2:?--socket needs a path} && shift ;;
	--execution-timeout) execution=${2:?} && shift ;;
	--max-queue) max_queue=${2:?} && shift ;;
	--queue-timeout) queue_timeout=${2:?} && shift ;;
	--session-idle) idle=${2:?} && shift ;;
	--check-interval) interval=${2:?} && shift ;;
	--no-chroot) chroot=no ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	-*) die "unknown option $1 (see --help)" ;;
	*) nodes+=("$1") ;;
	esac
	shift
done
((${#nodes[@]})) || die "name at least one node as NAME=HOST:PORT (see --help)"
for value in "$execution" "$max_queue" "$queue_timeout" "$idle" "$interval"; do
	[[ $value =~ ^[0-9]+$ ]] || die "timeouts, counts and intervals are whole numbers, not '$value'"
done
((interval >= 100)) || die "--check-interval is at least 100 ms"
[[ $listen =~ ^[^[:space:]]+:[0-9]+$ ]] || die "--listen is ADDR:PORT, not '$listen'"
[[ $socket =~ ^/[^[:space:]]+$ ]] || die "--socket is an absolute path without spaces"

# A response may come after the user's queued requests ran (each up to the
# execution timeout), a wait for a worker and a worker's start: HAProxy must
# not cut it before the gateway would answer.
response_timeout=$(((max_queue + 1) * execution + queue_timeout + 60))

servers="" names=" "
for node in "${nodes[@]}"; do
	[[ $node =~ ^([A-Za-z0-9][A-Za-z0-9._-]{0,31})=([^[:space:]=]+:[0-9]+)$ ]] ||
		die "a node is NAME=HOST:PORT (NAME: letters, digits, '.', '_', '-'), not '$node'"
	name=${BASH_REMATCH[1]} address=${BASH_REMATCH[2]}
	[[ $names != *" $name "* ]] || die "node $name is named twice"
	names+="$name "
	servers+="    server $name $address"$'\n'
done

if [[ $chroot == yes ]]; then
	process="    # Debian's package creates the user and the empty chroot.
    chroot /var/lib/haproxy
    user haproxy
    group haproxy"
else
	process="    # --no-chroot: runs as whoever starts it (the scale-out test)."
fi

cat <<EOF
# HAProxy 2.6 (Debian 12's haproxy package) in front of several code-interpreter
# gateways, rendered by: $command
# README.md, "Scaling out", explains it.
# Check a change with: haproxy -c -f haproxy.cfg

global
$process
    # The admin socket: "set server gateways/NAME state drain" drains a node.
    stats socket $socket mode 600 level admin
    log stderr format short local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # A request head must arrive within this; a kept-alive client may idle for the other.
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout connect 5s
    # Longest silence of either side while a response is pending:
    # (max_queue_per_user + 1) x execution timeout + worker queue + 60 s start.
    timeout client ${response_timeout}s
    timeout server ${response_timeout}s
    # Errors of the balancer itself, as JSON like the gateway's own.
    http-error status 502 content-type application/json string '{"detail":"the node serving this user failed during the request; its session is lost, the next request starts a fresh one on another node"}'
    http-error status 503 content-type application/json string '{"detail":"no gateway node is available; retry later"}'
    http-error status 504 content-type application/json string '{"detail":"the node serving this user did not answer in time"}'

frontend api
    bind $listen
    # No compression and no response buffering: server-sent events of
    # /execute/stream are forwarded as the gateway sends them. The token
    # (X-Auth-Token) passes through untouched: every node checks it.
    default_backend gateways

backend gateways
    # Requests that carry a user (under /api/v1 too).
    acl user_route path -m reg ^(/api/v1)?/(execute|execute/stream|release|files|files/.*|mcp|mcp/.*)\$
    acl mcp path -m reg ^(/api/v1)?/mcp(/.*)?\$
    # The user: the user_uuid query parameter, else the JSON body's user_uuid
    # (POST only; HAProxy waits for the body, at most one buffer of it), else
    # the X-User-UUID header (MCP clients, which have no user_uuid of their own).
    http-request wait-for-body time 10s if METH_POST user_route
    http-request set-var(txn.user) url_param(user_uuid),url_dec if { url_param(user_uuid) -m found }
    http-request set-var(txn.user) req.body,json_query('\$.user_uuid') if METH_POST user_route !{ var(txn.user) -m found }
    http-request set-var(txn.user) req.hdr(X-User-UUID) if !{ var(txn.user) -m found } { req.hdr(X-User-UUID) -m found }
    # A user route without a user would be answered 400 by any node; here it
    # could land on the wrong node (e.g. user_uuid beyond the first 15 KiB of
    # a large body), so it is refused. MCP requests without one go anywhere.
    http-request deny deny_status 400 content-type application/json string '{"detail":"the balancer found no user_uuid: send it in the query string (?user_uuid=), the X-User-UUID header, or early in the JSON body (HAProxy reads its first 15 KiB)"}' if user_route !mcp !{ var(txn.user) -m found }

    # A newcomer's node: a consistent hash of the user. Adding or removing a
    # node moves only the users whose hash points to it (1/N of them).
    balance hash var(txn.user)
    hash-type consistent
    # Requests without a user (/status, /health, the playground page) go anywhere.

    # A user who has a node stays on it while its session may live (the
    # gateway's idle timeout), even when the ring changes: a node back from a
    # failure takes no user who got a fresh session elsewhere meanwhile, and a
    # draining node keeps its users until their sessions end. The table lives
    # in this HAProxy process: a restart or reload (e.g. to add a node) forgets
    # it, and the hash decides again. Keys are whole user_uuids (256 bytes at most).
    stick-table type string len 256 size 1m expire ${idle}s
    stick on var(txn.user)

    # A node that does not answer /health is out of the ring within two checks.
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
    default-server check inter ${interval} fall 2 rise 2
    # A request that could not reach its node (refused, down) goes to another
    # node, where the user gets a fresh session (session_created: true). One
    # that reached its node when the node failed is not replayed: it is
    # answered 502, or, when it was not the first request of its client
    # connection, that connection is closed without an answer (HAProxy's way
    # of letting a keep-alive client retry).
    retries 2
    option redispatch 1
    # Which node answered, for the client and the operator.
    http-response set-header X-Node %[srv_name]
    # "GET /status" with the header "X-Node: NAME" asks that node.
    acl status path -m reg ^(/api/v1)?/status\$
$(for node in "${nodes[@]}"; do
		name=${node%%=*}
		printf '    use-server %s if status { req.hdr(X-Node) -m str %s }\n' "$name" "$name"
	done)
$servers
EOF
