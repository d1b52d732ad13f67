"""Kernel (linear) attention: feature maps (``features``), the O(T²) oracle (``naive``), the chunked O(T) fast path
(``chunked``), the depthwise convolution of SLAB (``conv``) and the one-token recurrent step (``recurrent``)."""
