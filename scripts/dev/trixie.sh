# shellcheck shell=bash
# shellcheck disable=SC2016 # sh -c '...' scripts here get their values as "$1"...
# trixie.sh — Debian trixie artefacts for testing the Quadlet deployment on a
# bookworm host, cached under $BASE_CACHE_DIR (sourced after scripts/lib.sh).
#
# Bookworm's Podman (4.3) has no Quadlet, and installing trixie's podman on the
# host would upgrade libc6 and systemd. So:
#   trixie_quadlet       the quadlet generator from trixie's podman .deb (it
#                        runs on bookworm as is), fetched with a private apt
#                        state: the host's apt configuration is not touched;
#   trixie_rootfs        a debootstrapped trixie with systemd and Podman 5, the
#                        root of the end-to-end test's "machine".
# Both print the path of what they made and cache it; a second call is instant.

TRIXIE_APT_DIR=$BASE_CACHE_DIR/trixie-apt
# Everything the end-to-end machine needs: systemd as PID 1 with logind and a
# user D-Bus (for lingering users), Podman 5 with its helpers (passt for
# rootless networking, nftables for netavark), and what scripts/install.sh and
# the test use. Also scripts/lib.sh's required_packages, so install.sh finds
# nothing to install and the machine needs no network.
TRIXIE_PACKAGES=(systemd systemd-sysv dbus dbus-user-session libpam-systemd
	podman crun runc conmon uidmap passt slirp4netns catatonit aardvark-dns
	netavark nftables golang-github-containers-common debootstrap
	curl ca-certificates util-linux iproute2 procps)

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

# trixie_rootfs: prints the path of a cached tarball of a trixie root
# filesystem with systemd and Podman 5 (debootstrap, about 90 s the first
# time). The file name carries a hash of the package list.
trixie_rootfs() {
	local key tarball rootfs
	key=$(printf '%s\n' "${TRIXIE_PACKAGES[@]}" | sha256sum | cut -c1-12)
	tarball=$BASE_CACHE_DIR/trixie-systemd-podman-$key.tar
	if [[ -f $tarball ]]; then
		echo "$tarball"
		return 0
	fi
	log "trixie rootfs: debootstrap --variant=minbase trixie (about 90 s)" >&2
	as_root mkdir -p "$BASE_CACHE_DIR"
	rootfs=$(as_root mktemp -d "$BASE_CACHE_DIR/trixie-rootfs.XXXXXX")
	if ! as_root debootstrap --variant=minbase --include="$(
		IFS=,
		echo "${TRIXIE_PACKAGES[*]}"
	)" trixie "$rootfs" "$(debian_mirror)" >"$BASE_CACHE_DIR/trixie-debootstrap.log" 2>&1; then
		tail -n 20 "$BASE_CACHE_DIR/trixie-debootstrap.log" >&2
		as_root rm -rf "$rootfs"
		die "debootstrap of trixie failed (log: $BASE_CACHE_DIR/trixie-debootstrap.log)"
	fi
	slim_rootfs "$rootfs"
	as_root sh -c 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb' sh "$rootfs"
	as_root tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
	as_root mv "$tarball.tmp" "$tarball"
	as_root rm -rf "$rootfs"
	echo "$tarball"
}
