"""What the application does with a guard result: notices before the answer, notes, decline, reminder."""

from __future__ import annotations

from medchat.core.guard.notices import (
    DECLINE_MESSAGE,
    DOSING_NOTE,
    EMERGENCY_NOTICE,
    OUT_OF_DOMAIN_NOTE,
    PHYSICIAN_REMINDER,
    UNCERTAIN_NOTE,
)

POLICIES = ("note", "decline")
DEFAULT_POLICY = "note"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown out-of-domain policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    return policy


def should_decline(result, policy: str = DEFAULT_POLICY) -> bool:
    """True when the policy is "decline" and the question is out of domain (never for a red flag)."""
    check_policy(policy)
    return policy == "decline" and result.ood_level == "out_of_domain" and not result.red_flags


def ood_note(result_or_level, policy: str = DEFAULT_POLICY, include_uncertain: bool = False) -> str | None:
    """The visible note for the out-of-domain level (a GuardResult or a level string), or None.

    "note" policy: the out-of-domain note (and, with include_uncertain, the milder one for "uncertain").
    "decline" policy: the polite refusal for out-of-domain questions.
    """
    check_policy(policy)
    level = getattr(result_or_level, "ood_level", result_or_level)
    if getattr(result_or_level, "red_flags", None):
        return None  # an emergency notice is shown instead; never decline or hedge a red flag
    if level == "out_of_domain":
        return DECLINE_MESSAGE if policy == "decline" else OUT_OF_DOMAIN_NOTE
    if level == "uncertain" and include_uncertain:
        return UNCERTAIN_NOTE
    return None


def notices_before(result) -> list[str]:
    """Fixed texts to show before any generated text: one emergency notice per matched category, then
    the dosing note."""
    out: list[str] = []
    for flag in result.red_flags:
        if flag.notice not in out:
            out.append(flag.notice)
    if result.dosing_note:
        out.append(DOSING_NOTE)
    return out


def emergency_notice(category: str) -> str:
    return EMERGENCY_NOTICE.get(category, EMERGENCY_NOTICE["emergency"])


def with_reminder(answer: str) -> str:
    """The answer with the physician reminder appended (once)."""
    answer = answer.rstrip()
    if answer.endswith(PHYSICIAN_REMINDER):
        return answer
    return f"{answer}\n\n{PHYSICIAN_REMINDER}" if answer else PHYSICIAN_REMINDER
