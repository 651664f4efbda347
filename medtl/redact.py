"""Credential redaction shared by every package: no password reaches a log, a param or an error."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(//[^:/@\s]+:)[^/\s]*@")


def mask_url(text: str) -> str:
    """Hide the password of any `//user:password@host` in `text`.

    The password runs to the last `@` before the host, so one holding a raw `@` is hidden whole,
    and a mistyped scheme (`postgresql+psycopg//u:pw@h`) is masked too.
    """
    return _USERINFO.sub(r"\1***@", text)
