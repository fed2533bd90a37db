"""nbchat.crypto: the data key wrapped under the password, lines sealed to their place, blind tokens."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASSWORD
from nbchat import crypto
from nbchat.errors import AccountError, DamagedLine, KeyRecordInvalid, KeyUnlockFailed, StoreError

CHEAP = crypto.KdfParams(n=2**10, r=8, p=1)  # about a millisecond: tests only; the default is below
URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


def wrapped(account: str = "alice", password: str = PASSWORD) -> tuple[bytes, dict[str, Any]]:
    key = crypto.new_data_key()
    return key, crypto.wrap_data_key(key, password, account=account, params=CHEAP)


def flipped(record: dict[str, Any], field: str, index: int) -> dict[str, Any]:
    data = bytearray(base64.b64decode(record[field]))
    data[index] ^= 0x01
    return {**record, field: base64.b64encode(bytes(data)).decode("ascii")}


# -- the data key and its record ----------------------------------------------------------------


def test_the_default_parameters_are_the_documented_scrypt_ones() -> None:
    params = crypto.KdfParams.default()
    assert (params.n, params.r, params.p, params.length) == (2**16, 8, 1, 32)
    assert "n=2**16, r=8, p=1" in (crypto.__doc__ or "")


def test_a_data_key_wrapped_with_the_default_parameters_unwraps_with_the_password() -> None:
    key = crypto.new_data_key()
    record = crypto.wrap_data_key(key, PASSWORD, account="alice")
    assert (record["n"], record["r"], record["p"]) == (2**16, 8, 1)
    assert crypto.unwrap_data_key(record, PASSWORD, account="alice") == key


def test_data_keys_are_32_random_bytes() -> None:
    keys = {crypto.new_data_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(key) == 32 for key in keys)


def test_the_record_is_json_with_the_documented_fields_and_no_key_in_it() -> None:
    key, record = wrapped()
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {"version", "kdf", "n", "r", "p", "salt", "cipher", "nonce", "wrapped"}
    assert (record["version"], record["kdf"], record["cipher"]) == (1, "scrypt", "AES-256-GCM")
    assert (record["n"], record["r"], record["p"]) == (2**10, 8, 1)
    assert len(base64.b64decode(record["salt"])) == 16
    assert len(base64.b64decode(record["nonce"])) == 12
    assert key not in base64.b64decode(record["wrapped"])
    assert crypto.unwrap_data_key(record, PASSWORD, account="alice") == key


def test_two_wraps_of_one_key_share_no_salt_nonce_or_ciphertext() -> None:
    key = crypto.new_data_key()
    first = crypto.wrap_data_key(key, PASSWORD, account="alice", params=CHEAP)
    second = crypto.wrap_data_key(key, PASSWORD, account="alice", params=CHEAP)
    for field in ("salt", "nonce", "wrapped"):
        assert first[field] != second[field]


def test_a_wrong_password_cannot_unlock_the_key_and_says_so() -> None:
    _, record = wrapped()
    with pytest.raises(KeyUnlockFailed, match="could not be unlocked") as caught:
        crypto.unwrap_data_key(record, PASSWORD + "!", account="alice")
    assert type(caught.value) is KeyUnlockFailed  # not "malformed": the record is fine
    assert isinstance(caught.value, AccountError)


def test_a_record_copied_to_another_account_does_not_unwrap_there() -> None:
    _, record = wrapped("alice")
    with pytest.raises(KeyUnlockFailed, match="could not be unlocked"):
        crypto.unwrap_data_key(record, PASSWORD, account="bob")


def test_the_account_name_binds_case_insensitively_like_account_names() -> None:
    key, record = wrapped("Alice")
    assert crypto.unwrap_data_key(record, PASSWORD, account="alice") == key


@pytest.mark.parametrize("field", ["salt", "nonce", "wrapped"])
def test_every_single_byte_flip_of_salt_nonce_or_wrapped_key_is_detected(field: str) -> None:
    _, record = wrapped()
    size = len(base64.b64decode(record[field]))
    for index in range(size):
        with pytest.raises(KeyUnlockFailed, match="could not be unlocked"):
            crypto.unwrap_data_key(flipped(record, field, index), PASSWORD, account="alice")


@pytest.mark.parametrize("change", [{"n": 2**11}, {"r": 4}, {"p": 2}])
def test_edited_kdf_parameters_are_detected(change: dict[str, int]) -> None:
    _, record = wrapped()
    with pytest.raises(KeyUnlockFailed, match="could not be unlocked"):
        crypto.unwrap_data_key({**record, **change}, PASSWORD, account="alice")


def test_a_wrapped_key_swapped_in_from_another_account_is_detected() -> None:
    _, alice = wrapped("alice")
    _, bob = wrapped("bob")
    with pytest.raises(KeyUnlockFailed):
        swapped = {**alice, "wrapped": bob["wrapped"], "nonce": bob["nonce"]}
        crypto.unwrap_data_key(swapped, PASSWORD, account="alice")


def test_rewrapping_keeps_the_data_key_and_changes_salt_and_wrapped_key() -> None:
    key, record = wrapped()
    new = crypto.rewrap_data_key(record, PASSWORD, "battery staple", account="alice", params=CHEAP)
    assert new["salt"] != record["salt"]
    assert new["wrapped"] != record["wrapped"]
    assert crypto.unwrap_data_key(new, "battery staple", account="alice") == key
    with pytest.raises(KeyUnlockFailed):
        crypto.unwrap_data_key(new, PASSWORD, account="alice")


def test_rewrapping_with_a_wrong_old_password_is_refused() -> None:
    _, record = wrapped()
    with pytest.raises(KeyUnlockFailed, match="could not be unlocked"):
        crypto.rewrap_data_key(record, "not it", "battery staple", account="alice", params=CHEAP)


def _without(field: str) -> Any:
    return lambda record: {k: v for k, v in record.items() if k != field}


MALFORMED: list[tuple[str, Any, str]] = [
    *[(f"missing-{f}", _without(f), f"lacks {f}") for f in ("version", "kdf", "n", "salt", "nonce")],
    ("missing-wrapped", _without("wrapped"), "lacks wrapped"),
    ("not-an-object", lambda record: [record], "not a JSON object"),
    ("version-2", lambda record: {**record, "version": 2}, "version 2"),
    ("version-string", lambda record: {**record, "version": "1"}, "version '1'"),
    ("kdf-argon2", lambda record: {**record, "kdf": "argon2id"}, "kdf is 'argon2id'"),
    ("cipher-chacha", lambda record: {**record, "cipher": "ChaCha20-Poly1305"}, "cipher is 'ChaCha20"),
    ("n-huge", lambda record: {**record, "n": 2**40}, "power of two between"),
    ("n-not-power-of-two", lambda record: {**record, "n": 3000}, "power of two between"),
    ("n-tiny", lambda record: {**record, "n": 2}, "power of two between"),
    ("n-text", lambda record: {**record, "n": "65536"}, "not a whole number"),
    ("n-float", lambda record: {**record, "n": 1024.0}, "not a whole number"),
    ("r-zero", lambda record: {**record, "r": 0}, "out of bounds"),
    ("p-huge", lambda record: {**record, "p": 10**6}, "out of bounds"),
    ("memory-too-much", lambda record: {**record, "n": 2**20, "r": 32}, "more memory or time"),
    ("work-too-much", lambda record: {**record, "n": 2**18, "r": 8, "p": 16}, "more memory or time"),
    ("salt-bad-base64", lambda record: {**record, "salt": "not base64!"}, "'salt' is not valid base64"),
    ("salt-short", lambda record: {**record, "salt": "AAAAAAAAAAA="}, "'salt' is 8 bytes"),
    ("nonce-bad-base64", lambda record: {**record, "nonce": "@@@@"}, "'nonce' is not valid base64"),
    ("nonce-number", lambda record: {**record, "nonce": 12}, "'nonce' is not a base64 string"),
    ("nonce-short", lambda record: {**record, "nonce": record["nonce"][:8]}, "'nonce' is 6 bytes, not 12"),
    ("wrapped-unicode", lambda record: {**record, "wrapped": "ключ"}, "'wrapped' is not valid base64"),
    ("wrapped-short", lambda record: {**record, "wrapped": record["wrapped"][:44]}, "'wrapped' is 33 bytes"),
]


@pytest.mark.parametrize(
    ("damage", "message"), [(d, m) for _, d, m in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_a_malformed_record_gives_a_specific_error_before_any_derivation(damage: Any, message: str) -> None:
    _, record = wrapped()
    started = time.perf_counter()
    with pytest.raises(KeyRecordInvalid, match=re.escape(message)):
        crypto.unwrap_data_key(damage(record), PASSWORD, account="alice")
    assert time.perf_counter() - started < 0.5  # refused, not derived (one default derivation is ~0.2 s)


def test_a_huge_n_is_refused_at_once_even_for_wrapping() -> None:
    started = time.perf_counter()
    with pytest.raises(KeyRecordInvalid, match="power of two"):
        huge = crypto.KdfParams(2**40, 8, 1)
        crypto.wrap_data_key(crypto.new_data_key(), PASSWORD, account="alice", params=huge)
    assert time.perf_counter() - started < 0.05


def test_a_key_of_the_wrong_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.wrap_data_key(b"short", PASSWORD, account="alice", params=CHEAP)
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.LineCipher(b"short")


# -- lines ----------------------------------------------------------------------------------------

LINE = json.dumps({"kind": "message", "role": "user", "content": "the zebra quietly eats pistachios"})
LINE_BYTES = LINE.encode()


@pytest.fixture
def cipher() -> crypto.LineCipher:
    return crypto.LineCipher(crypto.new_data_key())


def test_a_sealed_line_opens_at_its_place(cipher: crypto.LineCipher) -> None:
    token = cipher.seal(LINE_BYTES, conversation_id="c1", position=7)
    assert URLSAFE.fullmatch(token)
    assert cipher.open(token, conversation_id="c1", position=7) == LINE_BYTES


def test_sealing_the_same_line_twice_gives_different_tokens(cipher: crypto.LineCipher) -> None:
    tokens = {cipher.seal(LINE_BYTES, conversation_id="c1", position=7) for _ in range(50)}
    assert len(tokens) == 50


def test_no_piece_of_the_plaintext_appears_in_the_token(cipher: crypto.LineCipher) -> None:
    token = cipher.seal(LINE_BYTES, conversation_id="c1", position=7)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for start in range(len(LINE_BYTES) - 5):
        piece = LINE_BYTES[start : start + 6]
        assert piece not in raw
        assert piece.decode() not in token


@pytest.mark.parametrize(
    ("conversation_id", "position"), [("c2", 7), ("c1", 8), ("c1", 6), ("", 7), ("c1 ", 7), ("C1", 7)]
)
def test_a_line_moved_to_another_conversation_or_position_does_not_open(
    cipher: crypto.LineCipher, conversation_id: str, position: int
) -> None:
    token = cipher.seal(LINE_BYTES, conversation_id="c1", position=7)
    with pytest.raises(DamagedLine, match="damaged, or moved") as caught:
        cipher.open(token, conversation_id=conversation_id, position=position)
    assert (caught.value.conversation_id, caught.value.position) == (conversation_id, position)
    assert isinstance(caught.value, StoreError)


def test_a_token_truncated_by_one_character_or_more_does_not_open(cipher: crypto.LineCipher) -> None:
    token = cipher.seal(LINE_BYTES, conversation_id="c1", position=7)
    for cut in range(1, len(token) + 1):
        with pytest.raises(DamagedLine):
            cipher.open(token[:-cut], conversation_id="c1", position=7)


def test_every_changed_character_of_a_token_is_detected(cipher: crypto.LineCipher) -> None:
    token = cipher.seal(b"short line", conversation_id="c1", position=0)
    for index, char in enumerate(token):
        damaged = token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]
        with pytest.raises(DamagedLine):
            cipher.open(damaged, conversation_id="c1", position=0)


def test_a_token_changed_only_in_the_unused_bits_of_its_last_character_is_detected(
    cipher: crypto.LineCipher,
) -> None:
    """38 sealed bytes take 51 base64 characters, the last with 2 bits that decode to nothing:
    a change there alone would open as the very same bytes, so such a spelling is refused."""
    token = cipher.seal(b"short line", conversation_id="c1", position=0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(token) == 51
    last = alphabet.index(token[-1])
    for unused in range(1, 4):  # every other value of the two low bits
        respelled = token[:-1] + alphabet[last ^ unused]
        assert base64.urlsafe_b64decode(respelled + "=") == base64.urlsafe_b64decode(token + "=")
        with pytest.raises(DamagedLine):
            cipher.open(respelled, conversation_id="c1", position=0)


@pytest.mark.parametrize("junk", ["", "abc", "not base64 at all!", "ab+/cd==", "ü" * 40, "A" * 37, "\n"])
def test_junk_instead_of_a_token_is_a_damaged_line(cipher: crypto.LineCipher, junk: str) -> None:
    with pytest.raises(DamagedLine, match="damaged"):
        cipher.open(junk, conversation_id="c1", position=0)


def test_a_line_sealed_under_another_key_does_not_open(cipher: crypto.LineCipher) -> None:
    token = crypto.LineCipher(crypto.new_data_key()).seal(LINE_BYTES, conversation_id="c1", position=7)
    with pytest.raises(DamagedLine):
        cipher.open(token, conversation_id="c1", position=7)


def test_a_line_position_must_be_a_whole_number_from_zero(cipher: crypto.LineCipher) -> None:
    for position in (-1, True, 1.0, 2**63):
        with pytest.raises(ValueError, match="line position"):
            cipher.seal(LINE_BYTES, conversation_id="c1", position=position)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plaintext=st.binary(max_size=2000),
    conversation_id=st.text(max_size=40),
    position=st.integers(0, 2**63 - 1),
)
def test_any_bytes_at_any_place_round_trip(plaintext: bytes, conversation_id: str, position: int) -> None:
    cipher = crypto.LineCipher(bytes(range(32)))
    token = cipher.seal(plaintext, conversation_id=conversation_id, position=position)
    assert URLSAFE.fullmatch(token) or not token
    assert "\n" not in token
    assert cipher.open(token, conversation_id=conversation_id, position=position) == plaintext


def test_an_empty_line_still_seals_to_a_nonce_and_a_tag(cipher: crypto.LineCipher) -> None:
    token = cipher.seal(b"", conversation_id="c1", position=0)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 28
    assert cipher.open(token, conversation_id="c1", position=0) == b""


# -- the blind index ------------------------------------------------------------------------------


def test_one_key_blinds_equal_words_alike_and_other_words_apart(cipher: crypto.LineCipher) -> None:
    assert cipher.blind("pistachio") == cipher.blind("pistachio")
    assert cipher.blind("pistachio") != cipher.blind("pistachios")
    words = [f"word{i}" for i in range(2000)]
    assert len({cipher.blind(word) for word in words}) == len(words)


def test_two_keys_blind_the_same_word_differently() -> None:
    first, second = crypto.LineCipher(crypto.new_data_key()), crypto.LineCipher(crypto.new_data_key())
    assert first.blind("pistachio") != second.blind("pistachio")


def test_the_same_key_blinds_the_same_in_another_cipher_object() -> None:
    key = crypto.new_data_key()
    assert crypto.LineCipher(key).blind("zebra") == crypto.LineCipher(key).blind("zebra")


def test_a_blind_token_is_short_url_safe_and_hides_the_word(cipher: crypto.LineCipher) -> None:
    token = cipher.blind("pistachio")
    assert URLSAFE.fullmatch(token) and len(token) == 16
    assert "pist" not in token.lower()


# -- errors and imports -----------------------------------------------------------------------------


def test_a_malformed_record_is_also_a_key_that_could_not_be_unlocked() -> None:
    assert issubclass(KeyRecordInvalid, KeyUnlockFailed)
    assert issubclass(KeyUnlockFailed, AccountError)
    assert issubclass(DamagedLine, StoreError)


def test_importing_nbchat_and_its_crypto_module_does_not_import_cryptography() -> None:
    code = "import sys, nbchat, nbchat.crypto; print('cryptography' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
