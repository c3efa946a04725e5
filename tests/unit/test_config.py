import hashlib

import pytest

from schemas.config import ConfigError, Credentials, parse_config

GOOD = """
[[workspaces]]
name = "acme"
traitly_token = "tk_live_123"
admin_token = "sha256:%s"

[[goals]]
workspace = "acme"
name = "30-day Conversion"
window_days = 30
target_event = "purchase"
[[goals.actions]]
event_name = "Style Widget"
message_plaintext = "It's time to complete..."
message_html = "<p>It's time to complete...</p>"

[[webhooks]]
workspace = "acme"
url = "https://hooks.example.com/traitly"
objects = ["goal-propensity-change", "recommended-next-actions"]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[dispatcher]
allow_private_targets = false
retry_schedule_seconds = [5, 300]
""" % hashlib.sha256(b"adm_1").hexdigest()


def test_interface_example_loads():
    cfg = parse_config(GOOD)
    assert cfg.workspaces[0].name == "acme"
    assert cfg.goals[0].actions[0].event_name == "Style Widget"
    assert cfg.dispatcher.retry_schedule_seconds == [5, 300]


def test_secrets_are_not_printed():
    cfg = parse_config(GOOD)
    assert "tk_live_123" not in repr(cfg)


def test_plain_and_hashed_credentials_match_in_constant_time_loop():
    creds = Credentials(parse_config(GOOD))
    assert creds.match("traitly_token", "tk_live_123") == "acme"
    assert creds.match("admin_token", "adm_1") == "acme"
    assert creds.match("traitly_token", "tk_live_12") is None
    assert creds.match("traitly_token", "") is None
    assert creds.match("segment_write_key", "anything") is None


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[[workspaces]]\nname = "a"\ntraitly_tokn = "x"\n', "workspaces.0.traitly_tokn: unknown key"),
        ('[[goals]]\nworkspace = "nope"\nname = "g"\ntarget_event = "p"\n', "goals[0].workspace: unknown workspace"),
        ('[[workspaces]]\nname = "a"\ntraitly_token = "sha256:abc"\n', "workspaces.0.traitly_token"),
        ('[[workspaces]]\nname = "a"\n[[webhooks]]\nworkspace = "a"\nurl = "https://x"\nsecret = "nope"\n', "webhooks.0.secret"),
        ("[[workspaces]\n", "not valid TOML"),
        ('[[workspaces]]\nname = "a"\ntraitly_token = "t"\n[[workspaces]]\nname = "b"\ntraitly_token = "t"\n', "same traitly_token"),
    ],
)
def test_invalid_config_names_the_bad_key(text, needle):
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "goalstream.toml")
    assert needle in str(exc.value)
    assert "goalstream.toml" in str(exc.value)
