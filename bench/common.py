"""Helpers shared by the benchmarks: starting servers and streaming load over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
EOS_BAN = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(name: str, cmd: list[str], port: int, ready_path: str, env: dict | None = None,
          timeout: float = 180) -> Server:
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    srv = Server(name, proc, port, log)
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(srv.url + ready_path, timeout=2) as r:
                if r.status == 200:
                    return srv
        except OSError:
            pass
        time.sleep(0.25)
    srv.stop()
    raise RuntimeError(f"{name} did not become ready: {log.read_text()[-2000:]}")


def start_closedmesh(model: Path, slots: int, ctx: int, threads: int, extra: list[str] = ()) -> Server:
    home = tempfile.mkdtemp(prefix="bench-closedmesh-")
    port = free_port()
    return start("closedmesh", [str(VENV_BIN / "closedmesh"), "serve", "--port", str(port), "--model", str(model),
                                "--slots", str(slots), "--ctx-per-slot", str(ctx), "--threads", str(threads),
                                "--max-queue", "10000", *extra],
                 port, "/health", env={"CLOSEDMESH_HOME": home})


def start_llama_server(binary: str, model: Path, slots: int, ctx: int, threads: int) -> Server:
    port = free_port()
    return start("llama-server", [binary, "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
                                  "-c", str(ctx * slots), "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
                 port, "/health")


def start_llama_cpp_server(model: Path, ctx: int, threads: int) -> Server:
    port = free_port()
    return start("llama_cpp.server", [str(VENV_BIN / "python"), "-m", "llama_cpp.server", "--model", str(model),
                                      "--n_threads", str(threads), "--n_threads_batch", str(threads),
                                      "--n_ctx", str(ctx), "--host", "127.0.0.1", "--port", str(port)],
                 port, "/v1/models")


@dataclass
class StreamResult:
    ttft: float  # seconds from sending to the first content token
    first: float
    last: float
    tokens: int
    start: float
    error: str | None = None

    @property
    def decode_tps(self) -> float | None:
        if self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


async def stream_chat(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int,
                      model: str = "SmolLM2-135M-Instruct") -> StreamResult:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "logit_bias": EOS_BAN, "ignore_eos": True}
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                return StreamResult(0, 0, 0, 0, t0, f"HTTP {r.status}: {(await r.text())[:200]}")
            return await _read_stream(r, t0)
    except aiohttp.ClientPayloadError:
        return StreamResult(0, 0, 0, 0, t0, "broken stream (the server cut the response body)")


async def _read_stream(r, t0: float) -> StreamResult:
    first = last = None
    n = 0
    buf = b""
    try:
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        return StreamResult(0, 0, 0, n, t0, str(obj["error"]))
                    ch = obj.get("choices") or []
                    if ch and (ch[0].get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        last = now
                        n += 1
    except aiohttp.ClientPayloadError:
        return StreamResult((first or t0) - t0, first or 0, last or 0, n, t0,
                            "broken stream (the server cut the response body)")
    if first is None:
        return StreamResult(0, 0, 0, 0, t0, "no tokens")
    return StreamResult(first - t0, first, last, n, t0)


async def concurrent_streams(url: str, prompts: list[str], max_tokens: int) -> tuple[list[StreamResult], float]:
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(s, url, p, max_tokens) for p in prompts))
        return list(results), time.perf_counter() - t0


def p50(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def p95(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def which_llama_server() -> str | None:
    env = os.environ.get("LLAMA_SERVER")
    if env:
        return env
    p = subprocess.run(["bash", str(REPO / "bench" / "build_llama_server.sh")], capture_output=True, text=True)
    if p.returncode != 0:
        return shutil.which("llama-server")
    return p.stdout.strip().splitlines()[-1]
