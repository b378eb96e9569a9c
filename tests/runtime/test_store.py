"""Resolving --model specs (runtime/models/store.py). resolve() never reads the files, so tiny dummy
files stand in for models."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.models.embedded import DEFAULT_MODEL_ID, FILENAME
from runtime.models.store import ModelSpec, ModelSpecError, model_id_for_file, resolve


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    # Run from an empty folder so relative specs never hit files of the checkout.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return d


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"GGUF")
    return p


@pytest.mark.parametrize("spec", [DEFAULT_MODEL_ID, DEFAULT_MODEL_ID.lower(), DEFAULT_MODEL_ID.upper(),
                                  "smollm2-135M-INSTRUCT"])
def test_default_id_any_case(models_dir, spec):
    assert resolve(spec, models_dir) == ModelSpec(DEFAULT_MODEL_ID, None, embedded_default=True)


def test_default_id_wins_over_a_file_of_that_name_in_the_models_dir(models_dir):
    touch(models_dir / f"{DEFAULT_MODEL_ID}.gguf")
    assert resolve(DEFAULT_MODEL_ID, models_dir).embedded_default


def test_existing_gguf_path(models_dir, tmp_path):
    f = touch(tmp_path / "elsewhere" / "Qwen2.5-0.5B-Instruct-Q8_0.gguf")
    spec = resolve(str(f), models_dir)
    assert spec == ModelSpec("Qwen2.5-0.5B-Instruct-Q8_0", f.resolve())
    assert not spec.embedded_default


def test_existing_relative_path(models_dir):
    touch(Path.cwd() / "sub" / "tiny.gguf")
    assert resolve("sub/tiny.gguf", models_dir) == ModelSpec("tiny", (Path.cwd() / "sub" / "tiny.gguf").resolve())
    touch(Path.cwd() / "here.GGUF")
    assert resolve("here.GGUF", models_dir) == ModelSpec("here", (Path.cwd() / "here.GGUF").resolve())


def test_existing_path_with_home_expansion(models_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    f = touch(home / "m" / "x.gguf")
    monkeypatch.setenv("HOME", str(home))
    assert resolve("~/m/x.gguf", models_dir) == ModelSpec("x", f.resolve())


def test_existing_file_without_gguf_suffix_is_taken_as_a_path(models_dir, tmp_path):
    f = touch(tmp_path / "blobs" / "sha256-abc")
    assert resolve(str(f), models_dir) == ModelSpec("sha256-abc", f.resolve())


def test_default_file_by_path_gets_the_default_id(models_dir, tmp_path):
    in_dir = touch(models_dir / FILENAME)
    assert resolve(str(in_dir), models_dir) == ModelSpec(DEFAULT_MODEL_ID, in_dir.resolve())
    copy = touch(tmp_path / "copy" / FILENAME)
    assert resolve(str(copy), models_dir) == ModelSpec(DEFAULT_MODEL_ID, copy.resolve())


@pytest.mark.parametrize("rel", ["missing.gguf", "nowhere/model.gguf", "nowhere/model", "dir/MODEL.GGUF"])
def test_missing_path(models_dir, tmp_path, rel):
    with pytest.raises(ModelSpecError, match="model file not found"):
        resolve(str(tmp_path / rel), models_dir)


def test_relative_path_like_spec_that_is_missing(models_dir):
    with pytest.raises(ModelSpecError, match="model file not found"):
        resolve("models/thing", models_dir)
    with pytest.raises(ModelSpecError, match="model file not found"):
        resolve("thing.gguf", models_dir)


def test_directory_is_not_a_model(models_dir, tmp_path):
    d = tmp_path / "adir.gguf"
    d.mkdir()
    with pytest.raises(ModelSpecError, match="model file not found"):
        resolve(str(d), models_dir)


def test_file_name_in_models_dir(models_dir):
    f = touch(models_dir / "Llama-3.2-1B-Instruct-Q4_K_M.gguf")
    expected = ModelSpec("Llama-3.2-1B-Instruct-Q4_K_M", f.resolve())
    assert resolve("Llama-3.2-1B-Instruct-Q4_K_M", models_dir) == expected
    assert resolve("llama-3.2-1b-instruct-q4_k_m", models_dir) == expected
    # The name without its quantization suffix also finds it.
    assert resolve("Llama-3.2-1B-Instruct", models_dir) == expected


@pytest.mark.parametrize("filename, short", [
    ("phi-3-mini.Q5_K_S.gguf", "phi-3-mini"),
    ("tinyllama.IQ3_XS.gguf", "tinyllama"),
    ("gemma-2b-F16.gguf", "gemma-2b"),
    ("gemma-2b.bf16.gguf", "gemma-2b"),
    ("mistral-7b-f32.gguf", "mistral-7b"),
])
def test_quant_suffixes_are_optional(models_dir, filename, short):
    f = touch(models_dir / filename)
    assert resolve(short, models_dir) == ModelSpec(Path(filename).stem, f.resolve())


def test_exact_quantization_is_chosen_among_several(models_dir):
    touch(models_dir / "m.Q4_0.gguf")
    q8 = touch(models_dir / "m.Q8_0.gguf")
    assert resolve("m.Q8_0", models_dir) == ModelSpec("m.Q8_0", q8.resolve())


def test_non_gguf_files_in_models_dir_are_ignored(models_dir):
    touch(models_dir / "notes.txt")
    touch(models_dir / "partial.gguf.part")
    for spec in ("notes", "partial", "partial.gguf"):
        with pytest.raises(ModelSpecError):
            resolve(spec, models_dir)


@pytest.mark.parametrize("spec", ["gpt-4o", "llama3", "Q4_0"])
def test_unknown_names_the_default(models_dir, spec):
    touch(models_dir / "other-model.Q4_0.gguf")
    with pytest.raises(ModelSpecError) as ei:
        resolve(spec, models_dir)
    msg = str(ei.value)
    assert DEFAULT_MODEL_ID in msg
    assert spec in msg
    assert str(models_dir) in msg


def test_unknown_when_models_dir_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match=DEFAULT_MODEL_ID):
        resolve("some-model", tmp_path / "no-such-dir")


def test_model_id_for_file_keeps_the_quantization():
    assert model_id_for_file(Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct.Q4_1"
    assert model_id_for_file(Path("a.Q4_0.gguf")) != model_id_for_file(Path("a.Q8_0.gguf"))
