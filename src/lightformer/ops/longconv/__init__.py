"""Long convolutions and LTI systems (S4D, H3, Hyena, LMU): the O(T²) convolution and recurrence oracles
(``naive``), the FFT convolution (``fft``) and the kernel generators (``kernels``: the S4D Vandermonde kernel, the
Legendre impulse response, Hyena's positional embedding and modulation)."""
