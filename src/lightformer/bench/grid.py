"""The declarative benchmark grid: implementations × options × T × batch × dtype × mode × causal.

A ``Grid`` expands into ``Cell`` s; each cell is measured in its own subprocess (``lightformer.bench.cell``). A
cell's identity (``Cell.key``) is (impl, mixer, options, seq_len, batch, dim, heads, dtype, mode, causal, threads);
the JSON-lines results are resumed by that key (and ``num_layers`` for whole-model cells, ``compile`` for compiled
cells, ``device`` off the CPU). A grid comes from CLI flags and/or a TOML file, e.g.::

    mixers = ["softmax", "sliding_window"]     # omitted = every registered mixer
    seq_lens = [512, 1024]
    batch = [1]
    dim = 512
    heads = 8
    dtypes = ["fp32", "bf16"]
    modes = ["fwd+bwd"]                        # fwd | fwd+bwd | decode | model-fwd | model-fwd+bwd
    causal = [true]
    peers = "all"                              # "all" | "none" | ["sdpa", "local_attention"]
    threads = 2
    compile = [false, true]                    # eager and torch.compile'd cells side by side (--compile)
    device = "cpu"                             # cpu | cuda | auto (cuda when available)
    [options.sliding_window]
    window = 128

Model modes (``model-fwd``, ``model-fwd+bwd``) measure a whole backbone instead of one mixer: each name of
``mixers`` is then an architecture (a mixer, stacked in every layer, or a schedule preset such as ``masformer``),
built with ``num_layers`` layers (``layers = 4`` in a grid file, ``--layers``); see ``lightformer.bench.model_cell``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: ``amp-bf16``: fp32 weights and inputs, the run under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (mixed
#: precision, as in training); the others cast the module and the input to that dtype.
DTYPES = ("fp32", "bf16", "fp16", "fp64", "amp-bf16")
MODES = ("fwd", "fwd+bwd", "decode")
#: Whole-model modes: forward / forward+backward of a ``num_layers``-layer backbone of one architecture.
MODEL_MODES = ("model-fwd", "model-fwd+bwd")
#: ``impl`` of a cell that runs a lightformer mixer (peers use their own name).
LIGHTFORMER = "lightformer"
#: where a cell runs (``auto`` = ``cuda`` when torch sees a CUDA device, else ``cpu``; resolved by ``Grid.validate``)
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str) -> str:
    """``"cpu"``, ``"cuda"``, or for ``"auto"`` whichever this torch can use.

    Raises:
        ValueError: an unknown device, or ``"cuda"`` without a CUDA device (the message names ``--device``).
    """
    import torch

    if device not in DEVICES:
        raise ValueError(f"--device {device!r}: choose from {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return device


def default_threads() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_model_mode(mode: str) -> bool:
    """Whether ``mode`` measures a whole model (``model-fwd``, ``model-fwd+bwd``)."""
    return mode in MODEL_MODES


def run_mode(mode: str) -> str:
    """What one timed run does: ``fwd``, ``fwd+bwd`` or ``decode`` (``model-fwd+bwd`` -> ``fwd+bwd``)."""
    return mode[len("model-"):] if is_model_mode(mode) else mode


def parse_value(text: str) -> Any:
    """``"256"`` -> 256, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"null"`` -> None, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_option(text: str) -> tuple[str, str, Any]:
    """``"sliding_window.window=256"`` -> ``("sliding_window", "window", 256)``.

    Raises:
        ValueError: not of the form ``mixer.option=value``.
    """
    lhs, sep, value = text.partition("=")
    mixer, dot, option = lhs.strip().partition(".")
    if not sep or not dot or not mixer or not option:
        raise ValueError(f"--option {text!r}: expected mixer.option=value, e.g. sliding_window.window=256")
    return mixer, option, parse_value(value.strip())


