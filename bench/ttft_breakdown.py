"""Where the time to first token goes inside a ClosedMesh node, for one streamed request at a time.

Runs the real server in this process (real model, real HTTP over loopback) and timestamps the hand-offs
by wrapping three engine methods: HTTP + validation + template + tokenization (client → submit), the
engine picking the request up (submit → admitted), prompt processing and the first sample
(admitted → first token), and the trip back to the client (token → client).

    .venv/bin/python bench/ttft_breakdown.py
"""
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
os.environ["CLOSEDMESH_HOME"] = tempfile.mkdtemp()
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from pathlib import Path

from runtime.config import Paths, ServeSettings
from runtime.models.embedded import ensure_default_model
from runtime.node import Node
from runtime.server import bind_socket, serve
from runtime.engine import scheduler as sch
import aiohttp

marks = {}
orig_submit = sch.Scheduler.submit
def submit(self, req):
    marks.setdefault("submit", []).append(time.perf_counter()); return orig_submit(self, req)
sch.Scheduler.submit = submit
orig_admit = sch.Scheduler._admit_locked
def admit(self):
    had = len(self._waiting); orig_admit(self)
    if had: marks.setdefault("admit", []).append(time.perf_counter())
sch.Scheduler._admit_locked = admit
orig_init = sch.TokenEvent.__init__
def tok_init(self, text):
    orig_init(self, text)
    marks.setdefault("token", []).append(time.perf_counter())
sch.TokenEvent.__init__ = tok_init

async def main():
    settings = ServeSettings(port=0, models=[str(ensure_default_model(Path(__file__).resolve().parent.parent / ".cache" / "models"))], slots=8, ctx_per_slot=1024)
    node = Node(settings, Paths.resolve())
    sock = bind_socket("127.0.0.1", 0); port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(node, sock, stop))
    while not node.ready: await asyncio.sleep(0.1)
    return node, port, stop, task

def client(port, n=16):
    async def one(i):
        async with aiohttp.ClientSession() as s:
            body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": f"[{i}] Write a long story about the sea."}], "max_tokens": 4, "temperature": 0, "stream": True}
            t0 = time.perf_counter(); first = None
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                async for line in r.content:
                    if b'"content":"' in line and b'"content":""' not in line and first is None:
                        first = time.perf_counter()
            return t0, first
    res = []
    for i in range(n):
        res.append(asyncio.run(one(i)))
    return res

loop = asyncio.new_event_loop()
th = threading.Thread(target=loop.run_forever, daemon=True); th.start()
node, port, stop, task = asyncio.run_coroutine_threadsafe(main(), loop).result(120)
marks.clear()
res = client(port)
sub, adm, tok = marks["submit"], marks["admit"], marks["token"]
# first token per request: tokens come 4 per request (max_tokens 4) -> take every 4th? use first token after each submit
firsts = [min(t for t in tok if t > s) for s in sub]
rows = []
for (t0, first), s, a, f in zip(res, sub, adm, firsts):
    rows.append(((s - t0) * 1000, (a - s) * 1000, (f - a) * 1000, (first - f) * 1000, (first - t0) * 1000))
names = ["client→submit", "submit→admitted", "admitted→first token sampled", "token→client got it", "TTFT total"]
for i, n in enumerate(names):
    print(f"{n:32s} p50 {statistics.median(r[i] for r in rows):7.2f} ms")
