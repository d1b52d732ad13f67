"""Kernelized attention with relative positional encoding (Luo et al. 2021): the dense oracle (``naive``) and the
FFT fast path (``fft``)."""
