//! The gVisor tier (`workers.runtime = "gvisor"`) against runc, side by side:
//! two real gateways on the service user's rootless Podman, one per runtime
//! (scripts/test.sh installs runsc and starts the gVisor workers' Podman
//! service). Under gVisor the user's code meets gVisor's Sentry, not the host's
//! kernel: neither its version nor its system call surface shows through.
//! (Every sandbox, hostile and core test also runs under gVisor: scripts/test.sh,
//! CI_TEST_RUNTIME=gvisor.)

mod common;

use common::{Gateway, Options};

/// What a worker reports of the kernel it runs on: its release, and the errno
/// of system calls that Linux implements (and our seccomp profile allows)
/// but gVisor does not: called with arguments Linux refuses (EINVAL, EBADF),
/// so nothing happens under either.
const PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
print("release", os.uname().release)
for name, number in (("pkey_alloc", 330), ("copy_file_range", 326), ("rseq", 334)):
    result = libc.syscall(number, -1, 0, -1, 0, 0, 0xFFFF)
    print(name, errno.errorcode[ctypes.get_errno()] if result < 0 else result)
"#;

async fn gateway(runtime: &str) -> Gateway {
    Gateway::start(Options {
        extra: format!("[workers]\nruntime = \"{runtime}\"\n"),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_hides_the_host_kernel_and_its_system_calls() {
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let host_release = host_release.trim();
    let (runc, gvisor) = tokio::join!(gateway("runc"), gateway("gvisor"));

    let runc_status = runc.status().await;
    assert_eq!(runc_status["isolation"]["runtime"], "runc", "{runc_status}");
    assert_eq!(runc_status["isolation"]["firewall"], "nftables");
    let status = gvisor.status().await;
    let isolation = &status["isolation"];
    assert_eq!(isolation["runtime"], "gvisor", "{status}");
    assert!(
        ["systrap", "kvm", "ptrace"].contains(&isolation["platform"].as_str().unwrap()),
        "{status}"
    );
    assert_eq!(isolation["firewall"], "none", "{status}");
    assert!(
        isolation["oci_runtime_version"]
            .as_str()
            .unwrap()
            .contains("runsc"),
        "{status}"
    );

    let under_runc = runc.run("probe", PROBE).await;
    let under_runc = under_runc["result_text"].as_str().unwrap().to_string();
    let under_gvisor = gvisor.run("probe", PROBE).await;
    let under_gvisor = under_gvisor["result_text"].as_str().unwrap().to_string();
    eprintln!("host {host_release}\nrunc:\n{under_runc}gVisor:\n{under_gvisor}");
    // runc shares the host's kernel: its version, and its system calls.
    assert!(
        under_runc.contains(&format!("release {host_release}\n")),
        "{under_runc}"
    );
    // gVisor answers with its own: another version, and ENOSYS for what it
    // does not implement, where the host's kernel checked the arguments.
    assert!(!under_gvisor.contains(host_release), "{under_gvisor}");
    for (call, linux) in [
        ("pkey_alloc", "EINVAL"),
        ("copy_file_range", "EBADF"),
        ("rseq", "EINVAL"),
    ] {
        assert!(
            under_runc.contains(&format!("{call} {linux}\n")),
            "{call} under runc:\n{under_runc}"
        );
        assert!(
            under_gvisor.contains(&format!("{call} ENOSYS\n")),
            "{call} under gVisor:\n{under_gvisor}"
        );
    }
}
