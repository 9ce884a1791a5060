"""check-worker.py — drive one worker's kernel over its ipc sockets, as the gateway will.

Run by check-worker.sh as the service user, on the host, in a venv holding the
lock's jupyter_client. Environment: WORKER_DIR (the per-worker directory, the
container's /run/kernel), KERNEL_KEY (the HMAC key written to connection.json),
T0 (epoch seconds just before `podman run`). Option --save-png PATH keeps the
plot. Exits 1 if any check fails.
"""

import base64
import os
import sys
import time

from jupyter_client import BlockingKernelClient

PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
checks, failures = [], []


def check(name, ok, detail=""):
    checks.append(name)
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""))
    if not ok:
        failures.append(name)


def wait_for_sockets(directory, t0, timeout=30.0):
    paths = [f"{directory}/k-{port}" for port in PORTS.values()]
    deadline = time.time() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.time() > deadline:
            missing = [p for p in paths if not os.path.exists(p)]
            raise SystemExit(f"FAIL  sockets did not appear within {timeout} s: {missing}")
        time.sleep(0.005)
    return time.time() - t0


def run(kc, code):
    """Execute code; return (reply content, list of iopub messages)."""
    outputs = []
    reply = kc.execute_interactive(
        code, output_hook=outputs.append, allow_stdin=False, store_history=False, timeout=120
    )
    return reply["content"], outputs


def streams(outputs, name):
    return "".join(m["content"]["text"] for m in outputs
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def main():
    directory, key, t0 = os.environ["WORKER_DIR"], os.environ["KERNEL_KEY"], float(os.environ["T0"])
    save_png = sys.argv[sys.argv.index("--save-png") + 1] if "--save-png" in sys.argv else None

    t_sockets = wait_for_sockets(directory, t0)
    kc = BlockingKernelClient()
    kc.load_connection_info({"transport": "ipc", "ip": f"{directory}/k", "key": key,
                             "signature_scheme": "hmac-sha256", **PORTS})
    kc.start_channels()
    kc.wait_for_ready(timeout=30)  # sends kernel_info_request, waits for the reply
    t_ready = time.time() - t0
    check("kernel ready", True, f"sockets after {t_sockets:.2f} s, kernel_info_reply after "
          f"{t_ready:.2f} s from podman run")

    reply, out = run(kc, "a = 100")
    check("a = 100", reply["status"] == "ok")
    t = time.time()
    reply, out = run(kc, "print(a)")
    check("print(a) -> 100", streams(out, "stdout") == "100\n",
          f"round trip {1000 * (time.time() - t):.1f} ms")

    t = time.time()
    reply, out = run(kc, 'import matplotlib.pyplot as plt\n'
                         'plt.plot([1, 2]); plt.title("中文"); plt.show()')
    pngs = [m["content"]["data"]["image/png"] for m in out
            if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]
    stderr = streams(out, "stderr")
    check("matplotlib display_data image/png", reply["status"] == "ok" and len(pngs) == 1,
          f"{1000 * (time.time() - t):.0f} ms cold")
    check("matplotlib: nothing on stderr", stderr == "", stderr.strip()[:300])
    if save_png and pngs:
        with open(save_png, "wb") as f:
            f.write(base64.b64decode(pngs[0]))

    t = time.time()
    reply, out = run(kc, "import numpy, pandas, scipy, sympy, sklearn, PIL\n"
                         "print(numpy.__version__, pandas.__version__, scipy.__version__, "
                         "sympy.__version__, sklearn.__version__, PIL.__version__)")
    check("import numpy, pandas, scipy, sympy, sklearn, PIL",
          reply["status"] == "ok" and streams(out, "stderr") == "",
          f"{streams(out, 'stdout').strip()}; {1000 * (time.time() - t):.0f} ms")

    # What the sandboxed code can do: nothing privileged, nothing persistent.
    reply, out = run(kc, r'''
import os, socket
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("uid", os.getuid(), os.getgid())
for f in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
    print(f, st[f].strip())
try:
    open("/etc/probe", "w")
    print("rootfs writable")
except OSError:
    print("rootfs read-only")
open(os.path.expanduser("~/probe"), "w").write("x")
print("home writable")
print("interfaces", sorted(n for _, n in socket.if_nameindex()))
''')
    lines = streams(out, "stdout").splitlines()
    check("runs as uid/gid 1000", "uid 1000 1000" in lines)
    check("no capabilities", all(f"{c} 0000000000000000" in lines
                                 for c in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")))
    check("NoNewPrivs 1", "NoNewPrivs 1" in lines)
    check("read-only rootfs, writable home", "rootfs read-only" in lines and "home writable" in lines)
    check("no network interface but lo", "interfaces ['lo']" in lines, lines[-1] if lines else "")

    # The gateway's timeouts: interrupt_request on the control channel.
    kc.execute("import time; time.sleep(60)", store_history=False)
    time.sleep(0.3)
    t = time.time()
    kc.control_channel.send(kc.session.msg("interrupt_request", {}))
    reply = kc.get_shell_msg(timeout=10)["content"]
    check("interrupt_request stops time.sleep(60)",
          reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt",
          f"{1000 * (time.time() - t):.0f} ms")
    reply, out = run(kc, "print(a + 1)")
    check("kernel alive after interrupt", streams(out, "stdout") == "101\n")

    kc.stop_channels()
    print(f"{len(checks) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
