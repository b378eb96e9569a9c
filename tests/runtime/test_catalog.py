"""The model catalog (runtime/models/catalog.py and catalog.json): validity, reference resolution,
search."""

from __future__ import annotations

import copy
import json
import os
from importlib import resources

import pytest

from runtime.models import embedded
from runtime.models.catalog import (
    BITS_PER_WEIGHT,
    CatalogEntry,
    CatalogError,
    ModelRef,
    UnknownModelError,
    default_entry,
    load_catalog,
    parse_catalog,
    resolve_reference,
    search,
)


@pytest.fixture(scope="module")
def catalog() -> list[CatalogEntry]:
    return load_catalog()


def by_id(catalog: list[CatalogEntry], id: str) -> CatalogEntry:
    return next(e for e in catalog if e.id == id)


def raw_catalog() -> dict:
    return json.loads(resources.files("runtime.models").joinpath("catalog.json").read_text())


# -- the packaged catalog ------------------------------------------------------------------------


def test_size_between_15_and_25(catalog):
    assert 15 <= len(catalog) <= 25


def test_ids_unique_ignoring_case(catalog):
    ids = [e.id.casefold() for e in catalog]
    assert len(ids) == len(set(ids))


def test_every_family_has_exactly_one_default(catalog):
    families = {e.family for e in catalog}
    for family in families:
        defaults = [e.id for e in catalog if e.family == family and e.default]
        assert len(defaults) == 1, (family, defaults)


def test_the_families_the_node_promises(catalog):
    families = {e.family for e in catalog}
    assert {"Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
            "Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct",
            "gemma-3-1b-it", "gemma-3-4b-it", "gemma-3-12b-it", "Mistral-7B-Instruct-v0.3",
            "Phi-4-mini-instruct", "SmolLM2-135M-Instruct", "SmolLM2-360M-Instruct",
            "SmolLM2-1.7B-Instruct"} <= families


def test_fields_are_well_formed(catalog):
    for e in catalog:
        assert e.file.endswith(".gguf") and e.repo.count("/") == 1
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0)
        assert (e.sha256 is None) == (e.size_bytes is None), e.id  # verified together, from one source
        assert e.quant in BITS_PER_WEIGHT
        assert e.quant in e.id  # the id names its exact quantization
        assert e.id.startswith(e.family) or e.embedded
        assert e.head_dim in (64, 128, 256) and 0 < e.n_kv_heads <= 32 and 0 < e.n_layers <= 64
        assert e.context_length >= 8192


def test_the_embedded_default_matches_embedded_py_and_the_real_file(catalog, model_path):
    e = by_id(catalog, "SmolLM2-135M-Instruct-Q4_1")
    assert e.embedded and e.default
    assert e.family == embedded.DEFAULT_MODEL_ID == "SmolLM2-135M-Instruct"
    assert e.file == embedded.FILENAME
    assert e.sha256 == embedded.SHA256
    assert e.size_bytes == os.path.getsize(model_path)
    assert [x.id for x in catalog if x.embedded] == [e.id]


def test_kv_bytes_per_token(catalog):
    # 2 (K and V) × layers × KV heads × head dim × 2 bytes (f16)
    assert by_id(catalog, "Qwen3-8B-Q4_K_M").kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2 == 147_456
    assert by_id(catalog, "Llama-3.1-8B-Instruct-Q4_K_M").kv_bytes_per_token() == 131_072
    assert by_id(catalog, "SmolLM2-135M-Instruct-Q4_1").kv_bytes_per_token() == 2 * 30 * 3 * 64 * 2


def test_exact_size_when_known(catalog):
    e = by_id(catalog, "Qwen3-8B-Q4_K_M")
    assert e.estimated_size_bytes() == e.size_bytes == 5_027_783_488
    assert not e.size_is_estimate


def test_estimated_size_when_unknown(catalog):
    e = by_id(catalog, "Qwen3-8B-Q8_0")
    assert e.size_bytes is None and e.size_is_estimate
    assert e.estimated_size_bytes() == int(e.parameters * 8.5 / 8)


def test_bits_per_weight_table_is_close_to_real_files(catalog):
    # For models of 3B and up (where embeddings do not dominate) the estimate is within 10 %.
    checked = 0
    for e in catalog:
        if e.size_bytes is not None and e.parameters >= 3_000_000_000:
            estimate = e.parameters * BITS_PER_WEIGHT[e.quant] / 8
            assert abs(estimate - e.size_bytes) / e.size_bytes < 0.10, e.id
            checked += 1
    assert checked >= 8


