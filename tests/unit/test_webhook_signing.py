"""Standard Webhooks signing, checked against the spec's algorithm written out independently here,
the official libraries' test vector, and ``verify`` playing the receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from stream_processors.webhooks import signing as ws

# The test vector of the standard-webhooks reference libraries (libraries/python/tests/test_webhooks.py
# ``test_sign_function``; the same values appear in svix's libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OLD = "whsec_" + base64.b64encode(bytes(range(24))).decode()
NEW = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
ID = "msg_" + "0123456789abcdef" * 2
TS = 1_700_000_000
BODY = b'{"type":"goal.reached","data":{"customer_id":"c1"}}'


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's scheme, spelled out: HMAC-SHA256(base64-decoded key, "{id}.{ts}.{payload}"), base64, "v1," prefix."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- signing -----------------------------------------------------------------------------------


def test_known_vector():
    assert ws.sign([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_known_vector_verifies():
    hdrs = ws.headers([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    ws.verify(VECTOR_SECRET, hdrs, VECTOR_BODY, now=VECTOR_TS)


def test_known_vector_with_one_bit_changed_is_rejected():
    # The libraries' invalid-signature test: last base64 char E -> A.
    hdrs = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS),
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}
    with pytest.raises(ws.InvalidSignature):
        ws.verify(VECTOR_SECRET, hdrs, VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize(
    "secret,msg_id,ts,body",
    [
        (OLD, ID, TS, BODY),
        (NEW, "msg_x", 0, b""),
        (NEW, ID, 4_102_444_800, bytes(range(256))),  # binary bodies are signed byte for byte
        (OLD, ID, TS, "é ünïcode".encode()),
    ],
)
def test_matches_reference_algorithm(secret, msg_id, ts, body):
    assert ws.sign([secret], msg_id, ts, body) == reference_signature(secret, msg_id, ts, body)


def test_headers_carry_id_timestamp_signature():
    hdrs = ws.headers([OLD], ID, TS, BODY)
    assert hdrs == {
        "webhook-id": ID,
        "webhook-timestamp": str(TS),
        "webhook-signature": reference_signature(OLD, ID, TS, BODY),
    }


def test_unpadded_secret_is_accepted():
    # 32 bytes -> 44 base64 chars with one "="; copied secrets often lose it.
    assert NEW.endswith("=")
    assert ws.sign([NEW.rstrip("=")], ID, TS, BODY) == ws.sign([NEW], ID, TS, BODY)


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_signs_with_each_secret_in_order():
    value = ws.sign([NEW, OLD], ID, TS, BODY)
    assert value.split(" ") == [reference_signature(NEW, ID, TS, BODY), reference_signature(OLD, ID, TS, BODY)]


@pytest.mark.parametrize("receiver_secret", [OLD, NEW])
def test_rotation_each_secret_verifies(receiver_secret):
    hdrs = ws.headers([NEW, OLD], ID, TS, BODY)
    ws.verify(receiver_secret, hdrs, BODY, now=TS)


def test_rotation_other_secret_does_not_verify():
    other = "whsec_" + base64.b64encode(b"z" * 24).decode()
    with pytest.raises(ws.InvalidSignature, match="no v1 signature"):
        ws.verify(other, ws.headers([NEW, OLD], ID, TS, BODY), BODY, now=TS)


def test_verify_skips_other_versions_and_garbage():
    good = reference_signature(OLD, ID, TS, BODY)
    hdrs = {"webhook-id": ID, "webhook-timestamp": str(TS),
            "webhook-signature": f"v1a,AAAA v2,{good[3:]} v1,not-base64!! nocomma {good}"}
    ws.verify(OLD, hdrs, BODY, now=TS)


# --- tampering ---------------------------------------------------------------------------------


def test_tampered_body_fails():
    hdrs = ws.headers([OLD], ID, TS, BODY)
    with pytest.raises(ws.InvalidSignature):
        ws.verify(OLD, hdrs, BODY.replace(b"c1", b"c2"), now=TS)


def test_tampered_timestamp_fails():
    hdrs = ws.headers([OLD], ID, TS, BODY)
    hdrs["webhook-timestamp"] = str(TS + 1)
    with pytest.raises(ws.InvalidSignature, match="no v1 signature"):
        ws.verify(OLD, hdrs, BODY, now=TS)


def test_tampered_id_fails():
    hdrs = ws.headers([OLD], ID, TS, BODY)
    hdrs["webhook-id"] = ID[:-1] + "0"
    with pytest.raises(ws.InvalidSignature):
        ws.verify(OLD, hdrs, BODY, now=TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing):
    hdrs = ws.headers([OLD], ID, TS, BODY)
    del hdrs[missing]
    with pytest.raises(ws.InvalidSignature, match=f"missing {missing}"):
        ws.verify(OLD, hdrs, BODY, now=TS)


@pytest.mark.parametrize("bad_ts", ["hello", "1.5", "-5", "", " "])
def test_non_integer_timestamp_fails(bad_ts):
    hdrs = ws.headers([OLD], ID, TS, BODY)
    hdrs["webhook-timestamp"] = bad_ts
    with pytest.raises(ws.InvalidSignature):
        ws.verify(OLD, hdrs, BODY, now=TS)


def test_header_names_are_case_insensitive():
    hdrs = {k.title(): v for k, v in ws.headers([OLD], ID, TS, BODY).items()}
    assert "Webhook-Signature" in hdrs
    ws.verify(OLD, hdrs, BODY, now=TS)


# --- timestamp tolerance -----------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-300, -1, 0, 1, 300])
def test_timestamp_within_tolerance_passes(skew):
    ws.verify(OLD, ws.headers([OLD], ID, TS, BODY), BODY, now=TS + skew)


@pytest.mark.parametrize("skew,word", [(301, "too old"), (-301, "too new"), (86_400, "too old")])
def test_timestamp_outside_tolerance_fails(skew, word):
    with pytest.raises(ws.InvalidSignature, match=word):
        ws.verify(OLD, ws.headers([OLD], ID, TS, BODY), BODY, now=TS + skew)


def test_custom_tolerance():
    hdrs = ws.headers([OLD], ID, TS, BODY)
    ws.verify(OLD, hdrs, BODY, now=TS + 600, tolerance_s=600)
    with pytest.raises(ws.InvalidSignature, match="too old"):
        ws.verify(OLD, hdrs, BODY, now=TS + 11, tolerance_s=10)


def test_default_now_is_the_clock():
    import time

    now = int(time.time())
    ws.verify(OLD, ws.headers([OLD], ID, now, BODY), BODY)
    with pytest.raises(ws.InvalidSignature, match="too old"):
        ws.verify(OLD, ws.headers([OLD], ID, now - 3600, BODY), BODY)


# --- malformed inputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret,match",
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_", "0 bytes"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS*", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "65 bytes"),
    ],
)
def test_malformed_secret_is_rejected_clearly(secret, match):
    with pytest.raises(ws.InvalidSecret, match=match):
        ws.sign([secret], ID, TS, BODY)
    with pytest.raises(ws.InvalidSecret, match=match):
        ws.verify(secret, ws.headers([OLD], ID, TS, BODY), BODY, now=TS)


def test_one_bad_secret_in_a_rotation_fails_the_whole_sign():
    with pytest.raises(ws.InvalidSecret):
        ws.sign([OLD, "whsec_???"], ID, TS, BODY)


def test_secret_bounds_are_inclusive():
    for n in (24, 64):
        secret = "whsec_" + base64.b64encode(b"k" * n).decode()
        assert ws.decode_secret(secret) == b"k" * n


def test_a_bare_string_is_not_a_list_of_secrets():
    with pytest.raises(TypeError, match="not a single str"):
        ws.sign(OLD, ID, TS, BODY)  # type: ignore[arg-type]


def test_no_secrets():
    with pytest.raises(ValueError, match="at least one"):
        ws.sign([], ID, TS, BODY)


def test_body_must_be_bytes():
    with pytest.raises(TypeError, match="bytes"):
        ws.sign([OLD], ID, TS, BODY.decode())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_ts", [-1, 1.5, "1700000000", True])
def test_timestamp_must_be_a_non_negative_int(bad_ts):
    with pytest.raises(ValueError, match="timestamp"):
        ws.sign([OLD], ID, bad_ts, BODY)


@pytest.mark.parametrize("good", [ID, "msg_p5jXN8AQM9LWM0D4loKWxJek", "msg_" + "ab" * 16, "x"])
def test_msg_id_accepts_ascii_ids(good):
    assert ws.msg_id(good) == good


@pytest.mark.parametrize("bad", ["", "msg_a.b", "msg a", "msg_\t", "msg_\n", "msg_é", "msg_\x00"])
def test_msg_id_rejects_dots_whitespace_non_ascii(bad):
    with pytest.raises(ws.InvalidMessageId):
        ws.msg_id(bad)
    with pytest.raises(ws.InvalidMessageId):
        ws.sign([OLD], bad, TS, BODY)


def test_dot_in_id_would_be_ambiguous():
    # Why "." is refused: id "msg.1" at ts 2 with body "x" would sign the same bytes as id "msg" at
    # ts 1 with body "2.x", so one signature would vouch for both messages.
    assert ws._signed_content("msg.1", 2, b"x") == ws._signed_content("msg", 1, b"2.x")
    with pytest.raises(ws.InvalidMessageId):
        ws.headers([OLD], "msg.1", 2, b"x")
