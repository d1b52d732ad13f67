"""The selective scan of Mamba-1 (S6; Gu & Dao 2023): the recurrence oracle (``naive``), the chunked fast path
with a hand-written, recomputing backward (``chunked``) and the one-token step (``recurrent``)."""
