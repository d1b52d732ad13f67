"""Peer implementations: what a user would otherwise run, configured to do the same work as a lightformer mixer.

Each peer wraps one public package (installed with ``pip install lightformer[peers]``, imported lazily) and names
the lightformer mixer it is the baseline for. It receives that mixer's bench options so both sides compute the same
thing at the same sizes, projections included. Peers have no oracle: the harness gates them on a finite output of
the right shape. No peer implements ``decode``.

One module per family of peers (``attention.py``, ...); each defines a tuple ``PEERS`` of ``Peer`` adapters, and
this package collects them, so adding a peer is adding it to its family's module (or a new module).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import SDPA, Peer, opt

PEERS: dict[str, Peer] = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: (i.name != "attention", i.name)):
    if _info.name == "base":
        continue
    for _peer in importlib.import_module(f"{__name__}.{_info.name}").PEERS:
        if _peer.name in PEERS:
            raise ValueError(f"peer {_peer.name!r} is defined twice (in {_info.name})")
        PEERS[_peer.name] = _peer


def peer_for(mixer: str) -> list[str]:
    """Names of the peers that are baselines for ``mixer`` (SDPA is the baseline of every mixer)."""
    return [p.name for p in PEERS.values() if p.mixer == mixer]


def get_peer(name: str) -> Peer:
    """Raises ValueError for an unknown peer (the message lists the known ones)."""
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}") from None


__all__ = ["PEERS", "SDPA", "Peer", "get_peer", "opt", "peer_for"]
