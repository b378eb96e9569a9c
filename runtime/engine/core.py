"""One served model inside its engine worker process: weights, batched generation context, tokenizer,
embeddings.

Only the worker process (worker.py) builds an EngineCore: it is the code that calls into llama.cpp, and
llama.cpp can abort or crash on inputs nobody foresaw. The node talks to it through ModelEngine
(engine.py), which supervises the worker.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

from ..hardware import Capability, plan_offload, plan_slots
from .events import EngineConfig, EngineStopped, Finished, GenRequest, ModelInfo
from .llama_model import LlamaContext, LlamaModel, ModelLoadError
from .scheduler import Scheduler

log = logging.getLogger(__name__)

N_BATCH = 512


class EmbeddingsUnsupported(Exception):
    pass


class EngineCore:
    def __init__(
        self,
        model_id: str,
        path: Path,
        cap: Capability,
        cfg: EngineConfig,
        on_finished: Callable[[Finished], None] | None = None,
        on_step: Callable[[], None] | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.id = model_id
        self.path = path
        self.cfg = cfg
        self._embed_lock = threading.Lock()
        self._embed_ctx: LlamaContext | None = None
        self._embed_error: str | None = None

        # Load on CPU first to read the metadata needed for the plans, only when offload is possible.
        probe_layers = 0
        self.model = LlamaModel(path, gpu_layers=probe_layers)
        info = self.model.info
        slot_plan = plan_slots(
            cap.backend,
            info.n_ctx_train,
            info.kv_bytes_per_token(cfg.kv_type),
            cap.vram_free_bytes,
            cfg.slots,
            cfg.ctx_per_slot,
        )
        offload = plan_offload(
            cap.backend,
            info.n_layer,
            info.size_bytes,
            slot_plan.kv_bytes,
            cap.vram_free_bytes,
            requested=cfg.gpu_layers,
        )
        if offload.gpu_layers != probe_layers:
            self.model.close()
            self.model = LlamaModel(path, gpu_layers=offload.gpu_layers)
        self.offload = offload
        self.slot_plan = slot_plan
        self.ctx = LlamaContext(
            self.model, slot_plan.slots, slot_plan.ctx_per_slot, N_BATCH, cfg.threads, kv_type=cfg.kv_type
        )
        self.scheduler = Scheduler(
            self.model, self.ctx, cfg.max_queue, on_finished=on_finished, on_step=on_step, on_crash=on_crash
        )
        log.debug(
            "loaded %s (%s, %s): %d slots × %d tokens context (KV %.0f MiB), %d/%d layers on GPU (%s), %d threads",
            model_id,
            path.name,
            info.description,
            slot_plan.slots,
            self.ctx.n_ctx_seq,
            slot_plan.kv_bytes / 2**20,
            offload.gpu_layers,
            offload.total_layers,
            offload.reason,
            cfg.threads,
        )

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def n_ctx_seq(self) -> int:
        return self.ctx.n_ctx_seq

    # -- tokens ------------------------------------------------------------------------------------

    def tokenize_rendered(self, text: str) -> list[int]:
        """A rendered chat prompt (special tokens written as text by the template) → tokens."""
        info = self.info
        # Templates usually write the BOS text themselves; never add a second one.
        add_bos = info.add_bos and not (info.bos_text and text.startswith(info.bos_text))
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        """A rendered chat prompt in pieces: the template's markup with its special tokens, the messages'
        contents as plain text (their special-token texts are just text)."""
        info = self.info
        first = segments[0][0] if segments else ""
        tokens: list[int] = []
        if info.add_bos and not (info.bos_text and first.startswith(info.bos_text)):
            tokens = self.model.tokenize("", add_special=True, parse_special=False)
        for text, markup in segments:
            tokens += self.model.tokenize(text, add_special=False, parse_special=markup)
        return tokens

    def completion_prompt(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=self.info.add_bos, parse_special=False)

    def continuation_tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=False) if text else []

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def submit(self, req: GenRequest) -> None:
        self.scheduler.submit(req)

    def set_threads(self, n: int) -> None:
        """Decode with ``n`` threads from the next step on (run on the engine thread, between steps)."""
        try:
            self.scheduler.call(lambda: self.ctx.set_threads(n))
        except EngineStopped:
            pass  # the worker is stopping

    def n_threads(self) -> int:
        """The decode threads the context uses now, as llama.cpp reports them (read on the engine thread)."""
        return self.scheduler.call(self.ctx.n_threads).result()

    def probe(self) -> None:
        """One real decode and its removal: the first matrix multiplies of this build on this CPU happen
        here, at load, not in a user's request (a build that traps dies now, in the worker, as a probe).
        Run on the engine thread, as every decode is (Scheduler.call)."""

        def run() -> int:
            rc = self.ctx.decode([(0, 0, 0, True)])
            self.ctx.seq_remove(0)
            return rc

        rc = self.scheduler.call(run).result()
        if rc != 0:
            raise ModelLoadError(f"llama.cpp could not run {self.path.name} (decode failed with code {rc})")

    # -- embeddings --------------------------------------------------------------------------------

    def embed(self, text: str | list[int]) -> tuple[list[float], int]:
        """Mean-pooled, L2-normalised embedding of one input, and its token count. Blocking: call it
        from a worker thread; the decode itself runs on the engine thread, between steps (Scheduler.call)."""
        vec, n = self.scheduler.call(lambda: self._embed_now(text)).result()
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec], n

    def _embed_now(self, text: str | list[int]) -> tuple[list[float], int]:
        with self._embed_lock:
            if self._embed_ctx is None:
                if self._embed_error:
                    raise EmbeddingsUnsupported(self._embed_error)
                try:
                    self._embed_ctx = LlamaContext(
                        self.model, 1, self.n_ctx_seq, self.n_ctx_seq, self.cfg.threads, embeddings=True
                    )
                except ModelLoadError as e:
                    self._embed_error = f"model '{self.id}' does not support embeddings here: {e}"
                    raise EmbeddingsUnsupported(self._embed_error) from None
            ectx = self._embed_ctx
            tokens = (
                text if isinstance(text, list) else self.model.tokenize(text, add_special=True, parse_special=False)
            )
            if not tokens:
                raise ValueError("cannot embed an empty input")
            if len(tokens) > ectx.n_ctx_seq:
                raise OverflowError(len(tokens))
            ectx.seq_remove(0)
            rc = ectx.decode([(t, i, 0, True) for i, t in enumerate(tokens)])
            if rc != 0:
                raise RuntimeError(f"llama.cpp decode failed (code {rc}) while embedding")
            vec = ectx.embedding(0)
            ectx.seq_remove(0)
        return vec, len(tokens)

    # -- status / lifecycle ---------------------------------------------------------------------------

    def describe(self) -> dict:
        """What the node needs to know about this engine, sent once when the worker is ready."""
        info = self.info
        longest, specials = self.model.vocab_text_facts()
        return {
            "info": info,
            "n_ctx_seq": self.n_ctx_seq,
            "max_token_bytes": longest,
            "special_texts": specials,
            "slots": self.scheduler.n_slots,
            "batch_size": self.ctx.n_batch,
            "kv_cache_bytes": self.slot_plan.kv_bytes,
            "offload": self.offload,
        }

    def close(self) -> None:
        self.scheduler.stop()
        self.ctx.close()
        if self._embed_ctx:
            self._embed_ctx.close()
        self.model.close()
