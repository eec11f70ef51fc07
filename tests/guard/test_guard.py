"""Guard API, notices and policy: a tiny index built with the fake embedder."""

from __future__ import annotations

import pytest
from guard_fakes import GENERAL, MEDICAL, MEDICAL_CAL

from medchat.core.guard import (
    DECLINE_MESSAGE,
    DOSING_NOTE,
    EMERGENCY_NOTICE,
    OUT_OF_DOMAIN_NOTE,
    PHYSICIAN_REMINDER,
    Guard,
    GuardIndexError,
    GuardResult,
    RedFlag,
    build_index,
    default_index_dir,
    notices_before,
    ood_note,
    should_decline,
    with_reminder,
)


@pytest.fixture
def tiny_guard(tmp_path, hash_embedder):
    half = len(GENERAL) // 2
    build_index({"reference": MEDICAL, "phrased_otherwise": MEDICAL_CAL},
                {"trivia": GENERAL[:half], "more_trivia": GENERAL[half:]}, hash_embedder, k=3).save(tmp_path / "ix")
    return Guard.load(tmp_path / "ix", embedder=hash_embedder, semantic=False)


def test_check_medical_vs_general(tiny_guard):
    med = tiny_guard.check("what are the symptoms of asthma and diabetes")
    gen = tiny_guard.check("who won the world cup final in football")
    assert med.ood_score > gen.ood_score
    assert med.ood_level == "in_domain"
    assert gen.ood_level == "out_of_domain"
    assert med.red_flags == [] and med.dosing_note is False


def test_check_red_flag_and_dosing(tiny_guard):
    r = tiny_guard.check("my dad has crushing chest pain")
    assert [f.rule_id for f in r.red_flags] == ["chest_pain"]
    assert r.red_flags[0].notice == EMERGENCY_NOTICE["emergency"]
    assert r.emergency
    assert tiny_guard.check("how much ibuprofen should I give my 3 year old").dosing_note


def test_check_many_matches_check(tiny_guard):
    texts = ["what causes asthma", "my baby is 3 weeks old and has a fever"]
    many = tiny_guard.check_many(texts)
    assert [m.as_dict() for m in many] == [tiny_guard.check(t).as_dict() for t in texts]
    assert many[1].red_flags[0].rule_id == "infant_fever"


def test_rules_only_needs_no_index(tmp_path):
    g = Guard(None)
    r = g.check("i want to kill myself")
    assert r.ood_score is None and r.ood_level is None
    assert r.red_flags[0].category == "self_harm"
    assert r.red_flags[0].notice == EMERGENCY_NOTICE["self_harm"]


def test_rules_never_load_the_embedder(tiny_guard):
    from medchat.core.guard.embedder import Embedder

    guard = Guard(tiny_guard.index, embedder=Embedder())
    assert guard.check_rules("chest pain").red_flags and not guard.ready  # nothing heavy loaded


def test_load_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(GuardIndexError, match="not a guard index") as err:
        Guard.load(tmp_path / "nope")
    assert str(tmp_path / "nope" / "index.json") in str(err.value) and "guard_build" in str(err.value)


def test_default_index_dir_prefers_default_run(tmp_path, monkeypatch):
    import medchat.core.paths

    (tmp_path / "default-run" / "guard_index").mkdir(parents=True)
    (tmp_path / "guard" / "default_index").mkdir(parents=True)
    (tmp_path / "guard" / "default_index" / "index.json").write_text("{}")
    monkeypatch.setattr(medchat.core.paths, "ASSETS_DIR", tmp_path)
    assert default_index_dir() == tmp_path / "guard" / "default_index"
    (tmp_path / "default-run" / "guard_index" / "index.json").write_text("{}")
    assert default_index_dir() == tmp_path / "default-run" / "guard_index"


def test_as_dict():
    r = GuardResult(0.123456, "uncertain", [RedFlag("seizure", "emergency", "n", "Seizure")], True)
    assert r.as_dict() == {
        "ood_score": 0.1235,
        "ood_level": "uncertain",
        "red_flags": [{"rule_id": "seizure", "category": "emergency", "title": "Seizure", "source": "rule"}],
        "dosing_note": True,
    }


# ---------------------------------------------------------------- policy and notices


def _r(level, flags=(), dosing=False):
    return GuardResult(0.0, level, list(flags), dosing)


