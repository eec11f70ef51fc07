"""The app's view of the guard: load it, check a message, turn the result into plain data.

Works with whatever the guard package provides; if it is missing or fails, the chat goes on without
indicators (the physician reminder is always shown: a fallback text is used if needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FALLBACK_REMINDER = (
    "medchat is not a doctor. Consult a licensed physician about your health, and call your local "
    "emergency number in an emergency."
)
FALLBACK_DOSING_NOTE = "Dosing depends on the person: confirm any dose with a physician or pharmacist."


def physician_reminder() -> str:
    try:
        from medchat.guard import PHYSICIAN_REMINDER
    except Exception:
        return FALLBACK_REMINDER
    return str(PHYSICIAN_REMINDER)


def guard_index_dir(adapter: str | None) -> Path | None:
    """The guard's reference index for this adapter: <run>/guard_index beside <run>/adapter.

    None lets the guard pick its shipped default index."""
    if adapter:
        candidate = Path(adapter).parent / "guard_index"
        if (candidate / "index.json").is_file():
            return candidate
    return None


def load_guard(adapter: str | None):
    from medchat.guard import Guard

    return Guard.load(guard_index_dir(adapter))


def result_dict(result: Any) -> dict:
    """GuardResult -> JSON-able dict {ood_level, ood_score, red_flags: [{rule_id, category, notice}], dosing_note}."""
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    flags = []
    for flag in getattr(result, "red_flags", None) or []:
        if isinstance(flag, dict):
            flags.append(flag)
        else:
            flags.append(
                {
                    "rule_id": getattr(flag, "rule_id", None),
                    "category": getattr(flag, "category", None),
                    "title": getattr(flag, "title", None),
                    "notice": str(getattr(flag, "notice", "") or ""),
                }
            )
    score = getattr(result, "ood_score", None)
    dosing = getattr(result, "dosing_note", False)
    return {
        "ood_level": getattr(result, "ood_level", None),
        "ood_score": float(score) if score is not None else None,
        "red_flags": flags,
        "dosing_note": dosing if isinstance(dosing, str) else bool(dosing),
    }


def ood_note(guard: dict | None) -> str | None:
    """The guard's note for an out-of-domain question (none for a red flag)."""
    guard = guard or {}
    if guard.get("ood_level") != "out_of_domain" or guard.get("red_flags"):
        return None
    try:
        from medchat.guard import ood_note as guard_ood_note

        return guard_ood_note(guard["ood_level"])
    except Exception:
        return "This question looks outside the medical topics this assistant was tuned on; its answer may be unreliable."


def notices(guard: dict | None) -> list[str]:
    """Texts shown before the answer: emergency notices (deduplicated), then the dosing note."""
    emergency, info = split_notices(guard)
    return emergency + info


def split_notices(guard: dict | None) -> tuple[list[str], list[str]]:
    """(emergency notices, other notes such as the dosing note)."""
    guard = guard or {}
    emergency: list[str] = []
    for flag in guard.get("red_flags") or []:
        text = (flag or {}).get("notice")
        if text and text not in emergency:
            emergency.append(text)
    dosing = guard.get("dosing_note")
    info = [dosing if isinstance(dosing, str) else _dosing_text()] if dosing else []
    return emergency, info


def _dosing_text() -> str:
    try:
        from medchat import guard as guard_module

        text = getattr(guard_module, "DOSING_NOTE", None)
    except Exception:
        text = None
    return str(text) if text else FALLBACK_DOSING_NOTE
