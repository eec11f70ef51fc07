"""Guard test helpers: a deterministic bag-of-words embedder (for tests where the embedder is not the point)."""

from __future__ import annotations

import hashlib
import re

import numpy as np


STOPWORDS = frozenset("a an and are by do does for how in is of the to was what when where which who why with".split())


class HashEmbedder:
    """Each word hashes to a fixed random unit vector; a text is the normalised sum of its words. Its
    "layers" hash the words with a salt each, the last one without (so it equals `encode`, as in the real one)."""

    name = "test-hash-embedder"
    dim = 32
    n_layers = 2
    loaded = True

    def __init__(self):
        self.calls = 0

    def load(self):
        return self

    def _word(self, w: str) -> np.ndarray:
        seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
        return np.random.RandomState(seed).standard_normal(self.dim).astype(np.float32)

    def _encode(self, texts, salt: str = "") -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = [w for w in re.findall(r"[a-z]+", t.lower()) if w not in STOPWORDS]
            v = sum((self._word(salt + w) for w in words), np.zeros(self.dim, np.float32))
            n = np.linalg.norm(v)
            out[i] = v / n if n else v
        return out

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else texts
        self.calls += 1
        return self._encode(texts)

    def encode_layers(self, texts, batch_size: int = 64) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else texts
        self.calls += 1
        return np.hstack([self._encode(texts, "layer0:"), self._encode(texts)])


MEDICAL = [
    "symptoms of diabetes",
    "how is diabetes treated",
    "causes of high blood pressure",
    "symptoms of asthma",
    "how is asthma treated",
    "causes of kidney disease",
    "treatments for migraine",
    "symptoms of migraine",
    "how is high blood pressure treated",
    "what causes asthma attacks",
    "symptoms of kidney disease",
    "how is migraine diagnosed",
]
MEDICAL_CAL = [
    f"{t} {d}"
    for d in ("diabetes", "asthma", "migraine", "kidney disease")
    for t in ("symptoms and treatment of", "best treatment for", "what causes")
]
GENERAL = [
    "who won the world cup in football",
    "what is the capital city of france",
    "who wrote the song about the river",
    "when did the first man land on the moon",
    "what movie won the oscar for best picture",
    "where is the tallest mountain in the world",
    "who played the lead in the film",
    "what team won the super bowl",
    "when was the city founded",
    "who is the president of the country",
    "what language do they speak in brazil",
    "what is the population of the city",
]




def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic_groups(n: int = 60, dim: int = 16, seed: int = 0) -> tuple[dict[str, np.ndarray], set[str]]:
    """{group: unit embeddings} for three medical and four general groups: each side leans along its own
    axis, each group adds its own direction and noise, so a left-out group is new but on its side."""
    rng = np.random.RandomState(seed)
    med_axis, gen_axis = np.eye(dim)[0], np.eye(dim)[1]
    groups, medical = {}, set()
    for i, name in enumerate(["med_a", "med_b", "med_c", "gen_a", "gen_b", "gen_c", "gen_d"]):
        axis = med_axis if name.startswith("med") else gen_axis
        own = rng.standard_normal(dim) * 0.6
        groups[name] = unit(2.0 * axis + own + rng.standard_normal((n, dim)) * 0.5)
        if name.startswith("med"):
            medical.add(name)
    return groups, medical
