"""The 1 MiB cycle between two Dynamo Python workers, for ferry-bench-nixl's comparison.

One cycle, as ferry-bench-nixl times ferry's: the parent asks its child worker for a readable
over a 1 MiB buffer, the child runs `create_readable` and prints the metadata, the parent runs
`begin_read` into its own buffer and waits for completion, and the cycle ends when the child
reports its readable complete. Both workers are the published `dynamo.nixl_connect`
(ai-dynamo-runtime 1.6.1 over the real nixl-cu12 1.5.1), in the venv that
scripts/install-dynamo-venv.sh builds; torch is the stand-in from ferry/tests/dynamo/stub.

    python cycle.py --iterations 50 --size 1048576      # prints one JSON line of results

ferry-bench-nixl runs it itself when the venv is there (benches/src/nixl/dynamo.rs).

Every wait is bounded (--timeout seconds); the child exits when its stdin closes.
"""

import argparse
import asyncio
import faulthandler
import json
import os
import subprocess
import sys
import time


def private_stdout():
    """A private copy of stdout for answers; fd 1 goes to stderr so native logs stay out."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


async def child(args) -> None:
    import dynamo.nixl_connect as nc
    import numpy as np

    out = private_stdout()
    connector = nc.Connector(worker_id="dynamo-cycle-passive")
    source = np.frombuffer(os.urandom(args.size), dtype=np.uint8).copy()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        with await connector.create_readable([nc.Descriptor((source, "cpu"))]) as op:
            out.write(op.metadata().model_dump_json() + "\n")
            out.flush()
            await asyncio.wait_for(op.wait_for_completion(), args.timeout)
            complete = op.status == nc.OperationStatus.COMPLETE
            out.write(json.dumps({"complete": complete, "status": repr(op.status)}) + "\n")
            out.flush()


async def parent(args) -> None:
    import dynamo.nixl_connect as nc
    import numpy as np

    out = private_stdout()
    peer = subprocess.Popen(
        [sys.executable, __file__, "--child", "--size", str(args.size),
         "--timeout", str(args.timeout)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    loop = asyncio.get_running_loop()

    async def answer() -> str:
        line = await asyncio.wait_for(
            loop.run_in_executor(None, peer.stdout.readline), args.timeout
        )
        if not line:
            raise RuntimeError("the Dynamo child worker exited")
        return line

    try:
        connector = nc.Connector(worker_id="dynamo-cycle-active")
        landing = np.zeros(args.size, dtype=np.uint8)
        times = []
        for i in range(args.warmup + args.iterations):
            start = time.perf_counter()
            peer.stdin.write("go\n")
            peer.stdin.flush()
            metadata = nc.RdmaMetadata.model_validate_json(await answer())
            with await connector.begin_read(metadata, [nc.Descriptor((landing, "cpu"))]) as op:
                await asyncio.wait_for(op.wait_for_completion(), args.timeout)
                complete = op.status == nc.OperationStatus.COMPLETE
                status = repr(op.status)
            done = json.loads(await answer())
            elapsed = time.perf_counter() - start
            if not (complete and done["complete"]):
                raise RuntimeError(f"cycle {i}: read {status}, readable {done['status']}")
            if i >= args.warmup:
                times.append(elapsed)
        times.sort()
        result = {
            "size": args.size,
            "iterations": len(times),
            "p50_us": times[len(times) // 2] * 1e6,
            "mean_us": sum(times) / len(times) * 1e6,
            "min_us": times[0] * 1e6,
            "samples_us": [t * 1e6 for t in times],
        }
        out.write(json.dumps(result) + "\n")
        out.flush()
    finally:
        peer.stdin.close()
        try:
            peer.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            peer.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.timeout * (args.iterations + args.warmup + 2), exit=True)
    asyncio.run(child(args) if args.child else parent(args))


if __name__ == "__main__":
    main()
