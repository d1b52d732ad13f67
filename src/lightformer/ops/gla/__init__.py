"""Linear attention with a data-dependent per-key-channel (vector) decay, the state recurrence shared by GLA (Yang
et al. 2024) and RWKV-6 "Finch" (Peng et al. 2024): the recurrence oracle (``naive``), the chunked fast path with
log-space cumulative gates (``chunked``) and the one-token step (``recurrent``)."""
