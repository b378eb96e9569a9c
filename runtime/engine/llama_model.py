"""A loaded GGUF model and one llama.cpp context holding several sequences.

Thin, typed wrapper over llama-cpp-python's low-level ctypes API. It owns the native handles and
frees them; nothing else in the project calls ``llama_cpp`` directly except the scheduler's hot loop
(through the methods here) and the sampler builder.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import llama_cpp

from .events import KV_TYPES, ModelInfo

log = logging.getLogger(__name__)

# llama.cpp logs every tensor it loads; keep its errors only unless the user asked for --verbose.
_llama_log = logging.getLogger("llama-cpp-python")
if _llama_log.level == logging.NOTSET:
    _llama_log.setLevel(logging.ERROR)

_backend_lock = threading.Lock()
_backend_ready = False


def _ensure_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


class ModelLoadError(RuntimeError):
    pass


def _meta_str(model: llama_cpp.llama_model_p, key: str) -> str | None:
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1


class LlamaModel:
    """The weights (loaded once) plus tokenizer helpers. Contexts are created from it."""

    def __init__(self, path: Path, gpu_layers: int = 0) -> None:
        _ensure_backend()
        self.path = path
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.gpu_layers = gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {path} (not a valid GGUF file, or unsupported architecture)"
            )
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self._pieces: dict[int, bytes] = {}
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, 256)
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.info = ModelInfo(
            path=path,
            description=desc.value.decode(errors="replace"),
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(model),
            n_layer=llama_cpp.llama_model_n_layer(model),
            n_embd=llama_cpp.llama_model_n_embd(model),
            n_head_kv=llama_cpp.llama_model_n_head_kv(model),
            n_head=llama_cpp.llama_model_n_head(model),
            n_vocab=self.n_vocab,
            n_params=llama_cpp.llama_model_n_params(model),
            size_bytes=llama_cpp.llama_model_size(model),
            chat_template=_meta_str(model, "tokenizer.chat_template"),
            bos_text=self.token_text(bos) if bos >= 0 else "",
            eos_text=self.token_text(eos) if eos >= 0 else "",
            add_bos=bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)),
            architecture=_meta_str(model, "general.architecture") or "unknown",
        )

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    # -- tokenizer -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        arr = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            arr = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        return list(arr[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        if not special:  # the hot path while generating: one ctypes round trip per token id, ever
            piece = self._pieces.get(token)
            if piece is None:
                piece = self._pieces[token] = self._token_bytes(token, False)
            return piece
        return self._token_bytes(token, True)

    def _token_bytes(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    def vocab_text_facts(self) -> tuple[int, list[str]]:
        """(the longest text any one token stands for, in bytes — special tokens as written; the texts of
        the special tokens, which only mean themselves when a text is tokenized with parse_special).

        A text of B bytes is at least B / longest tokens, which bounds a prompt's length before it is
        tokenized; a content that contains a special token's text is tokenized as plain text."""
        longest = 0
        specials: list[str] = []
        for t in range(self.n_vocab):
            written, plain = self._token_bytes(t, True), self._token_bytes(t, False)
            longest = max(longest, len(written), len(plain))
            if written and not plain:
                specials.append(written.decode("utf-8", errors="replace"))
        return longest, sorted(set(specials))

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


class LlamaContext:
    """One llama.cpp context with ``n_seq`` independent sequences of ``n_ctx_seq`` tokens each."""

    def __init__(
        self,
        model: LlamaModel,
        n_seq: int,
        n_ctx_seq: int,
        n_batch: int,
        threads: int,
        embeddings: bool = False,
        kv_type: str = "f16",
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        # Every sequence gets its own n_ctx_seq cells: one long request can never starve the others
        # of KV cache space mid-generation.
        params.kv_unified = False
        if kv_type != "f16":
            params.type_k = params.type_v = KV_TYPES[kv_type][0]
            params.flash_attn_type = 1  # a quantized V cache needs flash attention
        if embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        else:
            # Generation needs at most one row of logits per sequence per step: without this cap
            # llama.cpp reserves logits for a whole batch (n_batch × n_vocab floats, ~100 MB here).
            params.n_outputs_max = n_seq
        ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context of {n_seq}×{n_ctx_seq} tokens for {model.path.name} "
                f"(out of memory?). Try fewer slots (--slots) or a smaller context (--ctx-per-slot)."
            )
        self.ctx = ctx
        self.model = model
        self.n_seq = n_seq
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = n_batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._cap = n_batch

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def set_threads(self, n: int) -> None:
        llama_cpp.llama_set_n_threads(self.ctx, n, n)

    def n_threads(self) -> int:
        return int(llama_cpp.llama_n_threads(self.ctx))

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> int:
        """Decode (token, pos, seq, wants_logits) entries in one llama_decode call. Returns its code."""
        b = self.batch
        n = len(entries)
        assert n <= self._cap
        tok, pos, nseq, sid, lg = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (t, p, s, want) in enumerate(entries):
            tok[i] = t
            pos[i] = p
            nseq[i] = 1
            sid[i][0] = s
            lg[i] = want
        b.n_tokens = n
        return llama_cpp.llama_decode(self.ctx, b)

    def embedding(self, seq: int) -> list[float]:
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
        if not ptr:
            raise RuntimeError("llama.cpp returned no embedding")
        return ptr[: self.model.info.n_embd]
