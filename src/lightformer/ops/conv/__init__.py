"""Depthwise 1-D convolution over time: the oracle (``naive``) and the fast path (``depthwise``)."""
