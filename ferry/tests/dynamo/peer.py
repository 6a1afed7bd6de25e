"""A Dynamo worker for ferry's interop test (ferry/tests/dynamo_interop.rs).

It drives the real, published `dynamo.nixl_connect` (PyPI ai-dynamo-runtime 1.6.1, over the
real nixl-cu12 1.5.1) from JSON lines on stdin, one command at a time, and answers in JSON lines
on stdout. Every answer has "ok"; a failure answers {"ok": false, "error": "..."} and the peer
goes on reading.

    {"op": "readable", "seeds": [..], "sizes": [..], "hex": false}
        -> {"ok": true, "metadata": "<RdmaMetadata JSON>"}   then, once read by the peer:
        -> {"ok": true, "status": "DONE"}
    {"op": "writable", "sizes": [..]}
        -> {"ok": true, "metadata": "<RdmaMetadata JSON>"}   then, once written by the peer:
        -> {"ok": true, "status": "DONE", "data": ["<hex>", ..]}
    {"op": "read", "metadata": "<JSON>", "sizes": [..]}
        -> {"ok": true, "status": "DONE", "data": ["<hex>", ..], "canonical": "<JSON>"}
    {"op": "write", "metadata": "<JSON>", "seeds": [..], "sizes": [..]}
        -> {"ok": true, "status": "DONE", "canonical": "<JSON>"}
    {"op": "quit"} -> {"ok": true}, then exit

"canonical" is Dynamo's own `model_dump_json()` of the metadata it was given. Sources are filled
with `pattern(size, seed)`, the same bytes as ferry::demo::pattern. Every wait is bounded by
--timeout seconds, and the whole process by --deadline seconds (it exits with a traceback).
"""

import argparse
import asyncio
import faulthandler
import json
import os
import struct
import sys

MASK = (1 << 64) - 1


def pattern(size: int, seed: int) -> bytes:
    """ferry::demo::pattern: xorshift64 words, little-endian, truncated to `size`."""
    state = ((seed * 0x9E3779B97F4A7C15) & MASK) | 1
    words = []
    for _ in range((size + 7) // 8):
        state ^= (state << 13) & MASK
        state ^= state >> 7
        state ^= (state << 17) & MASK
        words.append(state)
    return struct.pack(f"<{len(words)}Q", *words)[:size]


class Peer:
    def __init__(self, worker_id: str, timeout: float, out) -> None:
        self.connector = nc.Connector(worker_id=worker_id)
        self.timeout = timeout
        self.out = out

    def send(self, **answer) -> None:
        self.out.write(json.dumps(answer) + "\n")
        self.out.flush()

    async def wait(self, op) -> str:
        await asyncio.wait_for(op.wait_for_completion(), self.timeout)
        # Dynamo returns normally on CANCELLED too; the status tells them apart.
        return str(op.status)

    async def readable(self, cmd) -> None:
        # bytes: Dynamo's Descriptor(bytes) form, read-only memory.
        sources = [pattern(size, seed) for size, seed in zip(cmd["sizes"], cmd["seeds"])]
        with await self.connector.create_readable(
            [nc.Descriptor(s) for s in sources]
        ) as op:
            metadata = op.metadata(hex_encode=bool(cmd.get("hex", False)))
            self.send(ok=True, metadata=metadata.model_dump_json())
            self.send(ok=True, status=await self.wait(op))

    async def writable(self, cmd) -> None:
        # numpy: Dynamo's Descriptor((ndarray, device)) form.
        landing = [np.zeros(size, dtype=np.uint8) for size in cmd["sizes"]]
        with await self.connector.create_writable(
            [nc.Descriptor((a, "cpu")) for a in landing]
        ) as op:
            self.send(ok=True, metadata=op.metadata().model_dump_json())
            status = await self.wait(op)
        self.send(ok=True, status=status, data=[a.tobytes().hex() for a in landing])

    async def read(self, cmd) -> None:
        metadata = nc.RdmaMetadata.model_validate_json(cmd["metadata"])
        landing = [np.zeros(size, dtype=np.uint8) for size in cmd["sizes"]]
        with await self.connector.begin_read(
            metadata, [nc.Descriptor((a, "cpu")) for a in landing]
        ) as op:
            status = await self.wait(op)
        self.send(
            ok=True,
            status=status,
            data=[a.tobytes().hex() for a in landing],
            canonical=metadata.model_dump_json(),
        )

    async def write(self, cmd) -> None:
        metadata = nc.RdmaMetadata.model_validate_json(cmd["metadata"])
        sources = [pattern(size, seed) for size, seed in zip(cmd["sizes"], cmd["seeds"])]
        with await self.connector.begin_write(
            [nc.Descriptor(s) for s in sources], metadata
        ) as op:
            status = await self.wait(op)
        self.send(ok=True, status=status, canonical=metadata.model_dump_json())


async def serve(peer: Peer, commands) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, commands.readline)
        if not line:
            return  # the test went away
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "quit":
                peer.send(ok=True)
                return
            handler = {
                "readable": peer.readable,
                "writable": peer.writable,
                "read": peer.read,
                "write": peer.write,
            }.get(op)
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            await handler(cmd)
        except Exception as e:  # answer and go on: the test reports it
            peer.send(ok=False, error=f"{type(e).__name__}: {e}")


def main() -> None:
    global nc, np
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.deadline, exit=True)

    # Answers get a private copy of stdout; fd 1 goes to stderr, so whatever the native
    # libraries print cannot corrupt the protocol.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import numpy as np
    import dynamo.nixl_connect as nc

    asyncio.run(serve(Peer(args.worker_id, args.timeout, out), sys.stdin))
    out.flush()


if __name__ == "__main__":
    main()
