"""mLSTM, xLSTM's matrix memory (Beck et al. 2024): the recurrence oracle (``naive``), the chunkwise fast path
(``chunked``) and the one-token step (``recurrent``)."""
