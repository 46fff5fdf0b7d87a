"""What the SDK checks share: the addresses and knobs the Rust test passes in the
environment (crates/weir/tests/proxy_sdk.rs), and a check that says what it compared.

Routes of the weir config the checks expect (each prefix has an OpenAI route,
PREFIX/v1/chat/completions, and an Anthropic one, PREFIX/v1/messages):

  (none)   upstream query WEIR_KNOBS                       plain pass-through
  /slow    WEIR_KNOBS&ttft_ms=..&rate=..                   ': keep-alive' comments, then paced tokens
  /reset   WEIR_KNOBS&fault=reset&fault_after=WEIR_FAULT_AFTER
  /error   WEIR_KNOBS&fault=error&fault_after=WEIR_FAULT_AFTER
  /pii     WEIR_PII_KNOBS, with redaction on (only in redact_sdk.py's config)
"""

import os
import re
import sys
from urllib.parse import parse_qsl

WEIR_URL = os.environ["WEIR_URL"].rstrip("/")
MOCK_URL = os.environ["MOCK_URL"].rstrip("/")
WEIR_KEY = os.environ["WEIR_KEY"]
KNOBS = dict(parse_qsl(os.environ["WEIR_KNOBS"]))
PII_KNOBS = dict(parse_qsl(os.environ.get("WEIR_PII_KNOBS", "")))
FAULT_AFTER = int(os.environ["WEIR_FAULT_AFTER"])
TOKENS = int(KNOBS["tokens"])

# Calls that hang are failures, and a failed call is never retried behind our back.
TIMEOUT = 30.0
RETRIES = 0

# What the mock plants with pii=N and a redactor must remove: e-mail addresses and
# sk- keys are the two whose shape is unambiguous enough to find by pattern here.
PII_PATTERNS = [re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), re.compile(r"sk-[A-Za-z0-9]{16,}")]


def check(ok, what, detail=""):
    """Fails the script, saying what was compared, unless `ok`."""
    if not ok:
        sys.stderr.write(f"FAILED: {what}\n{detail}\n")
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def pii_found(text):
    return sorted({m for p in PII_PATTERNS for m in p.findall(text)})
