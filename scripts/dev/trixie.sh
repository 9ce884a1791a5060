# shellcheck shell=bash
# shellcheck disable=SC2016 # sh -c '...' scripts here get their values as "$1"...
# trixie.sh — Debian trixie artefacts for testing the Quadlet deployment on a
# bookworm host, cached under $BASE_CACHE_DIR (sourced after scripts/lib.sh).
#
# Bookworm's Podman (4.3) has no Quadlet, and installing trixie's podman on the
# host would upgrade libc6 and systemd. So trixie_quadlet fetches the quadlet
# generator from trixie's podman .deb (it runs on bookworm as is) with a
# private apt state: the host's apt configuration is not touched. It prints
# the path and caches it; a second call is instant. (The end-to-end test's
# trixie machine is scripts/dev/machine-rootfs.sh's.)

TRIXIE_APT_DIR=$BASE_CACHE_DIR/trixie-apt

# trixie_apt ARGS...: apt-get with trixie as its only source and every piece of
# state (lists, archives) in $TRIXIE_APT_DIR.
trixie_apt() {
	local d=$TRIXIE_APT_DIR
	as_root apt-get -q -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::Status=/dev/null \
		-o APT::Default-Release=trixie -o Debug::NoLocking=1 "$@"
}

# trixie_quadlet: prints the path of a quadlet binary (Podman 5, from trixie).
trixie_quadlet() {
	local d=$TRIXIE_APT_DIR deb
	if [[ -x $d/podman/usr/libexec/podman/quadlet ]]; then
		echo "$d/podman/usr/libexec/podman/quadlet"
		return 0
	fi
	log "quadlet: fetching trixie's podman .deb (private apt state in $d)" >&2
	as_root mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) trixie main" |
		as_root tee "$d/sources.list" >/dev/null
	trixie_apt update >"$d/apt.log" 2>&1 || {
		tail -n 20 "$d/apt.log" >&2
		die "apt-get update for trixie failed (log: $d/apt.log)"
	}
	(cd "$d/debs" && trixie_apt download podman) >>"$d/apt.log" 2>&1 ||
		die "apt-get download podman failed (log: $d/apt.log)"
	deb=$(find "$d/debs" -name 'podman_*.deb' | sort | tail -n 1)
	as_root rm -rf "$d/podman.tmp"
	as_root dpkg-deb -x "$deb" "$d/podman.tmp"
	as_root rm -rf "$d/podman"
	as_root mv "$d/podman.tmp" "$d/podman"
	log "quadlet: $(basename "$deb") unpacked" >&2
	echo "$d/podman/usr/libexec/podman/quadlet"
}
