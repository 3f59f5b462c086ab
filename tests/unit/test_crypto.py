"""relay.crypto: RELAY_ENCRYPTION_KEY parsing, sealing and opening credentials, rotation."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from relay import crypto
from relay.errors import ConfigError, ValidationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _ring(*keys: str) -> crypto.Keyring:
    ring = crypto.parse_keys(",".join(keys))
    assert ring is not None
    return ring


def test_generated_key_is_a_fernet_key_and_differs_each_time() -> None:
    a, b = crypto.generate_key(), crypto.generate_key()
    assert a != b
    Fernet(a)  # raises if malformed
    assert crypto.parse_keys(a) is not None


def test_seal_hides_the_value_and_open_restores_it() -> None:
    ring = _ring(crypto.generate_key())
    sealed = ring.seal(SECRET)
    assert sealed.startswith(crypto.PREFIX) and crypto.is_sealed(sealed)
    assert SECRET not in sealed and SECRET.removeprefix("whsec_") not in sealed
    assert ring.seal(SECRET) != sealed  # random IV: equal secrets are not recognisable
    assert crypto.open_value(sealed, ring) == SECRET
    assert ring.is_current(sealed)


def test_plain_values_pass_through_with_or_without_a_key() -> None:
    ring = _ring(crypto.generate_key())
    assert crypto.open_value("Bearer t0k", ring) == "Bearer t0k"
    assert crypto.open_value("Bearer t0k", None) == "Bearer t0k"
    assert crypto.open_value(None, ring) is None
    assert crypto.seal_value("Bearer t0k", None) == "Bearer t0k"
    assert crypto.seal_value(None, ring) is None


def test_headers_keep_their_names_and_seal_their_values() -> None:
    ring = _ring(crypto.generate_key())
    sealed = crypto.seal_headers({"Authorization": "Bearer t0k", "X-Tenant": "acme"}, ring)
    assert set(sealed) == {"Authorization", "X-Tenant"}
    assert all(crypto.is_sealed(v) for v in sealed.values())
    assert crypto.open_headers(sealed, ring) == {"Authorization": "Bearer t0k", "X-Tenant": "acme"}


def test_multifernet_decrypts_with_an_older_key_and_encrypts_with_the_first() -> None:
    old, new = crypto.generate_key(), crypto.generate_key()
    by_old = _ring(old).seal(SECRET)
    both = _ring(new, old)
    assert crypto.open_value(by_old, both) == SECRET
    assert not both.is_current(by_old)
    by_new = both.seal(SECRET)
    assert both.is_current(by_new)
    assert crypto.open_value(by_new, _ring(new)) == SECRET
    with pytest.raises(crypto.CredentialsError, match="RELAY_ENCRYPTION_KEY"):
        crypto.open_value(by_new, _ring(old))


def test_wrong_or_missing_key_names_the_variable_never_the_value() -> None:
    sealed = _ring(crypto.generate_key()).seal(SECRET)
    for ring in (None, _ring(crypto.generate_key())):
        with pytest.raises(crypto.CredentialsError) as info:
            crypto.open_value(sealed, ring)
        message = str(info.value)
        assert "RELAY_ENCRYPTION_KEY" in message
        assert SECRET not in message and sealed not in message
    # A tampered token is refused too (Fernet authenticates).
    ring = _ring(crypto.generate_key())
    token = ring.seal(SECRET)
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(crypto.CredentialsError):
        ring.open(tampered)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("not-a-key", "key 1 of 1 is not a Fernet key"),
        ("c2hvcnQ=", "key 1 of 1 is not a Fernet key"),  # base64, but 5 bytes
        ("{good},", "key 2 of 2 is empty"),
        ("{good},,{good}", "key 2 of 3 is empty"),
        ("{good},nope", "key 2 of 2 is not a Fernet key"),
    ],
)
def test_bad_key_format_is_a_config_error_naming_the_variable(raw: str, expected: str) -> None:
    good = crypto.generate_key()
    raw = raw.replace("{good}", good)
    with pytest.raises(ConfigError) as info:
        crypto.parse_keys(raw)
    message = str(info.value)
    assert message.startswith("RELAY_ENCRYPTION_KEY: ") and expected in message
    assert good not in message and "nope" not in message and "not-a-key" not in message


def test_unset_or_blank_means_no_key() -> None:
    assert crypto.load_keyring({}) is None
    assert crypto.load_keyring({"RELAY_ENCRYPTION_KEY": ""}) is None
    assert crypto.load_keyring({"RELAY_ENCRYPTION_KEY": "  "}) is None
    key = crypto.generate_key()
    ring = crypto.load_keyring({"RELAY_ENCRYPTION_KEY": f" {key} "})
    assert ring is not None and ring.size == 1


def test_without_a_key_a_value_that_looks_encrypted_is_refused() -> None:
    """A later reader would take it for ciphertext and fail to decrypt it."""
    with pytest.raises(ValidationError) as info:
        crypto.seal_headers({"X-Token": "enc:v1:whatever"}, None)
    assert info.value.field == "header"
    ring = _ring(crypto.generate_key())
    sealed = crypto.seal_headers({"X-Token": "enc:v1:whatever"}, ring)
    assert crypto.open_headers(sealed, ring) == {"X-Token": "enc:v1:whatever"}


def test_the_decryption_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "CACHE_SIZE", 3)
    ring = _ring(crypto.generate_key())
    values = [ring.seal(f"v{i}") for i in range(10)]
    assert [ring.open(v) for v in values] == [f"v{i}" for i in range(10)]
    assert len(ring._cache) <= 3