def test_load_catalog_returns_a_fresh_list(catalog):
    first = load_catalog()
    first.clear()
    assert len(load_catalog()) == len(catalog)


# -- validation ----------------------------------------------------------------------------------


def test_the_packaged_json_parses_to_the_catalog(catalog):
    assert parse_catalog(raw_catalog()) == catalog


def broken(edit) -> dict:
    data = copy.deepcopy(raw_catalog())
    edit(data["models"])
    return data


def entry_of(models: list[dict], id: str) -> dict:
    return next(m for m in models if m["id"] == id)


@pytest.mark.parametrize("edit, message", [
    (lambda ms: ms.append(dict(ms[0])), "duplicate id"),
    (lambda ms: ms.append(dict(ms[0], id=ms[0]["id"].upper(), default=False)), "duplicate id"),
    (lambda ms: entry_of(ms, "Qwen3-8B-Q8_0").update(default=True), "exactly one default"),
    (lambda ms: entry_of(ms, "Qwen3-8B-Q4_K_M").update(default=False), "exactly one default"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(sha256="ABC"), "sha256"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(sha256="A" * 64), "sha256"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(quant="Q9_Z"), "unknown quant"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(n_layers=0), "n_layers"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(n_layers=True), "wrong type"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(size_bytes="2 GB"), "wrong type"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(colour="blue"), "unknown fields"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").pop("license"), "missing fields"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(repo="no-owner"), "repo"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(file="model.bin"), ".gguf"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(id="Qwen3-8B"), "also family names"),
    (lambda ms: entry_of(ms, "Qwen3-4B-Q4_K_M").update(embedded=True), "more than one embedded"),
])
def test_invalid_catalogs_are_rejected(edit, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog(broken(edit))


def test_wrong_schema_is_rejected():
    with pytest.raises(CatalogError):
        parse_catalog({"schema": 2, "models": []})


# -- resolution: the catalog ---------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["Qwen3-8B-Q8_0", "qwen3-8b-q8_0", "QWEN3-8B-Q8_0", "  Qwen3-8B-Q8_0 "])
def test_exact_id_any_case(catalog, ref):
    r = resolve_reference(ref, catalog)
    assert (r.kind, r.id, r.entry.id) == ("catalog", "Qwen3-8B-Q8_0", "Qwen3-8B-Q8_0")
    assert r.sha256 is None  # none verified for this entry: the downloader takes Hugging Face's


@pytest.mark.parametrize("ref", ["Qwen3-8B", "qwen3-8b"])
def test_family_resolves_to_its_default_quant(catalog, ref):
    r = resolve_reference(ref, catalog)
    assert r == ModelRef(
        kind="catalog", id="Qwen3-8B-Q4_K_M", entry=by_id(catalog, "Qwen3-8B-Q4_K_M"),
        repo="Qwen/Qwen3-8B-GGUF", file="Qwen3-8B-Q4_K_M.gguf", revision="main",
        url="https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf",
        sha256="d98cdcbd03e17ce47681435b5150e34c1417f50b5c0019dd560e4882c5745785")


def test_every_family_resolves_to_its_default(catalog):
    for family in {e.family for e in catalog}:
        r = resolve_reference(family, catalog)
        assert r.entry.default and r.entry.family == family
        assert r.entry == default_entry(family.upper(), catalog)


def test_the_embedded_default_has_no_download_url(catalog):
    r = resolve_reference("SmolLM2-135M-Instruct", catalog)
    assert r.kind == "catalog" and r.entry.embedded
    assert r.url is None
    assert r.sha256 == embedded.SHA256


# -- resolution: Hugging Face references and URLs ------------------------------------------------


def test_hf_path_reference(catalog):
    r = resolve_reference("someone/Some-Model-GGUF/sub/dir/Some-Model-Q5_K_M.gguf", catalog)
    assert r == ModelRef(kind="hf", id="Some-Model-Q5_K_M", entry=None, repo="someone/Some-Model-GGUF",
                         file="sub/dir/Some-Model-Q5_K_M.gguf", revision="main",
                         url="https://huggingface.co/someone/Some-Model-GGUF/resolve/main/"
                             "sub/dir/Some-Model-Q5_K_M.gguf",
                         sha256=None)


def test_hf_colon_reference(catalog):
    r = resolve_reference("someone/Some-Model-GGUF:Some-Model-Q5_K_M.gguf", catalog)
    assert (r.kind, r.id, r.repo, r.file, r.sha256) == (
        "hf", "Some-Model-Q5_K_M", "someone/Some-Model-GGUF", "Some-Model-Q5_K_M.gguf", None)


def test_hf_reference_to_a_catalog_file_carries_its_sha256(catalog):
    # The id stays the file's stem; the entry's expected sha256 comes along.
    ref = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    r = resolve_reference(ref, catalog)
    assert r.kind == "hf" and r.id == "Meta-Llama-3.1-8B-Instruct-Q4_K_M"
    assert r.entry == by_id(catalog, "Llama-3.1-8B-Instruct-Q4_K_M")
    assert r.sha256 == "7b064f5842bf9532c91456deda288a1b672397a54fa729aa665952863033557c"


def test_plain_url(catalog):
    url = "https://example.com/models/My%20Model-Q4_K_M.gguf?token=abc"
    r = resolve_reference(url, catalog)
    assert r == ModelRef(kind="url", id="My Model-Q4_K_M", entry=None, repo=None,
                         file="My Model-Q4_K_M.gguf", revision="main", url=url, sha256=None)


def test_http_url_is_accepted(catalog):
    assert resolve_reference("http://10.0.0.2:8000/x.gguf", catalog).kind == "url"


def test_hf_resolve_url_is_an_hf_reference_at_that_revision(catalog):
    r = resolve_reference(
        "https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/7c41481f57cb95916b40956ab2f0b139b296d974/"
        "Qwen3-8B-Q4_K_M.gguf?download=true", catalog)
    assert (r.kind, r.id, r.repo, r.file, r.revision) == (
        "hf", "Qwen3-8B-Q4_K_M", "Qwen/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf",
        "7c41481f57cb95916b40956ab2f0b139b296d974")
    # Pinned to another revision, the content may differ from the catalog's: no expected sha256.
    assert r.entry is None and r.sha256 is None
    assert r.url == ("https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/"
                     "7c41481f57cb95916b40956ab2f0b139b296d974/Qwen3-8B-Q4_K_M.gguf")


def test_hf_url_at_main_matches_the_catalog(catalog):
    url = "https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf"
    r = resolve_reference(url, catalog)
    assert r.kind == "hf" and r.entry == by_id(catalog, "Qwen3-8B-Q4_K_M") and r.sha256 == r.entry.sha256


def test_hf_blob_url_and_encoded_revision(catalog):
    r = resolve_reference("https://hf.co/someone/repo/blob/refs%2Fpr%2F3/dir/m.gguf", catalog)
    assert (r.kind, r.repo, r.revision, r.file, r.id) == ("hf", "someone/repo", "refs/pr/3", "dir/m.gguf", "m")
    assert r.url == "https://huggingface.co/someone/repo/resolve/refs%2Fpr%2F3/dir/m.gguf"


def test_other_huggingface_urls_are_plain_urls(catalog):
    r = resolve_reference("https://huggingface.co/datasets/someone/data/resolve/main/m.gguf", catalog)
    assert r.kind == "url" and r.id == "m"


@pytest.mark.parametrize("url", ["https://example.com/model.bin", "https://example.com/",
                                 "https://huggingface.co/Qwen/Qwen3-8B-GGUF"])
def test_url_without_a_gguf_file_is_refused(catalog, url):
    with pytest.raises(UnknownModelError, match="does not point to a .gguf file"):
        resolve_reference(url, catalog)


def test_repo_without_a_file_says_so_and_lists_the_catalog_files(catalog):
    with pytest.raises(UnknownModelError, match="is a repository") as e:
        resolve_reference("Qwen/Qwen3-8B-GGUF", catalog)
    assert e.value.suggestions == ["Qwen3-8B-Q4_K_M", "Qwen3-8B-Q8_0"]


def test_quant_tag_instead_of_a_file_is_refused(catalog):
    with pytest.raises(UnknownModelError, match="does not name a GGUF file"):
        resolve_reference("bartowski/Qwen_Qwen3-8B-GGUF:Q4_K_M", catalog)


@pytest.mark.parametrize("ref", ["./models/x.gguf", "/abs/x.gguf", "owner/repo/../x.gguf", "owner/repo//x.gguf",
                                 "owner\\repo\\x.gguf", "~/x.gguf"])
def test_paths_are_not_hugging_face_references(catalog, ref):
    with pytest.raises(UnknownModelError):
        resolve_reference(ref, catalog)


# -- resolution: unknown and ambiguous names -----------------------------------------------------


def test_unknown_name_suggests_close_matches(catalog):
    with pytest.raises(UnknownModelError) as e:
        resolve_reference("qwen3-9b", catalog)
    assert str(e.value).startswith("unknown model 'qwen3-9b'. Did you mean: Qwen3-8B, Qwen3-4B")
    assert e.value.suggestions[:2] == ["Qwen3-8B", "Qwen3-4B"]
    assert set(e.value.suggestions) == {
        "Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B"}


def test_unknown_quant_of_a_known_family_suggests_the_family_and_its_quants(catalog):
    with pytest.raises(UnknownModelError) as e:
        resolve_reference("Qwen3-8B-Q5_K_M", catalog)
    assert e.value.suggestions == ["Qwen3-8B", "Qwen3-8B-Q4_K_M", "Qwen3-8B-Q8_0"]


def test_misspelling_is_suggested(catalog):
    with pytest.raises(UnknownModelError) as e:
        resolve_reference("gema-3-4b-it", catalog)
    assert e.value.suggestions[0] == "gemma-3-4b-it"


def test_a_partial_name_is_never_guessed(catalog):
    with pytest.raises(UnknownModelError) as e:
        resolve_reference("Mistral-7B", catalog)
    assert e.value.suggestions == ["Mistral-7B-Instruct-v0.3"]
    assert "Did you mean: Mistral-7B-Instruct-v0.3?" in str(e.value)


@pytest.mark.parametrize("ref, expected", [
    ("qwen3", ["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B"]),
    ("Llama", ["Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct"]),
    ("smollm2", ["SmolLM2-135M-Instruct", "SmolLM2-360M-Instruct", "SmolLM2-1.7B-Instruct"]),
])
def test_ambiguous_partial_lists_the_candidates(catalog, ref, expected):
    with pytest.raises(UnknownModelError) as e:
        resolve_reference(ref, catalog)
    assert e.value.suggestions == expected
    assert str(e.value) == f"ambiguous model name '{ref}': it matches {', '.join(expected)}. Name one of them."


def test_very_ambiguous_partial_is_shortened(catalog):
    with pytest.raises(UnknownModelError, match=r"and \d+ more\. Name one of them\.") as e:
        resolve_reference("b", catalog)
    assert len(e.value.suggestions) > 8


def test_nothing_close_explains_the_accepted_forms(catalog):
    with pytest.raises(UnknownModelError, match="owner/repo:file.gguf") as e:
        resolve_reference("zzzzzz", catalog)
    assert e.value.suggestions == []


def test_empty_reference(catalog):
    with pytest.raises(UnknownModelError):
        resolve_reference("   ", catalog)


# -- search --------------------------------------------------------------------------------------


def ids(entries: list[CatalogEntry]) -> list[str]:
    return [e.id for e in entries]


def test_search_family_prefix_lists_smallest_first_default_first(catalog):
    assert ids(search("QWEN3", catalog)) == [
        "Qwen3-0.6B-Q8_0", "Qwen3-1.7B-Q8_0", "Qwen3-4B-Q4_K_M", "Qwen3-8B-Q4_K_M", "Qwen3-8B-Q8_0",
        "Qwen3-14B-Q4_K_M", "Qwen3-32B-Q4_K_M"]


def test_search_exact_match_comes_first(catalog):
    result = ids(search("qwen3-8b", catalog))
    assert result[:2] == ["Qwen3-8B-Q4_K_M", "Qwen3-8B-Q8_0"]


def test_search_words_in_any_field(catalog):
    assert ids(search("llama 3b", catalog)) == ["Llama-3.2-3B-Instruct-Q4_K_M", "Llama-3.2-3B-Instruct-Q8_0"]
    assert ids(search("gemma q4_k_m", catalog)) == [
        "gemma-3-1b-it-Q4_K_M", "gemma-3-4b-it-Q4_K_M", "gemma-3-12b-it-Q4_K_M"]


def test_search_by_repo_owner(catalog):
    result = search("ggml-org", catalog)
    assert result and all(e.repo.startswith("ggml-org/") for e in result)


def test_search_substring_of_the_id(catalog):
    assert "Phi-4-mini-instruct-Q4_K_M" in ids(search("mini", catalog))


def test_search_tolerates_a_typo(catalog):
    assert "Mistral-7B-Instruct-v0.3-Q4_K_M" in ids(search("mistrall-7b-instruct-v0.3", catalog))


def test_search_empty_query_lists_everything(catalog):
    result = search("", catalog)
    assert sorted(ids(result)) == sorted(ids(catalog))
    assert [e.parameters for e in result] == sorted(e.parameters for e in result)


def test_search_without_matches(catalog):
    assert search("no-such-model-at-all", catalog) == []
