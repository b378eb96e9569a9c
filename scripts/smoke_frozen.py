"""Frozen smoke test: the built bundle, installed as a user installs it, with no venv and no source tree.

Run by scripts/smoke_frozen.sh, which installs the .deb (or unpacks the tarball) and starts this script
with the system's Python, isolated (-I), from a temporary folder, with a bare environment. Standard
library only: it is a user's machine, not a developer's.

    python3 -I smoke_frozen.py --bin DIR --root DIR --artifacts DIR --forbid PATH [--gui xvfb|none] [--deb PACKAGE]

The release workflow runs it on macOS and Windows too, with --gui none (no Xvfb there); the checks that
read /proc (step 3, and step 6's) are Linux only and are reported as SKIP elsewhere.

Steps (each prints one line, PASS or FAIL, and the run ends with 'N passed, N failed'):
 1. the programs on PATH are the bundle's, and nothing of the venv or the source tree is on any path;
 2. cold start of a headless node (`closedmesh serve`, fresh home: the bundled model is copied first) to
    /health, then a streamed chat completion;
 3. the node's processes map no file of the venv or the source tree, and their llama.cpp libraries come
    from one folder of the bundle; with CPU variants in the bundle, each one answers with its own
    libraries only;
 4. a hub (`closedmesh hub`) and a second node from the bundle; both join with invites made by the CLI,
    and the first node answers for a model only the second one serves, through the mesh;
 5. the tray app (`closedmesh-app`) under Xvfb: its node answers, and a screenshot of its window is saved;
 6. with --deb: a start-at-login entry like the app's is written, the package is removed while
    everything still runs, and nothing is left running from the bundle, the entry is gone, and so are
    the files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

RESULTS: list[tuple[str, bool, str]] = []
PROCS: list[subprocess.Popen] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_json(url: str, body: dict | None = None, timeout: float = 120, token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def health(base: str) -> int | None:
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def stream_chat(base: str, model: str, prompt: str) -> tuple[str, dict | None]:
    """A streamed chat completion read as an OpenAI client reads it: (text, usage)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, usage, done = "", None, False
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event in the stream: {chunk['error']}")
            for choice in chunk.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
            usage = chunk.get("usage") or usage
    if not done:
        raise RuntimeError("the stream ended without data: [DONE]")
    return text, usage


