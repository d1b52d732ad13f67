"""Reversed attention (Ding et al. 2023, DependencyViT): the oracle (``naive``) and the key-blocked fast path
(``blocked``)."""
