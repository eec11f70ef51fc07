"""Library warnings a user can do nothing about, silenced at the entry points (not in the library code, so
tests and callers embedding medchat still see them)."""

from __future__ import annotations

import warnings

KNOWN = [
    # peft asks transformers 5 the deprecated name on every adapter load.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def quiet_known_warnings() -> None:
    for category, message in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
