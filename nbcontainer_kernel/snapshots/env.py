"""The secret filter: which environment variables (and string values) may travel.

A variable is a secret when its *name* says so or its *value* looks like one:

* names are split into words (``DB_PASS`` -> DB, PASS; ``githubToken`` ->
  github, token) and a word such as KEY, TOKEN, SECRET, PASS, PWD, PAT, CREDS,
  DSN, WEBHOOK or AUTH marks a secret, so AUTHOR and KEYBOARD_LAYOUT pass;
  every ``AWS_*`` name is a secret except the region ones a run needs; but a
  name word alone makes no secret of a number or a boolean (``MAX_TOKENS=4096``),
  nor KEY of a short word naming a field (``SORT_KEY=date``);
* values are matched against known token formats (AWS access key ids,
  GitHub, GitLab, Slack, Stripe, OpenAI-style ``sk-`` keys, JWTs, PEM private
  keys, ...), URLs with credentials in their user part (``redis://:pw@h``,
  ``postgres://u:pa/ss@h``, Sentry DSNs), values in an authorization scheme
  (``Basic``, ``Bearer``, ``token``, ``Digest``, ``AWS4-HMAC-SHA256``, ...), and
  ``key=value`` secrets inside connection strings (``password=``,
  ``AccountKey=``, ``sig=``).

Names of dropped variables are reported, never their values.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

__all__ = ["is_secret", "is_secret_name", "looks_like_secret", "filter_env", "plain_value"]

# Words that make a name a secret's.
_SECRET_WORDS = {
    "KEY",
    "KEYS",
    "APIKEY",
    "ACCESSKEY",
    "SECRETKEY",
    "PRIVATEKEY",
    "SECRET",
    "SECRETS",
    "TOKEN",
    "TOKENS",
    "PASSWORD",
    "PASSWORDS",
    "PASSWD",
    "PASS",
    "PASSPHRASE",
    "PWD",
    "PW",
    "PAT",
    "CREDENTIAL",
    "CREDENTIALS",
    "CREDS",
    "CRED",
    "AUTH",
    "AUTHTOKEN",
    "PRIVATE",
    "DSN",
    "WEBHOOK",
    "WEBHOOKS",
    "SK",
    "COOKIE",
    "COOKIES",
    "SESSIONID",
    "SIGNATURE",
    "SIG",
    "SALT",
    "OTP",
    "CERTKEY",
    "JWT",
    "BEARER",
    "CONNSTR",
    "CONNECTIONSTRING",
    "SAS",
}
# Words glued to a prefix without a separator: PGPASS, PGPASSWORD, MYSQLPWD, APITOKEN.
_SECRET_SUFFIXES = ("PASSWORD", "PASSWD", "PASS", "PWD", "TOKEN", "SECRET", "APIKEY", "KEY")
_GLUED_OK = {
    "MONKEY",
    "TURKEY",
    "HOCKEY",
    "JOCKEY",
    "DONKEY",
    "WHISKEY",
    "HOTKEY",
    "BYPASS",
    "COMPASS",
    "SURPASS",
    "OVERPASS",
    "UNDERPASS",
}
# Names made of these words describe, not authenticate: AWS_REGION, KEYBOARD_LAYOUT, ...
_AWS_KEPT = {"AWS_REGION", "AWS_DEFAULT_REGION"}
_SECRET_NAME_PREFIXES = ("AWS_",)
# Secret-looking names that are only paths, ids or switches.
_NOT_SECRET_NAMES = {"PWD", "OLDPWD", "TOKENIZERS_PARALLELISM", "KEYBOARD", "KEYMAP"}

# Known token formats, anywhere in a value.
_TOKEN_PATTERNS = [
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
    r"\bglpat-[A-Za-z0-9_-]{20,}\b",  # GitLab
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",  # Slack
    r"\bxapp-\d-[A-Za-z0-9-]{10,}\b",
    r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}\b",  # OpenAI, Anthropic and friends
    r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b",  # Stripe secret and restricted keys
    r"\bwhsec_[A-Za-z0-9]{20,}\b",
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API keys
    r"\bya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth access tokens
    r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face
    r"\bnpm_[A-Za-z0-9]{36}\b",
    r"\bpypi-AgE[A-Za-z0-9_-]{50,}",
    r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",  # SendGrid
    r"\bdapi[0-9a-f]{32}\b",  # Databricks
    r"\bdop_v1_[0-9a-f]{64}\b",  # DigitalOcean
    r"\bshp(?:at|ca|pa|ss)_[0-9a-fA-F]{32}\b",  # Shopify
    r"\bkey-[0-9a-f]{32}\b",  # Mailgun
    r"\b\d{8,10}:AA[0-9A-Za-z_-]{33}\b",  # Telegram bots
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----",  # PEM / PGP private keys
    r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",
    r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]+",
    r"https://[a-z0-9-]+\.webhook\.office\.com/\S+",
    r"\bAccountKey=[A-Za-z0-9+/=]{20,}",  # Azure storage connection strings
    r"\bSharedAccessKey=[A-Za-z0-9+/=]{20,}",
]
_TOKEN = re.compile("|".join(f"(?:{p})" for p in _TOKEN_PATTERNS))
# user:password@ (user may be empty) in any URL, the password may hold '/'.
# (":8080/path/@x" is a port and a path, not a password.)
_URL_PASSWORD = re.compile(
    r"[a-z][a-z0-9+.-]*://[^\s/@:]*:(?!\d+(?:/|$))[^\s@]+@[^\s@]", re.IGNORECASE
)
# A token alone in the user part (Sentry DSNs: https://<32 hex>@o1.ingest.sentry.io/1).
_URL_TOKEN_USER = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9_-]{16,}@", re.IGNORECASE)
# key=value secrets in DSNs, JDBC URLs, connection strings and query strings.
_KV_SECRET = re.compile(
    r"(?:^|[\s;?&,(])(?:password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|"
    r"client_secret|accountkey|sharedaccesskey|sig|auth|authtoken|private_key)\s*=\s*[^\s;&,)]+",
    re.IGNORECASE,
)
# An authorization scheme and its one credential (RFC 9110 token68 style).
_AUTH_HEADER = re.compile(
    r"^\s*(?:(?:Proxy-)?Authorization:\s*)?"
    r"(Basic|Bearer|Token|Negotiate|NTLM|ApiKey|Api-Key|Key|GoogleLogin|JWT)\s+(\S+)\s*$",
    re.IGNORECASE,
)
# Schemes whose credentials are parameters (name=value, ...).
_AUTH_PARAMS = re.compile(
    r"^\s*(?:(?:Proxy-)?Authorization:\s*)?"
    r"(?:Digest|AWS4-HMAC-SHA256|OAuth|Hawk|HOBA|Mutual|SCRAM-SHA-\d+|Signature|GoogleLogin)"
    r"\s+[A-Za-z_-]+\s*=",
    re.IGNORECASE,
)
# Values that are no credential whatever a variable is called: a number, a boolean.
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d{1,10}(?:\.\d{0,10})?|\.\d{1,10})(?:[eE][+-]?\d{1,3})?$")
_BOOLEANS = {"true", "false", "yes", "no", "on", "off", "none", "null", "y", "n", "t", "f"}
# A short word naming something (a column, a field, a format): what KEY means in
# SORT_KEY=date or PRIMARY_KEY=id, as against a key's random value.
_IDENTIFIER = re.compile(
    r"^(?:[a-z]{1,16}(?:[_.:-][a-z]{1,16})?|[A-Z]{1,16}(?:[_.:-][A-Z]{1,16})?"
    r"|[A-Z]?[a-z]{1,15}(?:[A-Z][a-z]{1,15})?)"
    r"\d{0,2}$"
)
# Name words that often mean "which field" rather than "a credential".
_FIELD_WORDS = {"KEY", "KEYS"}

# Describe this machine or session, not the computation: never shipped.
_MACHINE = {
    "PATH",
    "HOME",
    "HOSTNAME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "TERM",
    "SHELL",
    "USER",
    "LOGNAME",
    "MAIL",
    "DISPLAY",
    "_",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "DOCKER_HOST",
    "SSH_CLIENT",
    "SSH_CONNECTION",
    "SSH_TTY",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "PS1",
    "LS_COLORS",
    "COLUMNS",
    "LINES",
    "CLICOLOR",
    "PAGER",
    "GIT_PAGER",
    "MPLBACKEND",
    "NBCONTAINER_KERNEL_ID",
    "NBCONTAINER_IMAGE",
    "PYTHONEXECUTABLE",
    "IPYTHONDIR",
}
_MACHINE_PREFIX = (
    "JPY_",
    "JUPYTER_",
    "IPYKERNEL",
    "LC_",
    "XDG_",
    "PYENV",
    "SSH_",
    "KUBERNETES_",
    "NBCONTAINER_TEST",
    "PYTEST_",
    "ECS_",
    "SAGEMAKER_",
    "PIP_",
    "SSL_CERT_",
)
# Paths of this machine's certificate bundles and tool configs (the image has its own).
_MACHINE_SUFFIX = (
    "_CA_BUNDLE",
    "_CERTS_FILE",
    "_CA_CERTS",
    "_CAINFO",
    "_CONFIG_FILE",
    "_ROOTS_FILE_PATH",
)

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def _words(name: str) -> list[str]:
    """DB_PASS -> [DB, PASS]; githubToken -> [GITHUB, TOKEN]; PGPASS -> [PGPASS]."""
    return [w.upper() for w in _WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a secret."""
    return bool(_secret_words(name))


