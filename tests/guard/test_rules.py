"""Red-flag and dosing rules: the shipped rules on positives, negatives, typos, case and punctuation."""

from __future__ import annotations

import pytest

from medchat.core.guard.rules import RuleSet, RulesError, TypoCorrector, default_rules, normalise

RULES = default_rules()


def fired(text: str) -> list[str]:
    return [r.id for r in RULES.red_flags(text)]


def _examples(kind: str):
    for rule in RULES.rules:
        for ex in rule.examples_fire if kind == "fire" else rule.examples_quiet:
            yield pytest.param(rule.id, ex, id=f"{rule.id}:{ex[:40]}")


@pytest.mark.parametrize(("rule_id", "text"), list(_examples("fire")))
def test_yaml_examples_fire(rule_id, text):
    assert rule_id in fired(text)


@pytest.mark.parametrize(("rule_id", "text"), list(_examples("quiet")))
def test_yaml_examples_stay_quiet(rule_id, text):
    assert fired(text) == []


@pytest.mark.parametrize(
    ("text", "rule_id"),
    [
        ("My husband has crushing chest pain", "chest_pain"),
        ("MY HUSBAND HAS CRUSHING CHEST PAIN", "chest_pain"),  # case
        ("my husband... has crushing chest-pain!!!", "chest_pain"),  # punctuation
        ("my husbnd has crushng chest pian", "chest_pain"),  # typos
        ("i cant breathe", "breathing"),
        ("I can’t breathe", "breathing"),  # curly apostrophe
        ("i cnat breath", "breathing"),
        ("my sons throat is closing after peanuts", "anaphylaxis"),
        ("grandpa collapsed and is unresponsive", "unconscious"),
        ("my 3 week old baby has a fever", "infant_fever"),
        ("im 10 weeks pregant and bleeding", "pregnancy_bleeding"),
        ("worst headache of my life", "worst_headache"),
        ("she is having a siezure", "seizure"),
        ("my toddler swallowed a button battery", "overdose_poisoning"),
        ("I want to kill myself", "suicidal_thoughts"),
        ("i feel suicidle", "suicidal_thoughts"),
        ("blood is gushing from his leg", "severe_bleeding"),
        ("my mum's face is drooping", "stroke_signs"),
    ],
)
def test_positives(text, rule_id):
    assert rule_id in fired(text)


@pytest.mark.parametrize(
    "text",
    [
        "What are the risk factors for stroke?",
        "what are the risk factors for stroke",  # no question mark: still a question
        "WHAT IS ANAPHYLAXIS?",
        "How is epilepsy treated?",
        "What is the treatment for a heart attack?",
        "What should I do if someone faints?",
        "How can I prevent a stroke?",
        "Which of the following drugs causes seizures?",
        "What are the symptoms of carbon monoxide poisoning?",
        "I don't want to die of cancer, what screening should I get?",
        "My son has poison ivy on his arm",
        "Who won the world cup in 2010?",
        "When to seek urgent medical care when I have diabetes?",
    ],
)
def test_negatives(text):
    assert fired(text) == []


def test_statement_without_question_fires():
    # a terse description of a situation is not an educational question
    assert "chest_pain" in fired("chest pain and sweating")


def test_hypothetical_with_acute_cue_fires():
    assert "seizure" in fired("what do I do if my son is having a seizure right now")


def test_several_rules_can_fire():
    ids = fired("my dad collapsed and is having a seizure")
    assert {"unconscious", "seizure"} <= set(ids)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("how much ibuprofen should I give my 3 year old?", True),
        ("HOW MUCH TYLENOL CAN I TAKE", True),
        ("can i take 2 more advil", True),
        ("what dose of benadryl for my 20 lb toddler", True),
        ("What is the usual adult dose of ibuprofen?", False),
        ("How does acetaminophen work?", False),
        ("how many moons does jupiter have", False),
    ],
)
def test_dosing(text, expected):
    assert RULES.dosing_request(text) is expected


def test_yaml_dosing_examples():
    assert all(RULES.dosing_request(t) for t in RULES.dosing_examples_fire)
    assert not any(RULES.dosing_request(t) for t in RULES.dosing_examples_quiet)


def test_normalise():
    assert normalise("  I CAN'T   breathe!! ") == "i cant breathe"
    assert normalise("my mom’s face") == "my moms face"