def test_ood_note_policies():
    assert ood_note(_r("out_of_domain")) == OUT_OF_DOMAIN_NOTE
    assert ood_note(_r("out_of_domain"), policy="decline") == DECLINE_MESSAGE
    assert ood_note(_r("in_domain")) is None
    assert ood_note(_r("uncertain")) is None
    assert ood_note("uncertain", include_uncertain=True) is not None
    with pytest.raises(ValueError, match="policy"):
        ood_note(_r("out_of_domain"), policy="shout")


def test_never_decline_a_red_flag():
    flag = RedFlag("seizure", "emergency", EMERGENCY_NOTICE["emergency"])
    assert should_decline(_r("out_of_domain"), "decline")
    assert not should_decline(_r("out_of_domain"), "note")
    assert not should_decline(_r("out_of_domain", [flag]), "decline")
    assert ood_note(_r("out_of_domain", [flag]), "decline") is None


def test_notices_before_dedupes_and_orders():
    f1 = RedFlag("seizure", "emergency", EMERGENCY_NOTICE["emergency"])
    f2 = RedFlag("unconscious", "emergency", EMERGENCY_NOTICE["emergency"])
    f3 = RedFlag("suicidal_thoughts", "self_harm", EMERGENCY_NOTICE["self_harm"])
    assert notices_before(_r(None, [f1, f2, f3], dosing=True)) == [
        EMERGENCY_NOTICE["emergency"], EMERGENCY_NOTICE["self_harm"], DOSING_NOTE]
    assert notices_before(_r("in_domain")) == []


def test_reminder_appended_once():
    out = with_reminder("Drink water.")
    assert out == f"Drink water.\n\n{PHYSICIAN_REMINDER}"
    assert with_reminder(out) == out
    assert with_reminder("") == PHYSICIAN_REMINDER


def test_every_category_has_a_notice():
    from medchat.core.guard.rules import default_rules

    assert {r.category for r in default_rules().rules} <= set(EMERGENCY_NOTICE)
    assert "988" in EMERGENCY_NOTICE["self_harm"] and "emergency number" in EMERGENCY_NOTICE["emergency"]


# ---------------------------------------------------------------- semantic red-flag layer


def _layer(hash_embedder, flag_at=0.7, keep_rules_at=0.1):
    from medchat.core.guard.semantic import SemanticConfig, SemanticRedFlags

    # emergencies are about zebras and walruses, calm talk about ferrets and otters
    config = SemanticConfig(flag_at, keep_rules_at, 1e-4,
                            (("zebra yak quokka", "seizure"), ("walrus narwhal", "breathing")),
                            ("ferret otter", "ferret badger"), (("zebra quokka okapi", True), ("otter badger", False)))
    return SemanticRedFlags(config, hash_embedder)


def test_semantic_classifier_reads_the_examples_and_names_the_nearest_rule(hash_embedder):
    layer = _layer(hash_embedder)
    zebra, walrus, ferret = layer.read(hash_embedder.encode_layers(["zebra yak quokka", "walrus narwhal", "ferret otter"]))
    assert zebra.probability > 0.9 and zebra.nearest_rule == "seizure"
    assert walrus.probability > 0.9 and walrus.nearest_rule == "breathing"
    assert ferret.probability < 0.1


def test_semantic_layer_raises_withdraws_and_never_withdraws_self_harm(tiny_guard, hash_embedder):
    tiny_guard._semantic = _layer(hash_embedder)
    tiny_guard.use_semantic = True

    def flags(text):
        return [(f.rule_id, f.source) for f in tiny_guard.check(text).red_flags]

    assert flags("zebra yak quokka") == [("seizure", "semantic")]  # the rules see nothing; the classifier does
    assert flags("ferret otter") == []
    # words a rule fires on, in a message the classifier reads as calm: the rule's flag is withdrawn ...
    assert tiny_guard.check_rules("my dad has crushing chest pain ferret otter ferret").red_flags
    assert flags("my dad has crushing chest pain ferret otter ferret") == []
    # ... but never a self-harm one
    assert flags("i want to kill myself ferret otter ferret") == [("suicidal_thoughts", "rule")]


def test_semantic_config_needs_its_probabilities(tmp_path):
    from medchat.core.guard.rules import RuleSet, RulesError, default_rules_path
    from medchat.core.guard.semantic import SemanticConfig

    import yaml

    data = yaml.safe_load(default_rules_path().read_text())
    data["semantic"] = {"flag_at": "high", "keep_rules_at": 0.1}
    with pytest.raises(RulesError, match="flag_at"):
        SemanticConfig.from_rules(RuleSet(data, str(tmp_path / "rules.yaml")))
    (tmp_path / "sets.jsonl").write_text('{"text": "x", "emergency": "yes"}\n')
    data["semantic"] = {"flag_at": 0.7, "keep_rules_at": 0.1, "labelled": ["sets.jsonl"]}
    with pytest.raises(RulesError, match=r"sets.jsonl:1: 'emergency' must be true or false"):
        SemanticConfig.from_rules(RuleSet(data, str(tmp_path / "rules.yaml")))


