import warnings

from medchat.core.quiet import quiet_known_warnings


def test_known_library_warnings_are_silenced_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something new", FutureWarning)
    assert [str(w.message) for w in caught] == ["something new"]
