# shellcheck shell=bash
# shellcheck disable=SC2016 # sh -c '...' scripts here get their values as "$1"...
# machine-rootfs.sh — root filesystems of the Debian "machines" that the
# systemd end-to-end test (tests/systemd_e2e.sh) boots, one per suite, made
# with debootstrap from this host's mirror and cached under $BASE_CACHE_DIR
# (sourced after scripts/lib.sh).
#
#   trixie    systemd 257, Podman 5.4: the Quadlet deployment
#   bookworm  systemd 252, Podman 4.3 (no Quadlet): the plain unit
#
# machine_packages SUITE prints what goes into SUITE's machine, machine_rootfs
# SUITE the path of its tarball (about 90 s the first time, then instant).

# Both machines: systemd as PID 1 with logind and a user D-Bus (for lingering
# users), Podman with its helpers (nftables for netavark), and what
# scripts/install.sh and the test use. Also scripts/lib.sh's
# required_packages, so install.sh finds nothing to install and the machine
# needs no network. runsc for the gVisor phase (workers.runtime = "gvisor").
MACHINE_PACKAGES=(systemd systemd-sysv dbus dbus-user-session libpam-systemd
	podman crun runc conmon uidmap slirp4netns catatonit aardvark-dns
	netavark nftables golang-github-containers-common debootstrap
	curl ca-certificates util-linux iproute2 procps runsc)

# machine_packages SUITE: the package list of SUITE's machine, one a line.
# Trixie's Podman 5 networks rootless containers with pasta (passt); Podman
# 4.3 has no pasta and uses slirp4netns.
machine_packages() {
	case $1 in
	trixie) printf '%s\n' "${MACHINE_PACKAGES[@]:0:10}" passt "${MACHINE_PACKAGES[@]:10}" ;;
	bookworm) printf '%s\n' "${MACHINE_PACKAGES[@]}" ;;
	*) die "no machine for Debian suite $1 (trixie or bookworm)" ;;
	esac
}

# machine_rootfs SUITE: prints the path of a cached tarball of SUITE's root
# filesystem. The file name carries a hash of the package list.
machine_rootfs() {
	local suite=$1 key tarball rootfs pkgs log
	pkgs=$(machine_packages "$suite")
	key=$(sha256sum <<<"$pkgs" | cut -c1-12)
	tarball=$BASE_CACHE_DIR/$suite-systemd-podman-$key.tar
	if [[ -f $tarball ]]; then
		echo "$tarball"
		return 0
	fi
	log "$suite rootfs: debootstrap --variant=minbase $suite (about 90 s)" >&2
	as_root mkdir -p "$BASE_CACHE_DIR"
	log=$BASE_CACHE_DIR/$suite-debootstrap.log
	rootfs=$(as_root mktemp -d "$BASE_CACHE_DIR/$suite-rootfs.XXXXXX")
	if ! as_root debootstrap --variant=minbase --include="$(paste -sd, <<<"$pkgs")" \
		"$suite" "$rootfs" "$(debian_mirror)" >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		as_root rm -rf "$rootfs"
		die "debootstrap of $suite failed (log: $log)"
	fi
	slim_rootfs "$rootfs"
	as_root sh -c 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb' sh "$rootfs"
	as_root tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
	as_root mv "$tarball.tmp" "$tarball"
	as_root rm -rf "$rootfs"
	echo "$tarball"
}
