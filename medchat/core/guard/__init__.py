"""The guard: out-of-domain indicator, emergency red flags, dosing note and the physician reminder.

    from medchat.core.guard import Guard, PHYSICIAN_REMINDER, notices_before, ood_note, with_reminder
    guard = Guard.load(None)              # shipped default index; nothing heavy loaded yet
    result = guard.check("my dad's face is drooping")   # GuardResult(ood_score, ood_level, red_flags, dosing_note)

Red-flag and dosing rules are pure text rules (assets/guard/red_flags.yaml) and work without the embedder.
The out-of-domain score (a logistic score on all-MiniLM-L6-v2 embeddings, assets/guard/default_index) loads
the embedder on first use (`guard.warm_up()`).
"""

from __future__ import annotations

import importlib

# Names are imported on first use (PEP 562) so that `import medchat.app.guard_cli` (and `medchat --help`)
# stays fast: numpy and the index code load only when something here is touched.
_EXPORTS = {
    "medchat.core.guard.build": ["build_index", "build_reference_index"],
    "medchat.core.guard.calibration": ["LEVELS", "Thresholds"],
    "medchat.core.guard.guard": ["Guard", "GuardResult", "RedFlag"],
    "medchat.core.guard.index": ["GuardIndex", "GuardIndexError", "default_index_dir"],
    "medchat.core.guard.notices": [
        "DECLINE_MESSAGE",
        "DOSING_NOTE",
        "EMERGENCY_NOTICE",
        "LEVEL_LABELS",
        "OUT_OF_DOMAIN_NOTE",
        "PHYSICIAN_REMINDER",
        "UNCERTAIN_NOTE",
    ],
    "medchat.core.guard.policy": [
        "DEFAULT_POLICY",
        "POLICIES",
        "emergency_notice",
        "notices_before",
        "ood_note",
        "should_decline",
        "with_reminder",
    ],
    "medchat.core.guard.rules": ["RuleSet", "RulesError"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'medchat.core.guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
