"""MetaFormer-family token mixers (Yu et al. 2022: the token mixer is any operator that mixes positions; the
rest of the block is a Transformer's): FNet's Fourier transform, GFNet's global filter, PoolFormer's average pooling
and GCNet's global context pooling.

``naive`` holds the definitions written for reading (the DFT as an explicit matrix product, the pooling as an explicit
loop over the window, the attention pooling as an explicit softmax per position); the fast paths sit beside it with
the same signatures: ``fft`` (FNet, GFNet), ``pool`` (PoolFormer), ``context`` (GCNet, with its chunked causal form).
"""
