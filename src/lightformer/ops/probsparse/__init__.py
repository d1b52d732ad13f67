"""ProbSparse self-attention (Informer, Zhou et al. 2021): the query selection and the oracle (``naive``) and the
fast path (``sparse``), which attends only the selected queries."""
