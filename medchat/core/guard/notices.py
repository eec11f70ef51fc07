"""Every user-facing text of the guard, worded once. The application shows these; the model never writes them."""

from __future__ import annotations

PHYSICIAN_REMINDER = (
    "This is general information, not medical advice. Please consult a licensed physician "
    "about your own situation."
)

# One fixed emergency notice per red-flag category, shown before any generated text.
EMERGENCY_NOTICE: dict[str, str] = {
    "emergency": (
        "This may be a medical emergency. Call your local emergency number (for example 911, 112 or 999) "
        "or go to the nearest emergency department now. Do not wait for an answer from this assistant."
    ),
    "poisoning": (
        "This may be a poisoning or overdose. Call your local emergency number (for example 911, 112 or 999) "
        "now, or your poison control centre (in the US 1-800-222-1222). Do not wait for an answer from "
        "this assistant, and do not try to make the person vomit unless told to."
    ),
    "self_harm": (
        "If you are thinking about harming yourself or ending your life, or someone else is, please reach out "
        "now: call or text a crisis line (in the US and Canada 988, in the UK and Ireland Samaritans 116 123, "
        "elsewhere see findahelpline.com) or your local emergency number if you are in danger. "
        "You do not have to go through this alone."
    ),
}

DOSING_NOTE = (
    "Doses for a particular person depend on age, weight, other medicines and health conditions: "
    "please check the dose with a physician or pharmacist, or follow the label. General information follows."
)

OUT_OF_DOMAIN_NOTE = (
    "This question looks outside the medical topics this assistant was tuned on; "
    "the answer may be unreliable."
)

UNCERTAIN_NOTE = "This question may be outside the medical topics this assistant was tuned on."

DECLINE_MESSAGE = (
    "I'm a medical assistant and this question looks outside that scope, so I'd rather not answer it. "
    "Feel free to ask me a health or medical question."
)

LEVEL_LABELS = {
    "in_domain": "in domain",
    "uncertain": "uncertain",
    "out_of_domain": "out of domain",
    None: "not scored",
}
