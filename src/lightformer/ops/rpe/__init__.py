"""Kernelized attention with relative positional encoding (Luo et al. 2021): the dense oracle (``naive``), the dense
fast path for short sequences (``dense``) and the FFT fast path for long ones (``fft``)."""
