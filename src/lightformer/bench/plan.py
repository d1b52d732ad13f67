"""Turning a ``Grid`` into cells, and deciding before any subprocess whether a cell can run at all.

Plugins (modules that register extra mixers, e.g. test-only ones) come from ``Grid.plugins`` / ``--plugin`` and
from the environment variable ``LIGHTFORMER_PLUGINS`` (comma-separated module names); the parent and every cell
subprocess import them, so both see the same registry.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterable

from .defaults import bench_options
from .grid import LIGHTFORMER, Cell, Grid, is_model_mode
from .peers import PEERS, SDPA, get_peer

PLUGINS_ENV = "LIGHTFORMER_PLUGINS"


def load_plugins(names: Iterable[str] = ()) -> list[str]:
    """Import ``names`` and the modules listed in ``$LIGHTFORMER_PLUGINS``; returns the modules imported.

    Raises:
        ModuleNotFoundError: a plugin module does not exist.
    """
    env = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    loaded = []
    for name in [*names, *env]:
        importlib.import_module(name)
        loaded.append(name)
    return loaded


def capability_reason(cell: Cell, max_len: int | None = None) -> str | None:
    """Why ``cell`` cannot be honoured by its implementation's declared capabilities (``None`` = it can).

    ``max_len`` overrides ``capabilities.max_len`` when the built mixer knows a config-dependent limit. A model
    cell is judged by the capabilities of its stack (``models.architecture.meet`` over its layers' mixers).
    """
    if cell.compile and cell.mode == "decode":
        return "compile applies to fwd, fwd+bwd and the model modes; decode steps run eagerly"
    if cell.impl != LIGHTFORMER:
        peer = get_peer(cell.impl)
        if cell.mode == "decode":
            return f"peer {peer.name!r} has no decode adapter"
        return peer.unsupported(cell.options, cell.seq_len, cell.dim, cell.heads, cell.causal)
    from lightformer import MIXERS

    if is_model_mode(cell.mode):
        from .model_cell import architecture_caps

        caps = architecture_caps(cell.mixer, cell.num_layers)
    else:
        caps = MIXERS.get(cell.mixer).capabilities
    if cell.causal and not caps.causal:
        return f"causal requested but {cell.mixer!r} cannot be causal (capabilities.causal=False)"
    if not cell.causal and not caps.non_causal:
        return f"non-causal requested but {cell.mixer!r} is causal-only (capabilities.non_causal=False)"
    if cell.mode == "decode" and not caps.decode:
        return f"decode requested but {cell.mixer!r} has no decode path (capabilities.decode=False)"
    if cell.mode == "decode" and not cell.causal:
        return "decode needs a causal cell (add --causal)"
    if cell.compile and caps.compile:
        return f"compile requested but {cell.mixer!r} declares it cannot be compiled: {caps.compile}"
    limit = max_len if max_len is not None else caps.max_len
    if limit is not None and cell.seq_len > limit:
        return f"T={cell.seq_len} is above {cell.mixer!r}'s max_len={limit}"
    return None


def select_peers(peers: str | list[str], mixers: list[str]) -> list[str]:
    """Peer names for ``--peers``: ``"all"`` = SDPA plus every peer whose mixer is in ``mixers``; ``"none"``;
    or explicit names (comma-separated string or list). Raises ValueError for an unknown peer."""
    if isinstance(peers, str):
        if peers == "all":
            return [SDPA] + [p.name for p in PEERS.values() if p.name != SDPA and p.mixer in mixers]
        if peers == "none":
            return []
        peers = [p.strip() for p in peers.split(",") if p.strip()]
    for name in peers:
        get_peer(name)
    return list(dict.fromkeys(peers))


def _options_for(grid: Grid, mixer: str) -> dict[str, Any]:
    from lightformer import MIXERS

    overrides = grid.options.get(mixer, {})
    if mixer not in MIXERS:
        return bench_options(mixer, overrides)
    valid = MIXERS.options(mixer)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"--option {mixer}.{unknown[0]}: unknown option; {mixer!r} accepts {', '.join(valid)}")
    return bench_options(mixer, overrides, valid)


def _architectures(grid: Grid) -> list[str]:
    """The architectures of the model modes: ``grid.mixers`` (default every mixer and every schedule preset), the
    all-softmax baseline first unless ``peers`` is ``"none"``.

    Raises:
        ValueError: a name that is neither a registered mixer nor a schedule preset (naming ``--mixers``)."""
    from lightformer import MIXERS
    from lightformer.models.architecture import architecture_mixers
    from lightformer.models.schedule import SCHEDULE_PRESETS

    from .model_cell import MODEL_BASELINE

    names = list(grid.mixers) if grid.mixers else [*MIXERS.names(), *SCHEDULE_PRESETS]
    modes = ",".join(m for m in grid.modes if is_model_mode(m))
    for name in names:
        try:
            architecture_mixers(name, grid.num_layers)
        except ValueError as exc:
            raise ValueError(f"--mixers {name!r} (--modes {modes} take architectures): {exc}") from None
    baseline = [] if grid.peers == "none" else [MODEL_BASELINE]
    return list(dict.fromkeys([*baseline, *names]))


def expand(grid: Grid) -> list[Cell]:
    """Every cell of ``grid``, grouped by shape so an implementation and its baselines run back to back. In a
    model mode the cells are the architectures of ``_architectures``, each with one option table per distinct
    mixer (the mixer cells' options).

    Raises:
        ValueError: an unregistered mixer or unknown peer, a schedule preset in a mixer mode, a name that is no
            architecture in a model mode; TypeError: an unknown mixer option.
    """
    from lightformer import MIXERS
    from lightformer.models.schedule import SCHEDULE_PRESETS

    from .model_cell import distinct_mixers

    grid.validate()
    load_plugins(grid.plugins)
    mixer_modes = [m for m in grid.modes if not is_model_mode(m)]
    model_modes = [m for m in grid.modes if is_model_mode(m)]
    mixers = list(grid.mixers) if grid.mixers else MIXERS.names()
    if mixer_modes:
        for m in mixers:
            if m in SCHEDULE_PRESETS and m not in MIXERS:
                raise ValueError(f"--mixers {m!r} is a schedule preset, measured only as a whole model "
                                 f"(--modes {','.join(mixer_modes)} measure single mixers; add --modes model-fwd+bwd "
                                 "and leave the mixer modes out)")
            MIXERS.get(m)  # ValueError listing the registered ones
    else:
        mixers = []
    peers = select_peers(grid.peers, mixers) if mixer_modes else []
    options = {m: _options_for(grid, m) for m in {*mixers, *(get_peer(p).mixer for p in peers)}}
    architectures = _architectures(grid) if model_modes else []
    arch_options = {a: {m: _options_for(grid, m) for m in distinct_mixers(a, grid.num_layers)}
                    for a in architectures}
    cells = []
    for seq_len in sorted(set(grid.seq_lens)):
        for dtype in grid.dtypes:
            for mode in grid.modes:
                for causal in dict.fromkeys(grid.causal):
                    for batch in grid.batches:
                        for compiled in dict.fromkeys(grid.compile):
                            shape = dict(seq_len=seq_len, batch=batch, dtype=dtype, mode=mode, causal=bool(causal),
                                         compile=compiled)
                            if is_model_mode(mode):
                                cells += [grid.cell(LIGHTFORMER, a, arch_options[a], **shape) for a in architectures]
                                continue
                            for peer in peers:
                                mixer = get_peer(peer).mixer
                                opts = {} if peer == SDPA else options[mixer]
                                cells.append(grid.cell(peer, mixer, opts, **shape))
                            for mixer in mixers:
                                cells.append(grid.cell(LIGHTFORMER, mixer, options[mixer], **shape))
    return cells