@dataclass(frozen=True)
class Cell:
    """One measurement: one implementation at one shape, run in one subprocess.

    Attributes:
        impl: ``"lightformer"`` for a registered mixer, else a peer name (``"sdpa"``, ``"local_attention"`` ...).
        mixer: the lightformer mixer measured, or the one a peer is the baseline for; in a model mode the
            architecture (a mixer or a schedule preset).
        options: mixer options (the ``"T"`` sentinel is resolved in the subprocess); in a model mode one table per
            distinct mixer of the architecture, ``{"sliding_window": {"window": 256}, "softmax": {}}``.
        seq_len: T, tokens per sequence (for ``decode``: the context prefilled before the timed tokens).
        batch, dim, heads: B, D (model width), H.
        dtype: ``fp32 | bf16 | fp16 | fp64 | amp-bf16`` (see ``DTYPES``); mode: ``fwd | fwd+bwd | decode`` or a
            model mode ``model-fwd | model-fwd+bwd``; causal: causal masking.
        threads: torch intra-op threads.
        warmup, repeats: untimed and timed runs (time = median of the timed runs).
        timeout_s: wall-clock limit of the subprocess (s). max_memory_mib: address-space headroom (MiB) given to
            the subprocess after its imports, ``None`` = unlimited.
        gate_len: T of the correctness gate (capped at ``seq_len``); gate_tol: max abs error allowed in float64.
        plugins: modules the subprocess imports first (they may register mixers).
        num_layers: layers of the model in a model mode; ``None`` for mixer cells.
        compile: run the module through ``torch.compile`` (default inductor backend; compilation happens in the
            warm-up and is recorded as ``compile_s``, not timed).
        device: ``"cpu"`` or ``"cuda"`` (time with ``torch.cuda.synchronize``, memory by ``max_memory_allocated``).
    """

    impl: str
    mixer: str
    options: dict[str, Any]
    seq_len: int
    batch: int
    dim: int
    heads: int
    dtype: str
    mode: str
    causal: bool
    threads: int
    warmup: int = 1
    repeats: int = 3
    timeout_s: float = 600.0
    max_memory_mib: float | None = None
    gate_len: int = 64
    gate_tol: float = 1e-6
    plugins: tuple[str, ...] = ()
    num_layers: int | None = None
    compile: bool = False
    device: str = "cpu"

    @property
    def key(self) -> str:
        """Canonical JSON of the identifying fields (resume/compare key)."""
        return cell_key(dataclasses.asdict(self))

    @property
    def label(self) -> str:
        return self.mixer if self.impl == LIGHTFORMER else self.impl

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Cell":
        data = json.loads(text)
        data["plugins"] = tuple(data.get("plugins", ()))
        return cls(**data)


#: ``num_layers`` is ``None`` in mixer cells and in records written before model cells existed, so their keys agree
KEY_FIELDS = ("impl", "mixer", "options", "seq_len", "batch", "dim", "heads", "dtype", "mode", "causal", "threads",
              "num_layers")
#: identifying fields added later, with their default: part of the key only when set to something else, so the
#: records written before them keep their keys (and resume)
OPTIONAL_KEY_FIELDS = {"compile": False, "device": "cpu"}


def cell_key(record: dict[str, Any]) -> str:
    """The identity of a cell or record as canonical JSON over ``KEY_FIELDS`` (and ``OPTIONAL_KEY_FIELDS`` that
    are not at their default)."""
    key = {k: record.get(k) for k in KEY_FIELDS}
    for k, default in OPTIONAL_KEY_FIELDS.items():
        if record.get(k) not in (None, default):
            key[k] = record[k]
    return json.dumps(key, sort_keys=True)


