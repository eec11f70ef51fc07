"""Chat settings: defaults from config.toml, per-conversation round trip, validation, the TOML writer."""

from __future__ import annotations

import tomllib

import pytest

from medchat.core.settings import ChatSettings, SettingsError, load_config, load_defaults, save_defaults, to_toml


def test_defaults_without_config_file(tmp_path):
    settings = load_defaults(tmp_path / "missing.toml")
    assert settings == ChatSettings()
    assert settings.temperature == 0.0 and settings.max_new_tokens == 256
    assert settings.effective_system_prompt  # the built-in prompt


def test_save_and_load_defaults_round_trip_keeps_other_tables(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[model]\nbase = "bundled"\n', encoding="utf-8")
    prompt = 'Line one "quoted"\n\tline two \\ back\x01slash 🙂 עברית'
    wanted = ChatSettings(temperature=0.7, top_p=0.9, max_new_tokens=64, system_prompt=prompt)
    save_defaults(wanted, path)
    assert load_defaults(path) == wanted
    config = load_config(path)
    assert config["model"] == {"base": "bundled"}
    assert config["generation"]["max_new_tokens"] == 64


def test_default_path_is_the_user_config_dir(isolated_user_dirs):
    save_defaults(ChatSettings(max_new_tokens=32))
    assert (isolated_user_dirs / "config" / "config.toml").is_file()
    assert load_defaults().max_new_tokens == 32


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[generation\ntemperature = 1\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="config.toml.*not valid TOML.*line 1"):
        load_defaults(path)


def test_out_of_range_value_in_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[generation]\ntemperature = 9\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="temperature must be between 0 and 2"):
        load_defaults(path)


def test_from_dict_coerces_form_text_and_ignores_unknown_keys():
    s = ChatSettings.from_dict({"temperature": " 0.5", "max_new_tokens": "12", "color": "red"})
    assert s.temperature == 0.5 and s.max_new_tokens == 12
    for bad in ({"max_new_tokens": "1.5"}, {"top_p": "abc"}, {"temperature": True}, {"top_p": "nan"}):
        with pytest.raises(SettingsError):
            ChatSettings.from_dict(bad)


def test_to_generation_matches_the_engine_settings():
    pytest.importorskip("medchat.core.engine")
    gen = ChatSettings(temperature=0.3, max_new_tokens=7).to_generation()
    assert gen.temperature == 0.3 and gen.max_new_tokens == 7


def test_toml_writer_output_parses_back():
    data = {"a": 1, "b": 2.5, "c": True, "d": "x\ny", "t": {"k": [1, 2], "nested": {"z": "é"}}}
    assert tomllib.loads(to_toml(data)) == data
