"""How every kernel package picks an implementation, and why it picked it.

Each implementation is a module `PACKAGE.NAME` with an `attention(*args, **kwargs)` function,
imported on first use, so a GPU machine never imports the TPU kernels and vice versa. A module that
cannot be imported (jax without Pallas Triton, say) makes its implementation
*unavailable*: implementation=None skips it, and naming it raises `Unavailable` saying why.

Implementation names follow one scheme, shared with fintrans.ops (its dispatch.IMPLEMENTATION_NAMES
table is the documentation): `reference` (the dense oracle), `xla` (plain XLA; takes every valid
input), `pallas_gpu` (Triton lowering), `pallas_tpu` (Mosaic TPU), `pallas_mosaic_gpu` (Mosaic GPU)
and `cudnn` (jax.nn.dot_product_attention's cuDNN kernel). Every package's IMPLEMENTATIONS are drawn
from NAMES.

Dispatch rules (`run`):
  * a named implementation is used as asked, never replaced: its errors propagate;
  * implementation=None tries a `Plan`'s candidates in order, falling through on NotImplementedError
    (an input the kernel does not take) and on Unavailable, to 'xla', which takes every valid input.

Where the order comes from (`plan`): the committed dispatch table (dispatch_table.json, written by
`python -m experiments.bench.dispatch_table` from the benchmark JSON) maps a `TableKey` (op, device
kind as `jax.devices()[0].device_kind`, dtype, head_dim, shape bucket; each op defines its bucket)
to the implementations measured correct there, fastest first, and those it rejects (an error or an
accuracy failure in the benchmark). The plan is the table's order, then the default order's
implementations the table did not measure; nothing after 'xla' (it always works). Without an entry
(another device, a new shape) it is the op's static default order for the platform, minus
candidates whose preconditions fail (pallas_mosaic_gpu: Hopper, bfloat16/float16).

`explain(fn, *args, **kwargs)` traces fn with jax.eval_shape (nothing runs) and returns the
outermost dispatch decision: which implementation, where the order came from (the table entry and
its measured times, or the default order), and every candidate skipped with its reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import threading
from typing import Any, Callable, Collection, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

NAMES = ("reference", "xla", "pallas_gpu", "pallas_tpu", "pallas_mosaic_gpu", "cudnn")
# Default orders for implementation=None, per platform; 'xla' always comes last because it always
# works. PREFERENCE is for packages whose only fast implementations are our Pallas kernels;
# attention and decode also have cuDNN and the Mosaic GPU kernels (ATTENTION_PREFERENCE).
PREFERENCE = {"cpu": ("xla",), "gpu": ("pallas_gpu", "xla"), "tpu": ("pallas_tpu", "xla")}
ATTENTION_PREFERENCE = {**PREFERENCE, "gpu": ("cudnn", "pallas_mosaic_gpu", "pallas_gpu", "xla")}
# What a dispatch table may rank: the names implementation=None may choose (never the oracle).
RANKABLE = ("cudnn", "pallas_mosaic_gpu", "pallas_gpu", "pallas_tpu", "xla")

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dispatch_table.json")
TABLE_ENV = "KERNELS_PALLAS_DISPATCH_TABLE"  # another table file (a GPU session's fresh one)
TABLE_FORMAT = 1


def check_names(package: str, implementations: Sequence[str]) -> tuple[str, ...]:
    """`implementations`, after checking each follows the naming scheme (at import: a typo fails early)."""
    bad = [n for n in implementations if n not in NAMES]
    if bad:
        raise ValueError(f"{package}: implementation names {bad} are not in the naming scheme {NAMES}")
    return tuple(implementations)


class Unavailable(ImportError):
    """An implementation whose module cannot be imported here (the message says why)."""


_IMPORT_ERRORS: dict[str, ImportError] = {}  # a failed import stays failed in this process


def module(package: str, name: str):
    full = f"{package}.{name}"
    err = _IMPORT_ERRORS.get(full)
    if err is None:
        try:
            return importlib.import_module(full)
        except ImportError as e:
            err = _IMPORT_ERRORS[full] = e
    raise Unavailable(f"implementation {name!r} is unavailable here: importing {full} failed "
                      f"({type(err).__name__}: {err})") from err


# --- the table -----------------------------------------------------------------------------------

def pow2_bucket(n: int) -> int:
    """n rounded up to a power of two (1 for n <= 1): lengths that cost about the same share a bucket."""
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class TableKey:
    op: str            # the kernel package's table name ("blockwise_attention", "lean_decode_attention")
    device_kind: str   # jax.devices()[0].device_kind, e.g. "NVIDIA H100 80GB HBM3", "cpu"
    dtype: str         # "bfloat16"
    head_dim: int
    bucket: str        # the op's shape bucket, e.g. "causal/q8192/kv8192"

    def __str__(self):
        return f"{self.op} on {self.device_kind!r}, {self.dtype}, head_dim {self.head_dim}, {self.bucket}"


def table_key(op: str, dtype, head_dim: int, bucket: str, device=None) -> TableKey:
    device = device or jax.devices()[0]
    return TableKey(op, str(device.device_kind), jnp.dtype(dtype).name, int(head_dim), bucket)


_table_lock = threading.Lock()
_table_cache: dict[str, dict] = {}
_override: list = []  # use_table's stack


def _index(table: Mapping, origin: str) -> dict:
    """{TableKey: entry} after checking the table's shape (a hand-edited file fails loudly)."""
    if table.get("format") != TABLE_FORMAT or not isinstance(table.get("entries"), list):
        raise ValueError(f"dispatch table {origin}: expected format {TABLE_FORMAT} with a list of entries")
    out = {}
    for e in table["entries"]:
        try:
            key = TableKey(e["op"], e["device_kind"], e["dtype"], int(e["head_dim"]), e["bucket"])
            bad = [n for n in list(e["order"]) + list(e.get("rejected", {})) if n not in RANKABLE]
        except (KeyError, TypeError) as err:
            raise ValueError(f"dispatch table {origin}: malformed entry {e!r} ({err})") from None
        if bad:
            raise ValueError(f"dispatch table {origin}: entry {key} names {bad}, not in {RANKABLE}")
        out[key] = e
    return out