@dataclass
class Grid:
    """What to measure. ``mixers=None`` means every registered mixer; ``peers`` is ``"all"`` (every peer whose
    baseline mixer is in the grid, SDPA always), ``"none"``, or a list of peer names. ``options`` maps a mixer
    name to option overrides on top of ``defaults.BENCH_DEFAULTS``. ``num_layers``: layers of the model-mode
    cells. ``compile``: one cell per value for every implementation and shape (``[False, True]``: eager and compiled
    side by side). ``device``: ``cpu | cuda | auto`` (``validate`` resolves ``auto``). Other fields as in ``Cell``.

    Raises (``validate``): ValueError on an unknown dtype/mode/device, a non-positive size, ``cuda`` without a CUDA
    device, or an empty ``compile``.
    """

    mixers: list[str] | None = None
    seq_lens: list[int] = field(default_factory=lambda: [512, 1024])
    batches: list[int] = field(default_factory=lambda: [1])
    dim: int = 512
    heads: int = 8
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["fwd+bwd"])
    causal: list[bool] = field(default_factory=lambda: [False])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: str | list[str] = "all"
    threads: int = field(default_factory=default_threads)
    warmup: int = 1
    repeats: int = 3
    timeout_s: float = 600.0
    max_memory_mib: float | None = None
    gate_len: int = 64
    gate_tol: float = 1e-6
    plugins: list[str] = field(default_factory=list)
    num_layers: int = 4
    compile: list[bool] = field(default_factory=lambda: [False])
    device: str = "cpu"

    def validate(self) -> "Grid":
        for d in self.dtypes:
            if d not in DTYPES:
                raise ValueError(f"dtype {d!r} unknown; choose from {', '.join(DTYPES)}")
        for m in self.modes:
            if m not in MODES + MODEL_MODES:
                raise ValueError(f"mode {m!r} unknown; choose from {', '.join(MODES + MODEL_MODES)}")
        for name, values in (("seq_lens", self.seq_lens), ("batches", self.batches),
                             ("dim", [self.dim]), ("heads", [self.heads]), ("threads", [self.threads]),
                             ("repeats", [self.repeats]), ("num_layers (--layers)", [self.num_layers])):
            if not values or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"{name} must be positive ints, got {values!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive seconds, got {self.timeout_s}")
        if not self.compile or any(not isinstance(c, bool) for c in self.compile):
            raise ValueError(f"compile must be a non-empty list of true/false, got {self.compile!r}")
        self.device = resolve_device(self.device)
        return self

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> "Grid":
        """Read a grid file (see the module docstring). Raises ValueError on an unknown key."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Grid":
        aliases = {"seq_len": "seq_lens", "batch": "batches", "dtype": "dtypes", "mode": "modes",
                   "mixer": "mixers", "timeout": "timeout_s", "max_memory": "max_memory_mib",
                   "plugin": "plugins", "layers": "num_layers"}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            key = aliases.get(key, key)
            if key not in names:
                raise ValueError(f"unknown grid key {key!r}; valid keys: {', '.join(sorted(names))}")
            if key in ("seq_lens", "batches", "dtypes", "modes", "causal", "mixers", "plugins", "compile") and \
                    not isinstance(value, list):
                value = [value]
            if key == "max_memory_mib" and isinstance(value, str):
                from .units import parse_size_mib
                value = parse_size_mib(value)
            kwargs[key] = value
        return cls(**kwargs).validate()

    def cell(self, impl: str, mixer: str, options: dict[str, Any], seq_len: int, batch: int, dtype: str,
             mode: str, causal: bool, compile: bool = False) -> Cell:
        return Cell(impl=impl, mixer=mixer, options=options, seq_len=seq_len, batch=batch, dim=self.dim,
                    heads=self.heads, dtype=dtype, mode=mode, causal=causal, threads=self.threads,
                    warmup=self.warmup, repeats=self.repeats, timeout_s=self.timeout_s,
                    max_memory_mib=self.max_memory_mib, gate_len=self.gate_len, gate_tol=self.gate_tol,
                    plugins=tuple(self.plugins), num_layers=self.num_layers if is_model_mode(mode) else None,
                    compile=compile, device=self.device)
