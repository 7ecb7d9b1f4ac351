"""Byte-level grammars as recursive transition networks: the automaton behind constrained decoding.

A ``Grammar`` is a list of small machines. A machine state has byte edges (deterministic within
the machine) and call edges: push a child machine and, once the child is in a final state, pop it
and resume at the call's return state. Alternatives (anyOf, type lists) are calls from one state
to several children, so a parse position is a set of stacks -- an NFA over stacks, in practice
one or two of them, and every decision below is made per stack.

A stack is a tuple of frames ``machine << FRAME_BITS | state``, top last; each frame below the top
holds the state its machine resumes at. The runtime keeps only *settled* stacks: the top state has
byte edges, or the stack is the root alone in a final state (the text so far is complete).

Every state has a finite shortest completion (``dist``, in bytes): states with none are pruned at
build time, so any settled stack can always be finished -- the constraint never dead-ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAME_BITS = 20
STATE_MASK = (1 << FRAME_BITS) - 1
INF = 1 << 40
MAX_STATES = 200_000  # all machines together; a schema needing more is refused
MAX_STACKS = 64  # stacks one position may hold; more means a pathological anyOf
MEMO_LIMIT = 50_000  # entries per memo before it is dropped and rebuilt

Stack = tuple  # tuple[int, ...]
State = frozenset  # frozenset[Stack]


class GrammarError(ValueError):
    """The grammar cannot be built: no finite text matches it, or it is too large."""


@dataclass(eq=False)
class Machine:
    name: str
    leaf: str | None = None  # a pure byte DFA whose token tables the vocabulary precomputes
    edges: list[dict[int, int]] = field(default_factory=list)
    calls: list[list[tuple[int, int]]] = field(default_factory=list)
    final: list[bool] = field(default_factory=list)

    def state(self, final: bool = False) -> int:
        self.edges.append({})
        self.calls.append([])
        self.final.append(final)
        return len(self.final) - 1

    def edge(self, src: int, values, dst: int) -> None:
        for b in values:
            self.edges[src][b] = dst

    def call(self, src: int, child: int, ret: int) -> None:
        self.calls[src].append((child, ret))

    def chain(self, src: int, data: bytes) -> int:
        """Byte edges spelling ``data`` from ``src``; returns the state after the last byte."""
        for b in data:
            nxt = self.edges[src].get(b)
            if nxt is None:
                nxt = self.state()
                self.edges[src][b] = nxt
            src = nxt
        return src


class Grammar:
    """Machines plus a root: ``prefix``, one value machine, ``suffix``. Immutable once built; the
    memo tables fill in as the generation thread walks it (one thread, no locking)."""

    def __init__(
        self,
        machines: list[Machine],
        value: int,
        key: str,
        prefix: bytes = b"",
        suffix: bytes = b"",
    ) -> None:
        root = Machine("root")
        s = root.chain(root.state(), prefix)
        after = root.state()
        root.call(s, value, after)
        root.final[root.chain(after, suffix)] = True
        self.machines = machines + [root]
        self.root = len(machines)
        self.value, self.key, self.prefix, self.suffix = value, key, prefix, suffix
        if sum(len(m.final) for m in self.machines) > MAX_STATES:
            raise GrammarError(f"the grammar needs more than {MAX_STATES} states")
        _check_left_recursion(self.machines)
        self.dist = _distances(self.machines)
        if self.dist[self.root][0] >= INF:
            raise GrammarError("no finite JSON text matches the schema (a required recursion?)")
        _prune(self.machines, self.dist)
        self._affixed: dict[tuple[bytes, bytes], Grammar] = {}
        self._step: dict = {}
        self._closure: dict = {}
        self._cost: dict = {}
        self._next: dict = {}
        self.initial: State = self.closure((self.root << FRAME_BITS,))

    def __getstate__(self) -> dict:
        """Pickled (for the other ranks of a group) without the memo tables: they grow with use
        and each process fills its own."""
        memo = ("_affixed", "_step", "_closure", "_cost", "_next")
        return {k: ({} if k in memo else v) for k, v in self.__dict__.items()}

    def with_affixes(self, prefix: bytes, suffix: bytes) -> Grammar:
        """The same value between literal ``prefix`` and ``suffix`` (e.g. tool-call wrapping)."""
        if (prefix, suffix) == (self.prefix, self.suffix):
            return self
        key = (prefix, suffix)
        if key not in self._affixed:
            self._affixed[key] = Grammar(
                self.machines[: self.root],
                self.value,
                f"{self.key}|{prefix!r}|{suffix!r}",
                prefix,
                suffix,
            )
        return self._affixed[key]

    # ----- runtime (generation thread) -----

    def closure(self, stack: Stack) -> State:
        """The settled stacks reachable from ``stack`` by calls and returns, consuming nothing."""
        hit = self._closure.get(stack)
        if hit is not None:
            return hit
        machines, out, seen, todo = self.machines, set(), set(), [stack]
        while todo:
            st = todo.pop()
            if st in seen:
                continue
            seen.add(st)
            m, s = st[-1] >> FRAME_BITS, st[-1] & STATE_MASK
            mach = machines[m]
            if mach.edges[s]:
                out.add(st)
            for child, ret in mach.calls[s]:
                todo.append(st[:-1] + ((m << FRAME_BITS) | ret, child << FRAME_BITS))
            if mach.final[s]:
                if len(st) == 1:
                    out.add(st)
                else:
                    todo.append(st[:-1])
        if len(out) > MAX_STACKS:  # keep the cheapest to finish; each alone stays completable
            out = set(sorted(out, key=self.cost)[:MAX_STACKS])
        result = frozenset(out)
        _remember(self._closure, stack, result)
        return result

    def step(self, state: State, byte: int) -> State:
        """The state after one more byte; empty when the byte is not allowed."""
        key = (state, byte)
        hit = self._step.get(key)
        if hit is not None:
            return hit
        out: set = set()
        for st in state:
            top = st[-1]
            nxt = self.machines[top >> FRAME_BITS].edges[top & STATE_MASK].get(byte)
            if nxt is not None:
                out |= self.closure(st[:-1] + ((top & ~STATE_MASK) | nxt,))
        result = frozenset(out)
        _remember(self._step, key, result)
        return result

    def next_bytes(self, state: State) -> frozenset:
        hit = self._next.get(state)
        if hit is None:
            hit = frozenset(
                b
                for st in state
                for b in self.machines[st[-1] >> FRAME_BITS].edges[st[-1] & STATE_MASK]
            )
            _remember(self._next, state, hit)
        return hit

    def cost(self, stack: Stack) -> int:
        """Bytes in the shortest text that completes ``stack`` (suffix included)."""
        hit = self._cost.get(stack)
        if hit is None:
            dist = self.dist
            hit = sum(dist[f >> FRAME_BITS][f & STATE_MASK] for f in stack)
            _remember(self._cost, stack, hit)
        return hit

    def state_cost(self, state: State) -> int:
        return min(map(self.cost, state), default=INF)

    def rest_cost(self, stack: Stack) -> int:
        """``cost`` of the frames under the top: what remains once the top machine finishes."""
        return self.cost(stack) - self.dist[stack[-1] >> FRAME_BITS][stack[-1] & STATE_MASK]

    def accepting(self, state: State) -> bool:
        root = self.machines[self.root]
        return any(len(st) == 1 and root.final[st[0] & STATE_MASK] for st in state)

    def walk(self, data: bytes, state: State | None = None) -> State:
        """The state after ``data`` (empty if rejected)."""
        state = self.initial if state is None else state
        for b in data:
            state = self.step(state, b)
            if not state:
                break
        return state


def _remember(memo: dict, key, value) -> None:
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def _check_left_recursion(machines: list[Machine]) -> None:
    """A machine that calls itself before consuming a byte would push forever ($ref loops
    through anyOf with no object or array between). Only start states call before a byte: every
    machine but the root consumes at least one byte before it can finish."""
    color = [0] * len(machines)  # 0 unvisited, 1 on the path, 2 done

    def visit(m: int) -> None:
        color[m] = 1
        for child, _ in machines[m].calls[0]:
            if color[child] == 1:
                raise GrammarError(
                    f"'{machines[child].name}' refers to itself without any "
                    "object or array in between"
                )
            if color[child] == 0:
                visit(child)
        color[m] = 2

    for m in range(len(machines)):
        if color[m] == 0:
            visit(m)


def _distances(machines: list[Machine]) -> list[list[int]]:
    """Shortest completion, in bytes, of every state: a fixed point, since calls may recurse."""
    dist = [[INF] * len(m.final) for m in machines]
    changed = True
    while changed:
        changed = False
        for mi, m in enumerate(machines):
            d = dist[mi]
            for s in range(len(m.final) - 1, -1, -1):
                best = 0 if m.final[s] else INF
                for t in set(m.edges[s].values()):
                    best = min(best, 1 + d[t])
                for child, ret in m.calls[s]:
                    best = min(best, dist[child][0] + d[ret])
                if best < d[s]:
                    d[s] = best
                    changed = True
    return dist


def _prune(machines: list[Machine], dist: list[list[int]]) -> None:
    """Drop edges and calls into states that can never finish (e.g. an anyOf branch that only
    recurses): what is left always has a way out."""
    for mi, m in enumerate(machines):
        d = dist[mi]
        for s in range(len(m.final)):
            if any(d[t] >= INF for t in m.edges[s].values()):
                m.edges[s] = {b: t for b, t in m.edges[s].items() if d[t] < INF}
            m.calls[s] = [(c, r) for c, r in m.calls[s] if dist[c][0] < INF and d[r] < INF]