def load_table(path: Optional[str] = None) -> dict:
    """{TableKey: entry} of the table file (default: $KERNELS_PALLAS_DISPATCH_TABLE, else the
    committed dispatch_table.json); a missing file is an empty table."""
    path = path or os.environ.get(TABLE_ENV) or TABLE_PATH
    with _table_lock:
        if path not in _table_cache:
            try:
                with open(path) as fh:
                    raw = json.load(fh)
            except FileNotFoundError:
                raw = {"format": TABLE_FORMAT, "entries": []}
            _table_cache[path] = _index(raw, path)
        return _table_cache[path]


@contextlib.contextmanager
def use_table(table: Mapping) -> Iterator[None]:
    """Dispatch consults `table` (a table as the JSON file holds it) inside the block (tests, and
    trying a fresh benchmark's table before committing it)."""
    _override.append(_index(table, "given to use_table"))
    try:
        yield
    finally:
        _override.pop()


def lookup(key: TableKey) -> Optional[Mapping]:
    table = _override[-1] if _override else load_table()
    return table.get(key)


# --- plans ---------------------------------------------------------------------------------------

def precondition(name: str, dtype, device=None) -> Optional[str]:
    """Why `name` cannot run on `device` for `dtype` in the static default order, or None. Only
    for candidates nothing has measured: a table entry was measured on the device itself."""
    if name == "pallas_mosaic_gpu":
        device = device or jax.devices()[0]
        cc = str(getattr(device, "compute_capability", "") or "")
        if device.platform != "gpu" or not cc.startswith("9."):
            return (f"pallas_mosaic_gpu's kernels are written for Hopper (sm90); this device is "
                    f"{device.device_kind!r} (compute capability {cc or 'none'})")
        if dtype is not None and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            return f"pallas_mosaic_gpu takes bfloat16 and float16, not {jnp.dtype(dtype).name}"
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """The candidates implementation=None tries, in order, and where that order came from."""
    candidates: tuple[str, ...]
    reason: str
    key: Optional[TableKey] = None
    entry: Optional[Mapping] = None              # the table entry used, if any
    dropped: tuple[tuple[str, str], ...] = ()    # (name, why) left out before trying anything


