"""How relay shows a credential it must not print: URL and conninfo passwords, masked.

The one place that knows what a password looks like in a database URL, a libpq conninfo or a
webhook URL. :func:`mask_url` masks one value (config listings, ``relay subscription list``,
"connected at ..." lines); :mod:`relay.logs` applies the same patterns to free text.
Signing secrets are shown by :func:`relay.webhook.signing.mask_secret`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["CONNINFO_PASSWORD", "MASK", "URL_PASSWORD", "mask_url"]

MASK = "***"

#: A URL's password, in free text: everything between the user's colon and the last "@" of
#: the URL, so an unencoded "@" in it still hides it (``\1`` keeps ``scheme://user:``).
URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^\s]*@")
#: A libpq key/value conninfo's password: ``host=db password=secret`` (``\1`` keeps the key).
CONNINFO_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
# A password given as a URL query parameter (libpq accepts ?password=).
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def mask_url(url: str, *, hide_user: bool = False) -> str:
    """``url`` with its password masked.

    A database URL (the default): ``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``
    (the password runs to the last "@": libpq accepts an unencoded one), a ``password=`` query
    parameter masked too; a key/value conninfo: ``password=x`` → ``password=***``.

    ``hide_user`` (webhook URLs, whose user name alone may be a token): only the authority is
    read (up to the first "/", "?" or "#"), and credentials without a password are masked
    whole: ``https://token@h/x`` → ``https://***@h/x``. Anything else is returned unchanged.
    """
    if "://" not in url:  # key=value conninfo
        return CONNINFO_PASSWORD.sub(r"\1" + MASK, url)
    if hide_user:
        try:
            parts = urlsplit(url)
        except ValueError:
            return url
        if "@" not in parts.netloc:
            return url
        creds, _, hostport = parts.netloc.rpartition("@")
        user, has_pw, _ = creds.partition(":")
        masked = f"{user}:{MASK}@{hostport}" if has_pw else f"{MASK}@{hostport}"
        return urlunsplit(parts._replace(netloc=masked))
    url = _QUERY_PASSWORD.sub(r"\1" + MASK, url)
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, has_pw, _ = creds.partition(":")
    return f"{scheme}://{user}{':' + MASK if has_pw else ''}@{host}"
