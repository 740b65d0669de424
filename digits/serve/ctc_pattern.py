"""Constraints on a number's reading (``length=5``, a pattern such as ``[0-5]?\\d{2}``) compiled to a small DFA.

The line reader's decoder (``ctc_decode``) runs a Viterbi search over the CTC trellis composed with this automaton,
so the constraint shapes the search itself instead of filtering a beam afterwards: a beam search with ``re`` as a
final filter can end with no valid candidate at all (the greedy path is 4 digits, every beam member too), while the
composed Viterbi finds the best path the constraint allows whenever one exists.

The pattern language is the digit-only part of regular expressions: digits, ``\\d``, classes (``[0-5]``,
``[0-35-9]``, ``[^3]`` meaning any digit but 3), groups ``(...)`` / ``(?:...)``, alternation ``|``, quantifiers
``?``, ``*``, ``+``, ``{m}``, ``{m,}``, ``{m,n}`` (counts up to ``MAX_DIGITS``), and a leading ``^`` / trailing ``$``
(a pattern always matches the whole reading). Anything that could match a non-digit is refused with a
``ConstraintError``: one line, which the serving layer answers with a 400. Needs nothing beyond the standard library
and numpy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from digits.serve.decode import InputError

__all__ = ["MAX_DIGITS", "Automaton", "ConstraintError", "compile_constraint"]

MAX_DIGITS = 12  # the most digits a reading may have (the served model refuses longer numbers)
MAX_PATTERN_CHARS = 100
MAX_NFA_STATES = 5000
MAX_STATES = 256  # a DFA bigger than this is a pattern nobody needs for a number; refused before it grows further
DIGITS = frozenset(range(10))


class ConstraintError(InputError):
    """A length or pattern constraint that cannot be used; the message is one line for the client (a 400)."""


@dataclass(frozen=True, eq=False)  # hashed by identity: the decoder caches its tables per compiled automaton
class Automaton:
    """A trimmed DFA over the digits: ``delta[q, d]`` the next state or -1; every state can still reach acceptance."""

    delta: np.ndarray  # (S, 10) int
    accept: np.ndarray  # (S,) bool
    start: int = 0

    def matches(self, text: str) -> bool:
        """Whether the digit string ``text`` is in the constraint's language."""
        q = self.start
        for ch in text:
            q = int(self.delta[q, int(ch)])
            if q < 0:
                return False
        return bool(self.accept[q])


# --- parsing: pattern text -> a small tree of ('set', digits) / ('cat', parts) / ('alt', parts) / ('rep', n, m, M)


