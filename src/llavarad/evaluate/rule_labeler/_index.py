"""Fast phrase search: regular-expression fragments indexed by their first letters.

Scanning a report once per observation with a long alternation costs most of the labeler's time
(Python's regex engine tries every branch at every character). Every phrase starts at a word
start, so :class:`PhraseIndex` instead visits each word start once, looks up the few fragments
whose literal prefix fits the next two letters, and tries only those, in their list order.

Per label the result equals ``re.finditer`` of the label's alternation with a word-start guard:
leftmost-first, earlier fragments first, matches of one label never overlapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["PhraseIndex", "word_starts"]

_WORD = re.compile(r"[a-z]+")
_LITERAL = set("abcdefghijklmnopqrstuvwxyz")
_QUANT = set("?*+{")
_KEY_MAX = 6


def word_starts(text: str) -> list[tuple[int, str]]:
    """``(offset, word)`` for every run of letters in ``text`` (a cleaned, single-spaced report)."""
    out: list[tuple[int, str]] = []
    pos = 0
    for token in text.split(" "):
        core = token.rstrip(".,;:")
        if core.isalpha() and core.isascii():  # the common case: a plain word
            out.append((pos, core))
        elif core:
            out.extend((pos + m.start(), m.group()) for m in _WORD.finditer(core))
        pos += len(token) + 1
    return out


def _split_top(body: str) -> list[str]:
    """Split a group body at its top-level ``|``."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            cur.append(body[i:i + 2])
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _leading_group(frag: str) -> tuple[str, str, bool] | None:
    """``(body, rest, optional)`` when ``frag`` starts with a ``(?:...)`` group."""
    if not frag.startswith("(?:"):
        return None
    depth = 0
    for i, ch in enumerate(frag):
        if ch == "\\":
            continue
        if ch == "(" and (i == 0 or frag[i - 1] != "\\"):
            depth += 1
        elif ch == ")" and frag[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                rest = frag[i + 1:]
                optional = rest.startswith("?")
                if rest[:1] in _QUANT - {"?"}:
                    return None
                return frag[3:i], rest[1:] if optional else rest, optional
    return None


def _prefixes(frag: str, depth: int = 0) -> set[str]:
    """Literal letter prefixes (of the first word, ``_KEY_MAX`` at most) that matches start with."""
    if depth > 8:
        raise ValueError(f"phrase {frag!r}: too deeply nested to index")
    group = _leading_group(frag)
    if group is not None:
        body, rest, optional = group
        out: set[str] = set()
        for alt in _split_top(body):
            out |= _prefixes(alt + rest, depth + 1)
        if optional:
            out |= _prefixes(rest, depth + 1)
        return out
    prefix = []
    for i, ch in enumerate(frag):
        if ch not in _LITERAL or (i + 1 < len(frag) and frag[i + 1] in _QUANT):
            break
        prefix.append(ch)
        if len(prefix) == _KEY_MAX:
            break
    if not prefix or not prefix[0].isalpha():
        raise ValueError(f"phrase {frag!r} must start with a literal letter (or a group of such alternatives)")
    return {"".join(prefix)}


class PhraseIndex:
    """Labelled regular-expression fragments, searchable in one pass over the word starts.

    Args:
        table: ``(label, fragments)`` pairs; fragment order within a label is match priority.
        word_end: also require that a match ends at a word end (cues do, mention stems do not).
        word_end_labels: more pairs, appended to ``table``, whose matches must end at a word end.
    """

    def __init__(
        self,
        table: Iterable[tuple[str, Iterable[str]]],
        *,
        word_end: bool = False,
        word_end_labels: Iterable[tuple[str, Iterable[str]]] = (),
    ):
        self.labels: list[str] = []
        by_len: dict[int, dict[str, list[tuple[int, int, re.Pattern[str]]]]] = {}
        order = 0
        rows = [(label, frags, word_end) for label, frags in table]
        rows += [(label, frags, True) for label, frags in word_end_labels]
        for label_id, (label, fragments, at_end) in enumerate(rows):
            self.labels.append(label)
            tail = "(?![a-z])" if at_end else ""
            for frag in fragments:
                entry = (order, label_id, re.compile(f"(?:{frag}){tail}"))
                order += 1
                for p in _prefixes(frag):
                    by_len.setdefault(len(p), {}).setdefault(p, []).append(entry)
        self._by_len = sorted(by_len.items())
        self._fragments: dict[int, str] = {}
        for table in by_len.values():
            for entries in table.values():
                for order_, _, pattern in entries:
                    self._fragments[order_] = pattern.pattern
        self._cache: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        self._merged: dict[tuple[int, ...], re.Pattern[str]] = {}

    def _candidates(self, word: str) -> list[tuple[int, re.Pattern[str]]]:
        """Per label, one pattern: the label's fragments that can start with ``word``, in order."""
        entries: list[tuple[int, int, re.Pattern[str]]] = []
        for n, table in self._by_len:
            if n <= len(word):
                entries.extend(table.get(word[:n], ()))
        entries.sort(key=lambda c: c[0])
        groups: dict[int, list[int]] = {}
        for order_, label_id, _ in entries:
            orders = groups.setdefault(label_id, [])
            if not orders or orders[-1] != order_:  # a fragment may sit under two prefixes of the word
                orders.append(order_)
        cands: list[tuple[int, re.Pattern[str]]] = []
        for label_id, orders in groups.items():
            key = tuple(orders)
            merged = self._merged.get(key)
            if merged is None:  # an alternation tries its branches in order, like the list did
                merged = re.compile("|".join(self._fragments[o] for o in orders))
                self._merged[key] = merged
            cands.append((label_id, merged))
        if len(self._cache) > 100_000:  # bound the memo on endless vocabularies
            self._cache.clear()
        self._cache[word] = cands
        return cands

    def find(self, text: str, words: list[tuple[int, str]]) -> list[tuple[int, int, int]]:
        """All matches as ``(start, end, label_index)``, sorted by start; ``words`` from :func:`word_starts`."""
        cache = self._cache
        last_end = [0] * len(self.labels)
        out: list[tuple[int, int, int]] = []
        for pos, word in words:
            cands = cache.get(word)
            if cands is None:
                cands = self._candidates(word)
            for label_id, pattern in cands:
                if pos < last_end[label_id]:
                    continue
                m = pattern.match(text, pos)
                if m is not None:
                    last_end[label_id] = m.end()
                    out.append((pos, m.end(), label_id))
        return out
