"""One served model: weights, batched generation context, chat template, embeddings and stats.

This is the engine's public face for the API layer: turn messages into prompt tokens, submit
generation requests, compute embeddings.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from ..hardware import Capability, plan_offload, plan_slots
from ..stats import RequestSample, RollingStats
from .llama_model import LlamaContext, LlamaModel, ModelInfo, ModelLoadError
from .scheduler import DoneEvent, GenRequest, Scheduler
from .templates import ChatTemplate

log = logging.getLogger(__name__)

N_BATCH = 512


@dataclass(frozen=True)
class EngineConfig:
    threads: int
    slots: int | None = None
    ctx_per_slot: int | None = None
    gpu_layers: int | None = None
    max_queue: int = 64
    kv_type: str = "f16"


class EmbeddingsUnsupported(Exception):
    pass


class ModelEngine:
    def __init__(self, model_id: str, path: Path, cap: Capability, cfg: EngineConfig) -> None:
        self.id = model_id
        self.path = path
        self.cfg = cfg
        self.stats = RollingStats()
        self._embed_lock = threading.Lock()
        self._embed_ctx: LlamaContext | None = None
        self._embed_error: str | None = None

        # Load on CPU first to read the metadata needed for the plans, only when offload is possible.
        probe_layers = 0
        self.model = LlamaModel(path, gpu_layers=probe_layers)
        info = self.model.info
        slot_plan = plan_slots(cap.backend, info.n_ctx_train, info.kv_bytes_per_token(cfg.kv_type), cap.vram_free_bytes,
                               cfg.slots, cfg.ctx_per_slot)
        offload = plan_offload(cap.backend, info.n_layer, info.size_bytes, slot_plan.kv_bytes,
                               cap.vram_free_bytes, requested=cfg.gpu_layers)
        if offload.gpu_layers != probe_layers:
            self.model.close()
            self.model = LlamaModel(path, gpu_layers=offload.gpu_layers)
        self.offload = offload
        self.slot_plan = slot_plan
        self.ctx = LlamaContext(self.model, slot_plan.slots, slot_plan.ctx_per_slot, N_BATCH, cfg.threads,
                               kv_type=cfg.kv_type)
        self.template = ChatTemplate.for_model(info.chat_template, info.bos_text, info.eos_text)
        self.scheduler = Scheduler(self.model, self.ctx, cfg.max_queue, on_finished=self._record)
        log.info(
            "loaded %s (%s, %s): %d slots × %d tokens context (KV %.0f MiB), %d/%d layers on GPU (%s), %d threads%s",
            model_id, path.name, info.description, slot_plan.slots, self.ctx.n_ctx_seq,
            slot_plan.kv_bytes / 2**20, offload.gpu_layers, offload.total_layers, offload.reason, cfg.threads,
            "; no chat template in the GGUF, using ChatML" if self.template.is_fallback else "",
        )

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def n_ctx_seq(self) -> int:
        return self.ctx.n_ctx_seq

    def _record(self, ev: DoneEvent) -> None:
        self.stats.add(RequestSample(ev.tokens_per_second, ev.ttft_ms))

    # -- prompts -----------------------------------------------------------------------------------

    def _tokenize_rendered(self, text: str) -> list[int]:
        info = self.info
        # Templates usually write the BOS text themselves; never add a second one.
        add_bos = info.add_bos and not (info.bos_text and text.startswith(info.bos_text))
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

    def chat_prompt(self, messages: list[dict[str, str]], continue_with: str = "") -> list[int]:
        """The prompt for the assistant's next turn; ``continue_with`` is the start of that turn already
        written (an answer begun on a peer that was lost), which the model carries on from."""
        return self._tokenize_rendered(self.template.render(messages, add_generation_prompt=True) + continue_with)

    def completion_prompt(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=self.info.add_bos, parse_special=False)

    def continuation_tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=False) if text else []

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def submit(self, req: GenRequest) -> None:
        self.scheduler.submit(req)

    # -- embeddings --------------------------------------------------------------------------------

    def embed(self, text: str | list[int]) -> tuple[list[float], int]:
        """Mean-pooled, L2-normalised embedding of one input, and its token count. Blocking: call it
        from a worker thread."""
        with self._embed_lock:
            if self._embed_ctx is None:
                if self._embed_error:
                    raise EmbeddingsUnsupported(self._embed_error)
                try:
                    self._embed_ctx = LlamaContext(self.model, 1, self.n_ctx_seq, self.n_ctx_seq,
                                                   self.cfg.threads, embeddings=True)
                except ModelLoadError as e:
                    self._embed_error = f"model '{self.id}' does not support embeddings here: {e}"
                    raise EmbeddingsUnsupported(self._embed_error) from None
            ectx = self._embed_ctx
            tokens = text if isinstance(text, list) else self.model.tokenize(text, add_special=True, parse_special=False)
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
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec], len(tokens)

    # -- status / lifecycle ---------------------------------------------------------------------------

    def status(self) -> dict:
        c = self.scheduler.counts()
        info = self.info
        return {
            "id": self.id,
            "file": str(self.path),
            "state": "ready",
            "context_length": self.n_ctx_seq,
            "context_length_trained": info.n_ctx_train,
            "slots": c["slots"],
            "slots_busy": c["slots_busy"],
            "in_flight": c["in_flight"],
            "queued": c["queued"],
            "batch_size": self.ctx.n_batch,
            "engine_steps": c["steps"],
            "engine_decode_seconds": c["decode_seconds"],
            "engine_step_seconds": c["step_seconds"],
            "kv_cache_bytes": self.slot_plan.kv_bytes,
            "kv_cache_type": self.cfg.kv_type,
            "gpu_layers": self.offload.gpu_layers,
            "layers": self.offload.total_layers,
            "parameters": info.n_params,
            "size_bytes": info.size_bytes,
            "architecture": info.architecture,
            "chat_template": "fallback-chatml" if self.template.is_fallback else "gguf",
        }

    def close(self) -> None:
        self.scheduler.stop()
        self.ctx.close()
        if self._embed_ctx:
            self._embed_ctx.close()
        self.model.close()