def _secret_words(name: str) -> set[str]:
    """The words of a name that make it a secret's ({'AWS'} for an AWS_* name); empty
    when none does."""
    upper = name.upper()
    if upper in _NOT_SECRET_NAMES:
        return set()
    if upper.startswith(_SECRET_NAME_PREFIXES):
        return set() if upper in _AWS_KEPT else {"AWS"}
    found = set()
    for word in _words(name):
        if word in _SECRET_WORDS:
            found.add(word)
        elif word not in _GLUED_OK and len(word) > 4 and word.endswith(_SECRET_SUFFIXES):
            # PGPASSWORD, APITOKEN, SORTKEY: the glued word counts as its suffix.
            found.add(next(x for x in _SECRET_SUFFIXES if word.endswith(x)))
    return found


def plain_value(value: str) -> bool:
    """A number or a boolean: no credential, whatever the variable is called."""
    text = value.strip()
    return bool(_PLAIN_NUMBER.match(text)) or text.lower() in _BOOLEANS


def _basic_credentials(token: str) -> bool:
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return ":" in decoded


def looks_like_secret(value: str) -> bool:
    """Whether a string looks like a credential, whatever it is called."""
    if not isinstance(value, str) or len(value) < 8:
        return False
    if _TOKEN.search(value) or _URL_PASSWORD.search(value) or _URL_TOKEN_USER.search(value):
        return True
    if _KV_SECRET.search(value):
        return True
    if _AUTH_PARAMS.match(value):
        return True
    header = _AUTH_HEADER.match(value)
    if header:
        scheme, token = header.group(1).lower(), header.group(2)
        if scheme == "basic":
            return _basic_credentials(token)
        # A credential, not a word: long, or with a digit or a token68 mark in it.
        return len(token) >= 16 or bool(re.search(r"[\d._~+/=-]", token))
    return False


def is_secret(name: str, value: str = "") -> bool:
    """A secret by name or by value. A name word alone does not make a secret of a
    number or a boolean (MAX_TOKENS=4096), nor KEY of a short word naming a field
    (SORT_KEY=date, PRIMARY_KEY=id)."""
    if looks_like_secret(value):
        return True
    words = _secret_words(name)
    if not words:
        return False
    if value and plain_value(value):
        return False
    return not (words <= _FIELD_WORDS and _IDENTIFIER.match(value.strip()))


def filter_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(kept, dropped as secrets, dropped as machine-specific) — dropped lists hold names only."""
    kept, secrets, machine = {}, [], []
    for name, value in sorted(env.items()):
        if name.upper() in ("PWD", "OLDPWD"):
            machine.append(name)
        elif is_secret(name, value):
            secrets.append(name)
        elif (
            name in _MACHINE
            or name.upper().startswith(_MACHINE_PREFIX)
            or name.upper().endswith(_MACHINE_SUFFIX)
        ):
            machine.append(name)
        else:
            kept[name] = value
    return kept, secrets, machine