def test_semantic_config_from_shipped_rules():
    import json

    from medchat.core.guard.rules import default_rules
    from medchat.core.guard.semantic import SemanticConfig
    from medchat.core.paths import ASSETS_DIR

    rules = default_rules()
    cfg = SemanticConfig.from_rules(rules)
    assert 0 < cfg.keep_rules_at < cfg.flag_at < 1 and cfg.l2 > 0
    assert sum(e for _, e in cfg.labelled) > 500 and len(cfg.labelled) > 1000  # the written sets, both sides
    ids = {r.id for r in rules.rules}
    assert len(cfg.positives) > 150 and {rid for _, rid in cfg.positives} == ids
    heldout = [json.loads(line)["text"] for line in
               (ASSETS_DIR / "guard" / "eval" / "red_flag_heldout.jsonl").read_text().splitlines()]
    examples = {t for t, _ in cfg.positives} | set(cfg.negatives) | {t for t, _ in cfg.labelled}
    assert not examples & set(heldout)  # the held-out messages never serve as examples
    edu = [json.loads(line) for line in
           (ASSETS_DIR / "guard" / "eval" / "educational_questions.jsonl").read_text().splitlines()]
    assert not examples & {r["text"] for r in edu if r["role"] == "heldout"}


def test_semantic_fit_is_reused_only_for_the_examples_it_was_made_from(tmp_path, hash_embedder):
    from dataclasses import replace

    from medchat.core.guard.semantic import FIT_FILE, Fit, SemanticRedFlags, fingerprint

    config = _layer(hash_embedder).config
    first = SemanticRedFlags(config, hash_embedder, tmp_path, shipped=None)
    zebra = first.read(hash_embedder.encode_layers(["zebra yak quokka"]))[0]
    assert (tmp_path / FIT_FILE).is_file() and first.fit.fingerprint == fingerprint(config, hash_embedder.name)
    calls = hash_embedder.calls
    again = SemanticRedFlags(config, hash_embedder, tmp_path, shipped=None)  # a later start reads the fit
    assert again.read(hash_embedder.encode_layers(["zebra yak quokka"]))[0] == zebra
    assert hash_embedder.calls == calls + 1  # only the message itself was embedded
    # edited examples have another fingerprint: the kept fit is not used, a new one is made and kept
    edited = replace(config, negatives=config.negatives + ("zebra yak quokka",))
    assert fingerprint(edited, hash_embedder.name) != fingerprint(config, hash_embedder.name)
    assert Fit.load(tmp_path / FIT_FILE, fingerprint(edited, hash_embedder.name)) is None
    refit = SemanticRedFlags(edited, hash_embedder, tmp_path, shipped=None)
    assert refit.read(hash_embedder.encode_layers(["zebra yak quokka"]))[0].probability < zebra.probability
    assert Fit.load(tmp_path / FIT_FILE, fingerprint(edited, hash_embedder.name)) is not None
    (tmp_path / FIT_FILE).write_bytes(b"damaged")  # a damaged file is refitted, never trusted
    assert SemanticRedFlags(edited, hash_embedder, tmp_path, shipped=None).fit.fingerprint == refit.fit.fingerprint


def test_the_shipped_semantic_fit_matches_the_shipped_examples():
    """Editing the examples in assets/guard without refitting fails here:
    python -m medchat.app.guard_build --red-flag-classifier"""
    from medchat.core.guard.embedder import EMBEDDER_NAME
    from medchat.core.guard.rules import default_rules
    from medchat.core.guard.semantic import SHIPPED_FIT, Fit, SemanticConfig, fingerprint

    config = SemanticConfig.from_rules(default_rules())
    fit = Fit.load(SHIPPED_FIT, fingerprint(config, EMBEDDER_NAME))
    assert fit is not None, "refit: python -m medchat.app.guard_build --red-flag-classifier"
    assert fit.w.shape == (6 * 384,) and fit.named.shape == (len(config.positives), 384)
    assert fit.labels == tuple(r for _, r in config.positives)
