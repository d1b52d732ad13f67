"""Hashing attention (Reformer's angular LSH). ``hashing`` computes the buckets shared by both paths, ``naive`` is
the dense oracle, ``chunked`` the sorted-chunk fast path (same signature as ``naive``)."""
