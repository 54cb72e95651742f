"""Reading custom-call payloads out of a module's MLIR text."""
from __future__ import annotations

import re


def custom_call_strings(mlir_text: str, target: str, attribute: str) -> list[bytes]:
    """The bytes of `attribute = "..."` on each `stablehlo.custom_call @target`."""
    pattern = re.compile(r"stablehlo\.custom_call @" + re.escape(target)
                         + r"\(.*?" + re.escape(attribute) + r' = "((?:[^"\\]|\\.)*)"', re.S)
    return [unescape(m.group(1)) for m in pattern.finditer(mlir_text)]


def unescape(s: str) -> bytes:
    """MLIR string escapes (\\XX hex, \\\\, \\") back to bytes."""
    out, i, raw = bytearray(), 0, s.encode("utf-8")
    hexdigits = b"0123456789abcdefABCDEF"
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):
            nxt = raw[i + 1:i + 3]
            if len(nxt) == 2 and nxt[0] in hexdigits and nxt[1] in hexdigits:
                out.append(int(nxt, 16))
                i += 3
                continue
            out.append({ord("n"): 10, ord("t"): 9}.get(raw[i + 1], raw[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)
