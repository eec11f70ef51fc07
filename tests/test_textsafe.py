from medchat.core.textsafe import strip_control


def test_keeps_plain_text_newlines_tabs_emoji_and_rtl():
    text = "Line 1\n\tindented 🩺 مرحبا שלום"
    assert strip_control(text) == text


def test_removes_escape_sequences_and_controls():
    hostile = "a\x1b[31mred\x1b[0m b\x1b]52;c;ZXZpbA==\x07c\x1b]0;title\x1b\\d\x07\x08\x00e\r\nf\x9b2Jg\x1bc"
    assert strip_control(hostile) == "ared bcde\nfg"
