"""Linear attention with a per-head scalar decay, the state-space duality (SSD) family of Mamba-2 (Dao & Gu 2024)
and RetNet (Sun et al. 2023): the recurrence and the quadratic (parallel) form as oracles (``naive``), the masked
segment sum both forms build their decays from (``segsum``), the chunked fast path with its hand-written backward
(``chunked``) and the one-token step (``recurrent``)."""
