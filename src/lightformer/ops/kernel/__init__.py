"""Kernel (linear) attention: feature maps (``features``), the O(T²) oracle (``naive``), the chunked O(T) fast path
(``chunked``) and the one-token recurrent step (``recurrent``)."""