class Program:
    """A bundle program started with a fresh home; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        PROCS.append(self.proc)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def api_base(self, timeout: float = 300) -> str:
        def served() -> str | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            m = re.search(r"serving the OpenAI API on (http://[\d.]+:\d+)/v1", self.text())
            return m.group(1) if m else None

        return wait_for(served, timeout, f"{self.name} to listen")


def bundle_pids(root: str) -> list[int]:
    """Processes whose executable lies in the installed bundle."""
    out = []
    for exe in Path("/proc").glob("[0-9]*/exe"):
        try:
            if os.readlink(exe).startswith(root + "/"):
                out.append(int(exe.parent.name))
        except OSError:
            pass
    return out


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child, *children(child)]
    return out


def mapped_files(pid: int) -> set[str]:
    files = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].replace(" (deleted)", ""))
    except OSError:
        pass
    return files


# -- screenshot: Xvfb's framebuffer file (XWD) to PNG, standard library only ---------------------------


def xwd_to_png(xwd: bytes) -> tuple[bytes, int, int, int]:
    """(PNG bytes, width, height, number of distinct colours) of a 24/32-bit ZPixmap XWD image."""
    h = struct.unpack(">25I", xwd[:100])
    header_size, width, height, byte_order, bpp, bpl = h[0], h[4], h[5], h[7], h[11], h[12]
    masks, ncolors = (h[14], h[15], h[16]), h[19]
    if bpp not in (24, 32):
        raise ValueError(f"unsupported XWD: {bpp} bits per pixel")
    data = xwd[header_size + 12 * ncolors:]
    shifts = [(m & -m).bit_length() - 1 for m in masks]
    step, order = bpp // 8, "little" if byte_order == 0 else "big"
    rows, colours = [], set()
    for y in range(height):
        row = bytearray(b"\x00")  # filter type: none
        line = data[y * bpl: y * bpl + width * step]
        for x in range(0, width * step, step):
            v = int.from_bytes(line[x: x + step], order)
            rgb = bytes(((v & m) >> s) & 0xFF for m, s in zip(masks, shifts))
            row += rgb
            if y % 4 == 0 and x % (4 * step) == 0:
                colours.add(rgb)
        rows.append(bytes(row))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))
    return png, width, height, len(colours)


def check_variants(root: Path, cli: str, env: dict[str, str], tmp: Path, seeded: Path) -> None:
    """Step 3b, when the bundle ships CPU variants of llama.cpp (package.sh --variants): a node made to use
    each one (its folder as the only candidate, runtime/engine/variants.py) answers, with llama.cpp
    loaded from that folder alone. A variant that dies of SIGILL needs instructions this CPU lacks:
    reported, not failed (that is what the engine's probe falls back from)."""
    folder = root / "_internal" / "llama_variants"
    if not folder.is_dir():
        print("SKIP CPU variants (the bundle has none: built without --variants)", flush=True)
        return
    for variant in sorted(p for p in folder.iterdir() if p.is_dir()):
        only = tmp / f"only-{variant.name}"
        only.mkdir()
        (only / variant.name).symlink_to(variant)
        home = tmp / f"variant-{variant.name}"
        (home / "data" / "models").mkdir(parents=True)
        for f in (seeded / "data" / "models").iterdir():  # the verified model (and its checksum mark)
            os.link(f, home / "data" / "models" / f.name)
        node = Program(f"variant {variant.name}", [cli, "serve", "--port", "0", "--slots", "1", "--ctx-per-slot", "512"],
                       {**env, "CLOSEDMESH_HOME": str(home), "CLOSEDMESH_LLAMA_VARIANTS": str(only),
                        "LLAMA_CPP_LIB_PATH": str(variant)}, tmp / f"variant-{variant.name}.log")
        try:
            base = node.api_base()
            wait_for(lambda: health(base) == 200 or node.proc.poll() is not None, 300, f"the {variant.name} node")
            text, usage = stream_chat(base, "SmolLM2-135M-Instruct", "Say hello.")
            pids = [node.proc.pid, *children(node.proc.pid)]
            dirs = {str(Path(f).parent) for p in pids for f in mapped_files(p) if re.search(r"/lib(llama|ggml)[^/]*\.so", f)}
            check(f"CPU variant {variant.name}: answers, llama.cpp from its folder only",
                  bool(text.strip()) and dirs == {str(variant.resolve())}, f"{sorted(dirs)} {text[:40]!r}")
        except Exception as e:
            if node.proc.poll() == -signal.SIGILL:
                print(f"SKIP CPU variant {variant.name}: this CPU cannot run it (SIGILL)", flush=True)
            else:
                check(f"CPU variant {variant.name}", False, f"{type(e).__name__}: {e}")
        finally:
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
                node.proc.wait(30)


# -- the steps -------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, required=True, help="where closedmesh and closedmesh-app are")
    ap.add_argument("--root", required=True, help="the installed bundle's folder")
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--forbid", action="append", default=[], help="a path nothing may come from (repeatable)")
    ap.add_argument("--deb", help="the package to remove at the end")
    ap.add_argument("--gui", choices=["xvfb", "none"], default="xvfb", help="start the tray app under Xvfb")
    a = ap.parse_args()
    a.artifacts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="closedmesh-smoke-"))
    linux = sys.platform.startswith("linux")
    env = {"PATH": os.pathsep.join([str(a.bin), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]),
           "LANG": "C.UTF-8", "HOME": str(tmp / "user"), "XDG_RUNTIME_DIR": str(tmp / "run")}
    if os.name == "nt":  # what Windows programs need to start at all
        env.update({k: os.environ[k] for k in ("SYSTEMROOT", "SYSTEMDRIVE", "TEMP", "TMP", "USERPROFILE",
                                               "LOCALAPPDATA", "APPDATA") if k in os.environ})
    (tmp / "run").mkdir(mode=0o700)
    forbidden = [str(Path(f).resolve()) for f in a.forbid] + [f"{os.sep}.venv{os.sep}", f"{os.sep}site-packages{os.sep}"]
    suffix = ".exe" if os.name == "nt" else ""
    cli, app = str(a.bin / f"closedmesh{suffix}"), str(a.bin / f"closedmesh-app{suffix}")
    timings: dict[str, float] = {}
    try:
        # 1 ----------------------------------------------------------------------------------------------
        which = shutil.which("closedmesh", path=env["PATH"])
        check("the closedmesh on PATH is the bundle's", which is not None and Path(which).resolve().is_relative_to(
            Path(a.root).resolve()) if which else False, str(which and Path(which).resolve()))
        leaks = [v for v in [*env.values(), *sys.path, os.getcwd()] if any(f in v for f in forbidden)]
        check("no venv or source tree on any path", not leaks, ", ".join(leaks))
        v = subprocess.run([cli, "--version"], env=env, capture_output=True, text=True, timeout=120)
        check("closedmesh --version", v.returncode == 0 and v.stdout.startswith("closedmesh "), v.stdout.strip())

        # 2 ----------------------------------------------------------------------------------------------
        home_a = tmp / "node-a"
        node_a = Program("node A", [cli, "serve", "--port", "0", "--slots", "2", "--ctx-per-slot", "1024"],
                         {**env, "CLOSEDMESH_HOME": str(home_a)}, tmp / "node-a.log")
        base_a = node_a.api_base()
        wait_for(lambda: health(base_a) == 200, 300, "node A's /health to say ready")
        timings["cold start to /health (s)"] = time.monotonic() - node_a.started
        check("headless node: cold start to /health 200", True, f"{timings['cold start to /health (s)']:.1f} s")
        text, usage = stream_chat(base_a, "SmolLM2-135M-Instruct", "What is the capital of France?")
        check("headless node: streamed chat completion", bool(text.strip()) and bool(usage)
              and usage.get("completion_tokens", 0) > 0, repr(text[:60]))

        # 3 ----------------------------------------------------------------------------------------------
        pids = [node_a.proc.pid, *children(node_a.proc.pid)] if linux else []
        if linux:
            files = set().union(*(mapped_files(p) for p in pids))
            bad = sorted(f for f in files if any(x in f for x in forbidden))
            check("the node maps no file of the venv or the source tree", not bad and bool(files), ", ".join(bad[:5]))
            environ = " ".join(Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace") for p in pids)
            cwds = [os.readlink(f"/proc/{p}/cwd") for p in pids]
            seen = [f for f in forbidden if f in environ or any(f in c for c in cwds)]
            check("the node's environment and folder name neither", not seen, ", ".join(seen))
            llama_dirs = {str(Path(f).parent) for f in files if re.search(r"/lib(llama|ggml)[^/]*\.so", f)}
            check("llama.cpp comes from one folder of the bundle", len(llama_dirs) == 1 and all(
                d.startswith(str(Path(a.root).resolve())) for d in llama_dirs), ", ".join(sorted(llama_dirs)))
        else:
            print("SKIP mapped-file checks (they read /proc: Linux only)", flush=True)
        if linux:
            check_variants(Path(a.root), cli, env, tmp, home_a)

        # 4 ----------------------------------------------------------------------------------------------
        hub_port = free_port()
        home_h, home_b = tmp / "hub", tmp / "node-b"
        hub = Program("hub", [cli, "hub", "--host", "127.0.0.1", "--port", str(hub_port)],
                      {**env, "CLOSEDMESH_HOME": str(home_h)}, tmp / "hub.log")
        wait_for(lambda: "ClosedMesh hub listening" in hub.text() or hub.proc.poll() is not None, 120, "the hub")
        check("hub from the bundle (embedded nats-server) listens", hub.proc.poll() is None, hub.text()[-300:])
        models_b = home_b / "data" / "models"
        models_b.mkdir(parents=True)
        shutil.copyfile(home_a / "data" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", models_b / "mesh-only.gguf")
        node_b = Program("node B", [cli, "serve", "--port", "0", "--slots", "2", "--ctx-per-slot", "1024",
                                    "--model", str(models_b / "mesh-only.gguf")],
                         {**env, "CLOSEDMESH_HOME": str(home_b)}, tmp / "node-b.log")
        base_b = node_b.api_base()
        wait_for(lambda: health(base_b) == 200, 300, "node B's /health to say ready")
        for name, home, base in (("node-a", home_a, base_a), ("node-b", home_b, base_b)):
            inv = subprocess.run([cli, "mesh", "invite", "--ttl", "1h", "--port", "1"], capture_output=True, text=True,
                                 env={**env, "CLOSEDMESH_HOME": str(home_h)}, timeout=60)
            port = base.rsplit(":", 1)[1]
            join = subprocess.run([cli, "mesh", "join", inv.stdout.strip(), "--name", name, "--port", port],
                                  capture_output=True, text=True, env={**env, "CLOSEDMESH_HOME": str(home)}, timeout=120)
            check(f"{name} joins the hub with an invite (CLI)", inv.returncode == join.returncode == 0,
                  (inv.stderr + join.stdout + join.stderr).strip()[-300:])

        def mesh_model_on_a() -> dict | None:
            _, models = http_json(base_a + "/v1/models")
            return next((m for m in models["data"] if m["id"] == "mesh-only"), None)

        entry = wait_for(mesh_model_on_a, 120, "node A to list node B's model")
        served_by = (entry.get("closedmesh") or {}).get("served_by")
        check("node A lists node B's model as served by the mesh", served_by == "mesh", json.dumps(entry)[:300])
        text, usage = stream_chat(base_a, "mesh-only", "Name a colour.")
        check("node A answers for node B's model through the mesh", bool(text.strip()) and bool(usage), repr(text[:60]))

        # 5 ----------------------------------------------------------------------------------------------
        if a.gui == "none":
            print("SKIP the tray app under Xvfb (--gui none)", flush=True)
            return finish(timings)
        display = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                       and not Path(f"/tmp/.X{n}-lock").exists())
        fb = tmp / "fb"
        fb.mkdir()
        xvfb = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "1100x800x24", "-fbdir", str(fb), "-nolisten",
                                 "tcp"], stdout=subprocess.DEVNULL, stderr=open(tmp / "xvfb.log", "w"))
        PROCS.append(xvfb)
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{display}").exists(), 30, "Xvfb")
        app_port = free_port()
        tray = Program("tray app", [app, "--port", str(app_port)],
                       {**env, "CLOSEDMESH_HOME": str(tmp / "app"), "DISPLAY": f":{display}"}, tmp / "app.log")
        base_app = tray.api_base()
        wait_for(lambda: health(base_app) == 200, 300, "the tray app's node")
        check("tray app: its node answers /health", True, base_app)
        time.sleep(3)  # let the window paint its first frame
        png, w, h, colours = xwd_to_png((fb / "Xvfb_screen0").read_bytes())
        shot = a.artifacts / "frozen-app-window.png"
        shot.write_bytes(png)
        check("tray app: a window is on screen (screenshot)", colours > 20, f"{shot} ({w}x{h}, {colours} colours)")
        check("tray app: no Qt platform plugin error", "could not load the Qt platform plugin" not in tray.text()
              and "needs system libraries" not in tray.text())

        # 6 ----------------------------------------------------------------------------------------------
        if a.deb and linux:
            autostart = Path("/root/.config/autostart/closedmesh.desktop")
            other = autostart.with_name("someone-else.desktop")
            if autostart.exists():
                check("no start-at-login entry before the test", False, f"{autostart} exists: not touching it")
            else:
                autostart.parent.mkdir(parents=True, exist_ok=True)
                autostart.write_text("[Desktop Entry]\nType=Application\nName=ClosedMesh\n"
                                     f"Exec={a.root}/closedmesh-app --minimized\nTerminal=false\n")
                other_existed = other.exists()
                if not other_existed:
                    other.write_text("[Desktop Entry]\nType=Application\nName=Other\nExec=/usr/bin/true\n")
                running = bundle_pids(a.root)
                check("before removal: the bundle's processes run", len(running) >= 4, f"{len(running)} processes")
                t0 = time.monotonic()
                rm = subprocess.run(["dpkg", "-r", a.deb], capture_output=True, text=True, timeout=300)
                timings["dpkg -r (s)"] = time.monotonic() - t0
                check("dpkg -r", rm.returncode == 0, (rm.stdout + rm.stderr).strip()[-500:])
                left = bundle_pids(a.root)
                for p in PROCS:
                    if p is not xvfb:
                        try:
                            p.wait(30)
                        except subprocess.TimeoutExpired:
                            pass
                alive = [p.args[0] for p in PROCS if p is not xvfb and p.poll() is None]
                check("nothing is left running from the bundle", not left and not alive, f"{left} {alive}")
                check("the start-at-login entry is gone", not autostart.exists())
                check("another program's start-at-login entry stays", other.exists())
                if not other_existed:
                    other.unlink()
                check("the bundle's files are gone", not Path(a.root).exists() and not Path("/usr/bin/closedmesh").exists())
    except Exception as e:  # a step that could not run is a failure, with its reason
        check("smoke test ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        for p in PROCS:
            if p.poll() is None:
                try:
                    if os.name == "nt" or p.args[0] == "Xvfb":
                        p.terminate()
                    else:
                        os.killpg(p.pid, signal.SIGTERM)  # the program and what it started
                    p.wait(20)
                except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                    p.kill()
        for log in tmp.glob("*.log"):
            shutil.copyfile(log, a.artifacts / f"frozen-{log.name}")
        shutil.rmtree(tmp, ignore_errors=True)
    return finish(timings)


def finish(timings: dict[str, float]) -> int:
    for k, v in timings.items():
        print(f"timing: {k} = {v:.1f}")
    passed = sum(ok for _, ok, _ in RESULTS)
    print(f"{passed} passed, {len(RESULTS) - passed} failed")
    return 0 if passed == len(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
