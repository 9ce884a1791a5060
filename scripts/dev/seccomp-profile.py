#!/usr/bin/env python3
"""Regenerates containerfiles/seccomp/worker.json: Podman's default seccomp
profile (containers-common's /usr/share/containers/seccomp.json) with the
denials a sandbox for untrusted Python needs, for the native ABI only.

Usage: scripts/dev/seccomp-profile.py [DEFAULT_PROFILE] > containerfiles/seccomp/worker.json

The gateway embeds the result, writes it to its runtime directory at start and
passes that path to Podman (`seccomp_profile_path`) for every worker.
"""
import json
import sys

EPERM, ENOSYS = 1, 38

# Denied with EPERM: namespaces, mounts, the kernel keyring, tracing and other
# large kernel attack surfaces that Python code in a sandbox has no use for.
DENY_EPERM = {
    # new namespaces and entering others (clone with CLONE_NEW* is below)
    "unshare": "new namespaces (user, net, mount ...)",
    "setns": "entering another namespace",
    # mounts, old and new API
    "mount": "mounts", "umount": "mounts", "umount2": "mounts", "pivot_root": "mounts",
    "chroot": "mounts", "open_tree": "new mount API", "move_mount": "new mount API",
    "fsopen": "new mount API", "fsconfig": "new mount API", "fsmount": "new mount API",
    "fspick": "new mount API", "mount_setattr": "new mount API",
    # the kernel keyring
    "keyctl": "kernel keyring", "add_key": "kernel keyring", "request_key": "kernel keyring",
    # tracing and other processes' memory
    "ptrace": "tracing", "process_vm_readv": "other processes' memory",
    "process_vm_writev": "other processes' memory", "pidfd_getfd": "other processes' files",
    "kcmp": "comparing other processes' kernel objects", "process_madvise": "other processes' memory",
    # System V shared memory and message queues: memory outside RLIMIT_AS
    # (a detached segment or a queued message belongs to no process), bounded
    # only by ipc-namespace sysctls that default to "unlimited". Python and its
    # scientific stack use POSIX shared memory (/dev/shm, sized) instead.
    "shmget": "SysV shared memory", "shmat": "SysV shared memory",
    "shmctl": "SysV shared memory", "shmdt": "SysV shared memory",
    "msgget": "SysV message queues", "msgsnd": "SysV message queues",
    "msgrcv": "SysV message queues", "msgctl": "SysV message queues",
    # large kernel attack surfaces
    "userfaultfd": "page-fault handling in user space (exploit primitive)",
    "bpf": "eBPF", "perf_event_open": "perf events",
    "fanotify_init": "filesystem-wide notification", "name_to_handle_at": "file handles",
    "open_by_handle_at": "file handles", "lookup_dcookie": "profiling",
    "quotactl": "quotas", "acct": "process accounting", "syslog": "kernel log",
    "vhangup": "terminals", "swapon": "swap", "swapoff": "swap", "reboot": "reboot",
    "kexec_load": "kexec", "kexec_file_load": "kexec", "init_module": "modules",
    "finit_module": "modules", "delete_module": "modules",
}
# Denied with ENOSYS ("not in this kernel"), which callers treat as a reason to
# fall back: glibc's clone3 -> clone, io_uring -> plain I/O. memfd files are
# memory that RLIMIT_AS does not count (the bound without a memory cgroup).
DENY_ENOSYS = {
    "clone3": "flags are behind a pointer seccomp cannot read; glibc falls back to clone",
    "memfd_create": "anonymous files are memory outside RLIMIT_AS",
    "memfd_secret": "secret memory outside RLIMIT_AS",
    "io_uring_setup": "io_uring", "io_uring_enter": "io_uring", "io_uring_register": "io_uring",
}
# clone: allowed without any CLONE_NEW* flag, EPERM with one (x86_64 and arm64:
# flags are argument 0).
CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}


# setsockopt(SOL_SOCKET, SO_SNDBUF / SO_RCVBUF): a socket may not raise its
# buffers to the network namespace's net.core.{w,r}mem_max (4 MiB on current
# kernels, and read-only for rootless Podman), so it queues at most the
# defaults (208 KiB). Every other option is allowed.
SOL_SOCKET, SO_SNDBUF, SO_RCVBUF = 1, 7, 8


def setsockopt_rules() -> list:
    def rule(action, *args, errno=None):
        entry = {
            "names": ["setsockopt"],
            "action": action,
            "args": [{"index": i, "value": v, "valueTwo": 0, "op": op} for i, op, v in args],
        }
        if errno is not None:
            entry["errnoRet"] = errno
        return entry

    eq, ne, lt, gt = "SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_GT"
    return [
        rule("SCMP_ACT_ALLOW", (1, ne, SOL_SOCKET)),
        rule("SCMP_ACT_ALLOW", (1, eq, SOL_SOCKET), (2, lt, SO_SNDBUF)),
        rule("SCMP_ACT_ALLOW", (1, eq, SOL_SOCKET), (2, gt, SO_RCVBUF)),
        rule("SCMP_ACT_ERRNO", (1, eq, SOL_SOCKET), (2, eq, SO_SNDBUF), errno=EPERM),
        rule("SCMP_ACT_ERRNO", (1, eq, SOL_SOCKET), (2, eq, SO_RCVBUF), errno=EPERM),
    ]


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
    with open(source) as f:
        profile = json.load(f)
    removed = set(DENY_EPERM) | set(DENY_ENOSYS) | {"clone", "setsockopt"}
    kept = []
    for rule in profile["syscalls"]:
        names = [n for n in rule.get("names", []) if n not in removed]
        if names:
            kept.append({**rule, "names": names})
    mask = sum(CLONE_NEW.values())
    ours = [
        {
            "names": sorted(DENY_EPERM),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "comment": "code-interpreter: no namespaces, mounts, keyring, tracing, SysV shm/msg, bpf, perf",
        },
        {
            "names": sorted(DENY_ENOSYS),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "comment": "code-interpreter: clone3 (use clone), memfd (memory outside RLIMIT_AS), io_uring",
        },
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "comment": "code-interpreter: clone without CLONE_NEW* flags (threads, fork)",
        },
    ] + [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}],
            "comment": f"code-interpreter: clone with {name}",
        }
        for name, bit in CLONE_NEW.items()
    ] + setsockopt_rules()
    profile["syscalls"] = ours + kept
    # The native ABI only: no sub-architectures (x86 and x32 beside x86_64, arm
    # beside arm64). A syscall through a compat ABI (int 0x80, x32 numbers)
    # then fails the filter's architecture check and kills the caller: that is
    # kernel surface (compat entry points and their own bugs) that a sandbox of
    # 64-bit Python has no use for. It also keeps a cold start 10-13 ms
    # shorter: runc compiles one whole filter per architecture at every start
    # (docs/benchmarks.md, "The cold start, piece by piece").
    for arch in profile["archMap"]:
        arch["subArchitectures"] = []
    json.dump(profile, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
