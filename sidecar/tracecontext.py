"""W3C Trace Context (https://www.w3.org/TR/trace-context/) as a `publish` may carry it: what a valid `traceparent`
and `tracestate` are (docs/protocol.md#trace-context). Pure, standard library only; checked only for a publish that
has them."""

from __future__ import annotations

import re

#: W3C Trace Context: vendors must carry a tracestate of 512 characters; a longer one is refused here.
MAX_TRACESTATE_LENGTH = 512
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: The same with version ff and all-zero ids refused, in one match: the check of every traced publish.
_VALID_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(rf"[\x20-\x7e]{{1,{MAX_TRACESTATE_LENGTH}}}")


def problem(traceparent: object, tracestate: object) -> str | None:
    """What is wrong with a publish's W3C trace context, or None.

    A `traceparent` is `<version>-<trace id>-<parent id>-<flags>` in lowercase hex (2, 32, 16 and 2 digits), version
    `ff` and all-zero ids being invalid; a `tracestate` is at most 512 printable ASCII characters, and only with a
    `traceparent`. Only the 55-character form is taken, whatever the version.
    """
    if traceparent is None:
        return "publish: 'tracestate' without a 'traceparent'" if tracestate is not None else None
    if not isinstance(traceparent, str) or not _VALID_TRACEPARENT.fullmatch(traceparent):
        if isinstance(traceparent, str) and _TRACEPARENT.fullmatch(traceparent):
            return "publish: 'traceparent' has version ff or an all-zero trace or parent id (W3C Trace Context)"
        return "publish: 'traceparent' must be '<2 hex>-<32 hex>-<16 hex>-<2 hex>' (W3C Trace Context, lowercase)"
    if tracestate is not None and (not isinstance(tracestate, str) or not _TRACESTATE.fullmatch(tracestate)):
        return f"publish: 'tracestate' must be 1 to {MAX_TRACESTATE_LENGTH} printable ASCII characters"
    return None
