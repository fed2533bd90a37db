"""Credentials taken out of any text before it is shown or saved (errors, saved statistics).

A server may echo a request's ``Authorization`` header, a key may sit in a URL or an error:
whatever quotes such text removes the configured secrets and anything shaped like one. Plain
``re`` only, so every layer can use it.
"""

from __future__ import annotations

import re

# What looks like a credential wherever it is quoted: a header's or a field's value, a bearer
# token, an OpenAI-style key. The label is kept, so a message still says what was refused.
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,;}]+"), r"\1***"),
    (re.compile(r"(?i)\b((?:x-)?api[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]+"), r"\1***"),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"'<>,;]+"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
)


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """``text`` without ``secrets`` (an API key, say) nor anything that looks like a credential.

    Every error an HTTP engine builds from a server's words goes through this (by ``server_text``);
    apply it to any other text that may quote a server before it is shown or saved.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
