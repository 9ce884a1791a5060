"""Baseline for `code-interpreter bench --baseline`: the same workload, driven
straight at local IPython kernels with jupyter_client (no HTTP, no containers).

Why it exists: the gateway is compared against the ceiling that the kernels
themselves allow on this machine, measured in the same run with the same plan
(code, expected output and think times per user) that the Rust bench uses.

Input (stdin): the plan as JSON, {"users": [{"steps": [{"code", "expect"}],
"think_ms": [...]}], "timeout_s": float, "kernel_args": [...]}.
Output (stdout): JSON {"samples": [...], "versions": {...}, "cpu_ms": float}.
Each sample: user, index, start_ms, latency_ms, outcome ("verified",
"mismatch", "kernel_error", "transport"). Progress and errors go to stderr.
"""

import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time


def log(message):
    print(f"baseline: {message}", file=sys.stderr, flush=True)


async def start_kernel(manager_class, kernel_args, ipc_dir, number):
    # ipc sockets, as the gateway uses: no TCP stack, no plain-text warning.
    manager = manager_class(
        kernel_name="python3", transport="ipc", ip=os.path.join(ipc_dir, f"k{number}")
    )
    await manager.start_kernel(extra_arguments=list(kernel_args))
    client = manager.client()
    client.start_channels()
    await client.wait_for_ready(timeout=120)
    return manager, client


async def execute(client, code, timeout_s):
    """Runs `code`; returns (status, text) the way the gateway builds result_text."""
    parts = []

    def hook(msg):
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "stream":
            parts.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            text = content.get("data", {}).get("text/plain")
            if text is not None and kind == "execute_result":
                parts.append(text + "\n")
        elif kind == "error":
            parts.append(f"{content['ename']}: {content['evalue']}")

    reply = await client.execute_interactive(
        code, store_history=True, output_hook=hook, timeout=timeout_s
    )
    return reply["content"]["status"], "".join(parts)


async def run_user(number, plan, client, t0, timeout_s, samples):
    steps, think = plan["steps"], plan["think_ms"]
    for index, step in enumerate(steps):
        start = time.perf_counter()
        try:
            status, text = await execute(client, step["code"], timeout_s)
            if status != "ok":
                outcome = "kernel_error"
            elif text == step["expect"]:
                outcome = "verified"
            else:
                outcome = "mismatch"
        except Exception as e:  # a timeout or a dead kernel: count it, go on
            log(f"user {number} request {index}: {e!r}")
            outcome = "transport"
        end = time.perf_counter()
        samples.append(
            {
                "user": number,
                "index": index,
                "start_ms": (start - t0) * 1000.0,
                "latency_ms": (end - start) * 1000.0,
                "outcome": outcome,
            }
        )
        if index < len(think) and think[index] > 0:
            await asyncio.sleep(think[index] / 1000.0)


async def main():
    import ipykernel
    import jupyter_client
    from jupyter_client.manager import AsyncKernelManager

    request = json.load(sys.stdin)
    users = request["users"]
    timeout_s = float(request.get("timeout_s", 30))
    kernel_args = request.get("kernel_args", [])
    log(f"starting {len(users)} kernels (ipykernel {ipykernel.__version__})")
    started = time.perf_counter()
    kernels = []
    ipc_dir = tempfile.mkdtemp(prefix="ci-bench-baseline-")
    # A few at a time: starting 30 Python processes at once only thrashes 2 cores.
    for chunk in range(0, len(users), 4):
        batch = [
            start_kernel(AsyncKernelManager, kernel_args, ipc_dir, number)
            for number in range(chunk, min(chunk + 4, len(users)))
        ]
        kernels.extend(await asyncio.gather(*batch))
    log(f"{len(kernels)} kernels ready in {time.perf_counter() - started:.1f} s")
    samples = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            run_user(number, plan, client, t0, timeout_s, samples)
            for number, (plan, (_, client)) in enumerate(zip(users, kernels))
        )
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = (
        cpu_after.ru_utime
        + cpu_after.ru_stime
        - cpu_before.ru_utime
        - cpu_before.ru_stime
    ) * 1000.0
    for manager, client in kernels:
        client.stop_channels()
    await asyncio.gather(*(manager.shutdown_kernel(now=True) for manager, _ in kernels))
    shutil.rmtree(ipc_dir, ignore_errors=True)
    json.dump(
        {
            "samples": samples,
            "cpu_ms": cpu_ms,
            "versions": {
                "python": platform.python_version(),
                "ipykernel": ipykernel.__version__,
                "jupyter_client": jupyter_client.__version__,
            },
        },
        sys.stdout,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    asyncio.run(main())
