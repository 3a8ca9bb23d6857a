"""What the server accepts as a handle, a message, a frame and a room label."""

import pytest

from webapp import chat, labels, settings

HANDLE_MAX, MESSAGE_MAX = 50, 2000


@pytest.mark.parametrize(
    "raw, cleaned",
    [("alice", "alice"), ("  bob  ", "bob"), ("Zoë 🐙", "Zoë 🐙"), ("x" * 50, "x" * 50),
     ("  " + "y" * 50 + "\n", "y" * 50)],
)
def test_good_handles_are_trimmed(raw, cleaned):
    assert chat.clean_handle(raw, HANDLE_MAX) == cleaned


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "required"),
        ("   \t ", "required"),
        ("x" * 51, "longer than 50"),
        ("a\nb", "one line"),
        ("a\x00b", "one line"),
        ("bell\x07", "one line"),
        ("\ud800", "not valid Unicode"),
        (None, "must be text"),
        (42, "must be text"),
        (["alice"], "must be text"),
    ],
)
def test_bad_handles_say_why(raw, reason):
    with pytest.raises(chat.BadInput, match=reason):
        chat.clean_handle(raw, HANDLE_MAX)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("hello", "hello"),
        ("line one\nline two", "line one\nline two"),
        ("windows\r\nnewline", "windows\nnewline"),
        ("tab\tseparated", "tab\tseparated"),
        ("  spaced  ", "  spaced  "),
        ("m" * 2000, "m" * 2000),
        ("日本語とemoji 👍🏽", "日本語とemoji 👍🏽"),
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),
    ],
)
def test_good_messages_keep_their_text(raw, cleaned):
    assert chat.clean_message(raw, MESSAGE_MAX) == cleaned


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "empty"),
        (" \n\t ", "empty"),
        ("m" * 2001, "longer than 2000"),
        ("esc\x1b[31m", "control characters"),
        ("lone\rcarriage", "control characters"),
        ("del\x7f", "control characters"),
        ("c1\x85", "control characters"),
        ("half \udfff surrogate", "not valid Unicode"),
        ({"a": 1}, "must be text"),
    ],
)
def test_bad_messages_say_why(raw, reason):
    with pytest.raises(chat.BadInput, match=reason):
        chat.clean_message(raw, MESSAGE_MAX)


@pytest.mark.parametrize(
    "data, reason",
    [
        ([], "JSON object"),
        ("hi", "JSON object"),
        (None, "JSON object"),
        ({"handle": "a"}, "missing field"),
        ({"message": "a"}, "missing field"),
        ({"handle": "a", "message": "b", "extra": 1}, "unexpected field"),
    ],
)
def test_frames_must_hold_exactly_handle_and_message(data, reason):
    with pytest.raises(chat.Malformed, match=reason):
        chat.parse_fields(data)


def test_a_good_frame_gives_its_fields():
    assert chat.parse_fields({"handle": "a", "message": "b"}) == ("a", "b")


@pytest.mark.parametrize("label", ["a", "lobby", "Quiet-River_42", "x" * 50, "0", "-", "_", "NEWS", "newsroom"])
def test_valid_labels(label):
    assert labels.is_valid_label(label)


@pytest.mark.parametrize(
    "label",
    ["", "x" * 51, "a b", "café", "a/b", "..", ".", "a.b", "new", "api", "chat", "static", "healthz", "metrics",
     "New", "API", "a%2Fb", "ümlaut", "tab\t"],
)
def test_invalid_labels(label):
    assert not labels.is_valid_label(label)


def test_fresh_label_candidates_are_readable_and_valid():
    for _ in range(50):
        label = labels.candidate()
        assert labels.is_valid_label(label)
        words = label.split("-")
        assert len(words) >= 3 and words[-1].isdigit() and len(words[-1]) == 4


@pytest.mark.parametrize("text, rate", [("60/10", (60, 10)), ("5 / 1", (5, 1)), ("0", (0, 1))])
def test_rate_limit_setting(text, rate):
    parsed = settings.Rate.parse(text)
    assert (parsed.count, parsed.seconds) == rate
    assert parsed.enabled == (rate[0] > 0)


@pytest.mark.parametrize("text", ["60", "a/b", "10/0", "-1/5", ""])
def test_bad_rate_limit_setting_is_refused(text):
    with pytest.raises(settings.ConfigError, match="RATE_LIMIT"):
        settings.Rate.parse(text)


def test_more_than_one_worker_needs_redis():
    config = settings.defaults("/tmp")
    config.update(WEB_CONCURRENCY=2)
    with pytest.raises(settings.ConfigError, match="needs REDIS_URL"):
        settings.check(config)


def test_environment_settings_are_parsed():
    parsed = settings.from_environ(
        {"RATE_LIMIT": "5/2", "MAX_CONNECTIONS_PER_ADDRESS": "0", "ALLOWED_ORIGINS": "https://a.example, https://b.example/",
         "PORT": "9", "REDIS_URL": ""}
    )
    assert parsed["RATE_LIMIT"] == settings.Rate(5, 2)
    assert parsed["MAX_CONNECTIONS_PER_ADDRESS"] == 0
    assert parsed["ALLOWED_ORIGINS"] == ("https://a.example", "https://b.example")
    assert parsed["REDIS_URL"] is None


def test_a_bad_environment_setting_is_reported_by_name():
    with pytest.raises(settings.ConfigError, match="MAX_CONNECTIONS_PER_ADDRESS"):
        settings.from_environ({"MAX_CONNECTIONS_PER_ADDRESS": "many"})