class _Parser:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def fail(self, why: str) -> ConstraintError:
        return ConstraintError(f"pattern {self.text[:MAX_PATTERN_CHARS]!r}: {why} at position {self.i}")

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.i += 1
        return ch

    def alternation(self) -> tuple:
        parts = [self.concat()]
        while self.peek() == "|":
            self.take()
            parts.append(self.concat())
        return parts[0] if len(parts) == 1 else ("alt", parts)

    def concat(self) -> tuple:
        parts = []
        while self.peek() not in ("", "|", ")"):
            parts.append(self.quantified(self.atom()))
        return ("cat", parts)

    def atom(self) -> tuple:
        ch = self.take()
        if ch.isdigit() and ch.isascii():
            return ("set", frozenset([int(ch)]))
        if ch == "\\":
            return ("set", self.escape())
        if ch == "[":
            return ("set", self.char_class())
        if ch == "(":
            if self.text.startswith("?:", self.i):
                self.i += 2
            inner = self.alternation()
            if self.take() != ")":
                raise self.fail("missing )")
            return inner
        if ch in "?*+{":
            raise self.fail("nothing to repeat")
        self.i -= 1
        raise self.fail(f"{ch!r} is not a digit (only digit strings can be read)")

    def escape(self) -> frozenset:
        if self.take() != "d":
            self.i -= 1
            raise self.fail("only the escape \\d is allowed (only digit strings can be read)")
        return DIGITS

    def char_class(self) -> frozenset:
        negate = self.peek() == "^"
        self.i += negate
        chosen: set[int] = set()
        while (ch := self.take()) != "]":
            if ch == "":
                raise self.fail("missing ]")
            if ch == "\\":
                chosen |= self.escape()
            elif ch.isdigit() and ch.isascii():
                low = high = int(ch)
                if self.peek() == "-" and self.text[self.i + 1 : self.i + 2] not in ("]", ""):
                    self.take()
                    end = self.take()
                    if not (end.isdigit() and end.isascii()) or int(end) < low:
                        raise self.fail("bad range in [...]")
                    high = int(end)
                chosen |= set(range(low, high + 1))
            else:
                self.i -= 1
                raise self.fail(f"{ch!r} in [...] is not a digit")
        chosen_set = DIGITS - chosen if negate else frozenset(chosen)
        if not chosen_set:
            raise self.fail("[...] matches no digit")
        return chosen_set

    def quantified(self, node: tuple) -> tuple:
        while self.peek() in ("?", "*", "+", "{"):
            ch = self.take()
            low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}.get(ch, (None, None))
            if ch == "{":
                low, high = self.counts()
            node = ("rep", node, low, high)
        return node

    def counts(self) -> tuple[int, int | None]:
        close = self.text.find("}", self.i)
        body = self.text[self.i : close] if close >= 0 else ""
        low_text, comma, high_text = body.partition(",")
        if close < 0 or not low_text.isdigit() or not (high_text.isdigit() or high_text == ""):
            raise self.fail("a count must be {m}, {m,} or {m,n}")
        self.i = close + 1
        low = int(low_text)
        high = (int(high_text) if high_text else None) if comma else low
        if max(low, high or 0) > MAX_DIGITS or (high is not None and high < low):
            raise self.fail(f"counts must satisfy m <= n <= {MAX_DIGITS}")
        return low, high


def _parse(pattern: object) -> tuple:
    if not isinstance(pattern, str):
        raise ConstraintError(f"the pattern must be text, got {type(pattern).__name__}")
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise ConstraintError(f"the pattern must have 1 to {MAX_PATTERN_CHARS} characters, got {len(pattern)}")
    body = pattern[1:] if pattern.startswith("^") else pattern
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    parser = _Parser(body)
    tree = parser.alternation()
    if parser.i < len(body):
        raise parser.fail("unbalanced )")
    return tree


# --- Thompson NFA, then subset construction and trimming -------------------------------------------------------


class _NFA:
    def __init__(self):
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[frozenset, int]]] = []

    def state(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:  # nested counts multiply: ((\d{12}){12}){12}... would never end
            raise ConstraintError(f"the pattern is too complex (over {MAX_NFA_STATES} automaton states)")
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, node: tuple) -> tuple[int, int]:
        """States (start, end) of a fragment for ``node``."""
        start, end = self.state(), self.state()
        kind = node[0]
        if kind == "set":
            self.moves[start].append((node[1], end))
        elif kind in ("cat", "alt"):
            previous = start
            for part in node[1]:
                s, e = self.build(part)
                self.eps[start if kind == "alt" else previous].append(s)
                if kind == "alt":
                    self.eps[e].append(end)
                previous = e
            if kind == "cat" or not node[1]:
                self.eps[previous].append(end)
        else:
            _, inner, low, high = node
            previous = start
            for _ in range(low):  # the compulsory copies
                s, e = self.build(inner)
                self.eps[previous].append(s)
                previous = e
            self.eps[previous].append(end)
            if high is None:  # a loop: inner* after them
                s, e = self.build(inner)
                self.eps[previous].append(s)
                self.eps[e] += [s, end]
            for _ in range(high - low if high is not None else 0):  # the optional copies, each one skippable
                s, e = self.build(inner)
                self.eps[previous].append(s)
                self.eps[e].append(end)
                previous = e
        return start, end

    def closure(self, states: set[int]) -> frozenset:
        stack, seen = list(states), set(states)
        while stack:
            for nxt in self.eps[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)


