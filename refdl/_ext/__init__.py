"""Compiled kernels (Cython): im2col/col2im and max/avg pooling. Use them via refdl.ext."""
