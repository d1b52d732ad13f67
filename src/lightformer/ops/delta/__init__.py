"""The delta rule and its gated form (DeltaNet, Gated DeltaNet): the recurrence oracle (``naive``), the chunkwise
WY/UT fast path (``chunked``) and the one-token decoding step (``recurrent``)."""