def _determinise(nfa: _NFA, start: int, end: int) -> Automaton:
    first = nfa.closure({start})
    index, order, rows = {first: 0}, [first], []
    while len(rows) < len(order):
        current = order[len(rows)]
        row = []
        for d in range(10):
            target = nfa.closure({e for s in current for digits, e in nfa.moves[s] if d in digits})
            if target and target not in index:
                if len(order) >= MAX_STATES:
                    raise ConstraintError(f"the pattern is too complex (over {MAX_STATES} automaton states)")
                index[target] = len(order)
                order.append(target)
            row.append(index[target] if target else -1)
        rows.append(row)
    return _trim(np.array(rows, dtype=np.int64).reshape(-1, 10), np.array([end in s for s in order]))


def _trim(delta: np.ndarray, accept: np.ndarray) -> Automaton:
    """Drop the states that cannot reach acceptance, renumbered; refuse a language without a digit string."""
    live = accept.copy()  # states from which acceptance can be reached
    while ((grown := live | np.where(delta >= 0, live[np.maximum(delta, 0)], False).any(axis=1)) != live).any():
        live = grown
    reached = np.arange(len(accept)) == 0  # states reachable from the start
    while True:
        grown = reached.copy()
        grown[delta[reached][delta[reached] >= 0]] = True
        if (grown == reached).all():
            break
        reached = grown
    live &= reached
    if not live[0]:
        raise ConstraintError("the constraint matches no digit string")
    new_index = np.cumsum(live) - 1
    kept = delta[live]
    kept = np.where((kept >= 0) & live[np.maximum(kept, 0)], new_index[np.maximum(kept, 0)], -1)
    if (kept < 0).all():
        raise ConstraintError("the constraint matches no digit string, only the empty reading")
    return Automaton(delta=kept, accept=accept[live])


def _intersect(a: Automaton, b: Automaton) -> Automaton:
    """The product automaton: readings that both constraints allow."""
    sa, sb = len(a.accept), len(b.accept)
    delta = np.full((sa * sb, 10), -1, np.int64)
    for qa in range(sa):
        for qb in range(sb):
            both = (a.delta[qa] >= 0) & (b.delta[qb] >= 0)
            delta[qa * sb + qb] = np.where(both, a.delta[qa] * sb + b.delta[qb], -1)
    accept = (a.accept[:, None] & b.accept[None, :]).reshape(-1)
    return _trim(delta, accept)  # the start (0, 0) stays state 0: _trim keeps the order


def _parse_length(length: object) -> int:
    text = str(length).strip()
    if isinstance(length, bool) or not (isinstance(length, int) or text.isdigit()):
        raise ConstraintError(f"length must be a whole number from 1 to {MAX_DIGITS}, got {text[:20]!r}")
    value = int(text)
    if not 1 <= value <= MAX_DIGITS:
        raise ConstraintError(f"length must be from 1 to {MAX_DIGITS}, got {value}")
    return value


def compile_constraint(length: object = None, pattern: object = None) -> Automaton:
    """The automaton of the readings allowed by ``length`` (digits) and ``pattern``; both None: any digit string.

    Raises ``ConstraintError`` (a ``ValueError``) with a one-line message for a malformed constraint.
    """
    if pattern is not None and not isinstance(pattern, str):
        raise ConstraintError(f"the pattern must be text, got {type(pattern).__name__}")
    return _compile(None if length is None else _parse_length(length), pattern)


@functools.lru_cache(maxsize=128)  # requests repeat the same few constraints; the arrays are made read-only
def _compile(n: int | None, pattern: str | None) -> Automaton:
    automata = []
    if n is not None:
        delta = np.full((n + 1, 10), -1, np.int64)
        delta[:n] = np.arange(1, n + 1)[:, None]
        automata.append(Automaton(delta=delta, accept=np.arange(n + 1) == n))
    if pattern is not None:
        nfa = _NFA()
        automata.append(_determinise(nfa, *nfa.build(_parse(pattern))))
    if not automata:
        automata.append(Automaton(delta=np.zeros((1, 10), np.int64), accept=np.array([True])))
    result = automata[0] if len(automata) == 1 else _intersect(*automata)
    result.delta.flags.writeable = result.accept.flags.writeable = False
    return result
