"""HPACK coders that remember what they did while the dynamic table stays the same.

A proxy sends and receives the same few header blocks over and over on one connection (a
gRPC method's `:path`, `content-type`, `grpc-status: 0` …). Once those fields sit in the
dynamic table, encoding or decoding them again is a pure function of (field or block, table
state), yet pure-Python hpack redoes a table search, integer and Huffman coding per field.

The table state is tracked cheaply and soundly: hpack changes a table only by
`appendleft`-ing a *new* tuple (an insertion, maybe with evictions), popping from the right
(a shrink) or clearing it. So "same length and the very same newest entry object" (we hold a
reference, so its identity cannot be reused) plus the size limits means "same table". Any
change empties the memo. Nothing is skipped for untrusted input: a decoded block is only
reused for byte-identical input under an identical table and identical limits, where hpack
would return the same list; blocks that changed the table, failed, or are large are never
kept, and h2 still validates every returned list (RFC 9113 §8.2).
"""

from __future__ import annotations

from typing import Any

from hpack import Decoder, Encoder

_MEMO_MAX = 256            # entries per connection and direction; emptied when full
_BLOCK_MAX = 512           # bytes: a larger inbound block is decoded, never kept
_FIELD_MAX = 128           # bytes: a larger encoded field is encoded afresh each time


class MemoEncoder(Encoder):
    """`hpack.Encoder` with a per-field memo valid while the table is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[Any, bytes] = {}
        self._len = 0
        self._newest: Any = None

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or not huffman or isinstance(headers, dict):
            self._memo.clear()
            self._newest = None
            self._len = -1
            return super().encode(headers, huffman)
        entries = table.dynamic_entries
        memo = self._memo
        if len(entries) != self._len or (entries[0] if entries else None) is not self._newest:
            memo.clear()
            self._len = len(entries)
            self._newest = entries[0] if entries else None
        out = []
        for h in headers:
            b = memo.get(h)
            if b is None:
                sensitive = not h.indexable if hasattr(h, "indexable") else (len(h) > 2 and bool(h[2]))
                # Never-indexed fields (secrets, per-request ids) are rarely seen twice: a raw
                # literal spares both ends the pure-Python Huffman coding for a few bytes more.
                b = self.add((h[0], h[1]), sensitive, not sensitive)
                n = len(entries)
                newest = entries[0] if n else None
                if n != self._len or newest is not self._newest:    # the table moved on
                    memo.clear()
                    self._len, self._newest = n, newest
                elif len(b) > _FIELD_MAX:
                    pass                                            # big: not worth holding
                elif len(memo) < _MEMO_MAX:
                    # Key collision of a never-indexed and a plain field with equal bytes is
                    # harmless: unchanged table means an indexed hit (the same for both) or a
                    # never-indexed literal (valid, merely not indexed, for the plain one).
                    memo[h] = b
                else:
                    memo.clear()
            out.append(b)
        return b"".join(out)


class MemoDecoder(Decoder):
    """`hpack.Decoder` that reuses the result for a byte-identical block under an identical
    table and limits (see the module docstring for why that is exactly hpack's answer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memo: dict[bytes, tuple[Any, ...]] = {}

    def _state(self) -> tuple[Any, ...]:
        table = self.header_table
        entries = table.dynamic_entries
        return (len(entries), table.maxsize, self.max_allowed_table_size, self.max_header_list_size,
                entries[0] if entries else None)

    def decode(self, data: bytes, raw: bool = False) -> list:
        if not raw or len(data) > _BLOCK_MAX:
            return super().decode(data, raw)
        key = data if type(data) is bytes else bytes(data)
        state = self._state()
        hit = self._memo.get(key)
        if hit is not None and hit[0] == state[:4] and hit[1] is state[4]:
            return list(hit[2])
        headers = super().decode(data, raw)
        after = self._state()
        if after[:4] == state[:4] and after[4] is state[4]:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = (state[:4], state[4], tuple(headers))
        return headers
