"""Token merging (ToMe: Bolya et al. 2023, "Token Merging: Your ViT But Faster", ICLR 2023, arXiv 2210.09461):
bipartite soft matching and size-weighted merging. ``naive`` is the oracle (a plain loop over the rules);
``bipartite`` is the fast path (same signatures, same results)."""