def test_typo_corrector():
    fix = TypoCorrector(["chest", "pain", "seizure", "unconscious"], {"hart": "heart"}, keep=frozenset({"paid"}))
    assert fix("cheast pian") == "chest pain"
    assert fix("paid") == "paid"  # known words are never corrected
    assert fix("hart attack") == "heart attack"
    assert fix("unconcious") == "unconscious"
    assert fix("sezure") == "seizure"
    assert fix("the cat") == "the cat"  # short and unrelated words untouched
    assert fix("my chests hurt") == "my chest hurt"  # a plural (or "chest's") of a vocabulary word


def test_common_english_words_are_not_typos():
    fix = TypoCorrector(["seizing", "vomiting", "unconscious"], {})  # the default keep set: known_words()
    assert fix("sneezing") == "sneezing"  # not "seizing": it is an English word
    assert fix("vomitting") == "vomiting" and fix("unconcious") == "unconscious"


def test_rules_load_no_model():
    import subprocess
    import sys

    code = (
        "import sys; from medchat.core.guard.rules import default_rules; "
        "default_rules().red_flags('cheast pian'); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def _minimal(**overrides):
    data = {
        "categories": {"emergency": "Emergency"},
        "context": {"personal": [r"\bi\b"], "hypothetical": [r"\bif\b"], "acute": [r"\bnow\b"], "question": [r"^what\b"]},
        "rules": [{"id": "r1", "category": "emergency", "symptoms": [r"\bouch\b"]}],
        "dosing": {"patterns": [r"\bhow much\b"]},
    }
    data.update(overrides)
    return data


def test_minimal_ruleset_logic():
    rs = RuleSet(_minimal())
    assert [r.id for r in rs.red_flags("i say ouch")] == ["r1"]
    assert rs.red_flags("what is ouch") == []
    assert [r.id for r in rs.red_flags("what is ouch now")] == ["r1"]
    assert [r.id for r in rs.red_flags("ouch")] == ["r1"]


def test_bad_regex_names_the_rule():
    data = _minimal(rules=[{"id": "broken", "category": "emergency", "symptoms": ["(unclosed"]}])
    with pytest.raises(RulesError, match="broken"):
        RuleSet(data, "rules.yaml")


def test_unknown_category_is_an_error():
    data = _minimal(rules=[{"id": "x", "category": "nope", "symptoms": ["a"]}])
    with pytest.raises(RulesError, match="category"):
        RuleSet(data)


def test_invalid_yaml_file_names_file_and_line(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [\n  - id: x\n   bad indent: [\n")
    with pytest.raises(RulesError, match=r"rules\.yaml"):
        RuleSet.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        RuleSet.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I used to self-harm as a teenager but I've been fine for years", []),
        ("my daughter fainted at the sight of blood last year, should I worry", []),
        ("I get a burning feeling in my chest after pizza, antacids fix it", []),
        ("I had a stroke last year and now my face is drooping", ["stroke_signs"]),  # present tense: a situation
        ("I used to self harm and I want to kill myself", ["suicidal_thoughts"]),  # history is not "over"
        ("fainted years ago and he collapsed 5 minutes ago", ["unconscious"]),  # acute cue wins
        # told as over or mild (context.resolved), whatever the tense
        ("my sister took an overdose of pills two years ago and is doing much better now", []),
        ("my son fainted at his blood test, came round straight away and is playing now", []),
        ("my chest felt tight during a panic attack, they checked my heart and it was fine", []),
        ("seizure free, my epilepsy has been well controlled for 3 years", []),
        ("my sister took an overdose of pills an hour ago, she was doing better now shes not waking", ["overdose_poisoning", "unconscious"]),
        # study questions and comparisons
        ("heat stroke vs heat exhaustion whats the difference", []),
        ("nursing student here, what does a seizure look like for my exam", []),
    ],
)
def test_benign_history_is_not_a_situation(text, expected):
    assert fired(text) == expected


def test_benign_context_is_optional():
    data = _minimal()
    data["context"]["benign"] = [r"\bused to\b"]
    data["context"]["current"] = [r"\bnow\b"]
    rs = RuleSet(data)
    assert [r.id for r in rs.red_flags("i used to say ouch")] == []
    assert [r.id for r in rs.red_flags("i used to say ouch and now ouch")] == ["r1"]
    assert [r.id for r in RuleSet(_minimal()).red_flags("i used to say ouch")] == ["r1"]
