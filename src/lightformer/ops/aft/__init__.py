"""Attention Free Transformer (Zhai et al. 2021): the oracle (``naive``) and the fast paths ``full`` (AFT-full,
exp(w) matrix products), ``local`` (AFT-local, blocked band) and ``simple`` (AFT-simple, O(T·d) sums/scan)."""