def _measured(entry: Mapping) -> str:
    ms = entry.get("ms", {}).get(entry.get("ranked_by", ""), {})
    times = ", ".join(f"{n} {ms[n]:.4g} ms" if n in ms else n for n in entry["order"])
    return f"{entry.get('ranked_by', '?')}: {times or 'nothing ranked'}"


def plan(default: Sequence[str], available: Collection[str], key: Optional[TableKey] = None,
         platform: Optional[str] = None, device=None) -> Plan:
    """The order implementation=None tries: `key`'s table entry (its ranking, then the default
    order's unmeasured names, without those it rejects), else `default` minus failed
    preconditions (checked on `device`, default jax.devices()[0]); only names in `available`;
    nothing after 'xla', which takes every valid input."""
    platform = platform or jax.default_backend()
    entry = lookup(key) if key is not None else None
    dropped = []
    if entry is not None:
        rejected = entry.get("rejected", {})
        ranked = [n for n in entry["order"] if n in available]
        rest = []
        for n in default:
            if n not in available or n in ranked:
                continue
            why = (f"rejected by the table: {rejected[n]}" if n in rejected else
                   precondition(n, key.dtype, device))  # unmeasured here: the static checks apply
            if why:
                dropped.append((n, why))
            else:
                rest.append(n)
        order = ranked + rest
        sources = ", ".join(entry.get("sources", ())) or "unknown source"
        reason = f"dispatch table entry for {key} (from {sources}); measured fastest first, {_measured(entry)}"
        if rest:
            reason += f"; then the default order's unmeasured {rest}"
    else:
        order = []
        for n in default:
            if n not in available:
                continue
            why = precondition(n, key.dtype if key else None, device)
            if why:
                dropped.append((n, why))
            else:
                order.append(n)
        where = f"no dispatch table entry for {key}" if key else "this op has no dispatch table"
        reason = f"{where}: the static default order for {platform} {tuple(default)}"
    if "xla" in order:
        cut = order.index("xla") + 1
        dropped += [(n, "after xla, which takes every valid input") for n in order[cut:]]
        order = order[:cut]
    else:
        order.append("xla")
    return Plan(tuple(order), reason, key, entry, tuple(dropped))


# --- running and explaining ----------------------------------------------------------------------

@dataclasses.dataclass
class Explanation:
    """What a call does: the implementation it runs (None if it raises) and why."""
    op: str
    implementation: Optional[str] = None
    named: bool = False
    reason: str = ""
    key: Optional[TableKey] = None
    entry: Optional[Mapping] = None
    candidates: list = dataclasses.field(default_factory=list)  # (name, outcome, detail)
    error: Optional[str] = None

    def skipped(self) -> dict:
        return {n: d for n, o, d in self.candidates if o in ("skipped", "dropped")}

    def __str__(self):
        head = (f"{self.op}: {self.implementation}" if self.implementation else
                f"{self.op}: raises {self.error}")
        lines = [head, f"  why: {self.reason}"]
        for n, outcome, detail in self.candidates:
            lines.append(f"  {n}: {outcome}" + (f" ({detail})" if detail else ""))
        return "\n".join(lines)


_local = threading.local()


@contextlib.contextmanager
def _deciding(op: str) -> Iterator[Optional[Explanation]]:
    """An Explanation to fill when this is the outermost decision under explain(), else None
    (a kernel package dispatching inside an op's implementation is not the op's decision)."""
    depth = getattr(_local, "depth", 0)
    recording = getattr(_local, "recording", None)
    record = Explanation(op) if depth == 0 and recording is not None else None
    _local.depth = depth + 1
    try:
        yield record
    finally:
        _local.depth = depth
        if record is not None:
            recording.append(record)


def _note(record, *fields):
    if record is not None:
        record.candidates.append(fields)


def run(op: str, implementation: Optional[str], make_plan: Callable[[], Plan],
        get: Callable[[str], Callable[..., Any]], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """get(implementation)(*args, **kwargs), or with None the first of make_plan()'s candidates
    that takes the inputs."""
    if implementation is not None:
        with _deciding(op) as record:
            if record is not None:
                record.implementation, record.named = implementation, True
                record.reason = "named by the caller: used as asked, never replaced"
            try:
                return get(implementation)(*args, **kwargs)
            except Exception as e:
                if record is not None:
                    record.implementation, record.error = None, f"{type(e).__name__}: {e}"
                raise
    p = make_plan()
    with _deciding(op) as record:
        if record is not None:
            record.reason, record.key, record.entry = p.reason, p.key, p.entry
            record.candidates += [(n, "dropped", why) for n, why in p.dropped]
        for name in p.candidates:
            try:
                out = get(name)(*args, **kwargs)
            except Unavailable as e:
                _note(record, name, "skipped", str(e))
                continue
            except NotImplementedError as e:
                _note(record, name, "skipped", f"NotImplementedError: {e}")
                continue
            except Exception as e:
                if record is not None:
                    record.error = f"{name} raised {type(e).__name__}: {e}"
                raise
            _note(record, name, "chosen", "")
            if record is not None:
                record.implementation = name
            return out
    raise AssertionError(f"unreachable: {op}'s xla implementation takes every valid input")


def dispatch(package: str, implementations: Sequence[str], preference: Mapping[str, Sequence[str]],
             implementation: Optional[str], *args: Any, table_key: Optional[TableKey] = None,
             **kwargs: Any) -> Any:
    """`implementation`'s attention(*args, **kwargs), or with None the plan's first candidate that
    takes the inputs (the table entry for `table_key`, else the platform's `preference`)."""
    if implementation is not None and implementation not in implementations:
        raise ValueError(f"unknown implementation {implementation!r}; "
                         f"choose from {list(implementations)} or None")
    platform = jax.default_backend()
    op = table_key.op if table_key is not None else package.rsplit(".", 1)[-1]
    return run(op, implementation,
               lambda: plan(preference.get(platform, ("xla",)), implementations, table_key, platform),
               lambda name: module(package, name).attention, args, kwargs)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def explain(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Explanation:
    """Which implementation fn(*args, **kwargs) would run and why, found by tracing the call with
    jax.eval_shape (no kernel runs; arrays may be jax.ShapeDtypeStruct). A named implementation
    that would raise gives an Explanation with `error`; an input error the call would raise
    before choosing anything is raised."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    where = [i for i, x in enumerate(leaves) if _is_array(x)]

    def traced(*arrays):
        full = list(leaves)
        for i, x in zip(where, arrays):
            full[i] = x
        a, kw = jax.tree.unflatten(tree, full)
        return fn(*a, **kw)

    previous, _local.recording = getattr(_local, "recording", None), []
    try:
        try:
            jax.eval_shape(traced, *[leaves[i] for i in where])
        except Exception:
            if not (_local.recording and _local.recording[0].error):
                raise
        if not _local.recording:
            raise ValueError(f"{getattr(fn, '__name__', fn)!r} made no dispatch decision")
        return _local.recording[0]
    finally:
        _local.recording = previous
