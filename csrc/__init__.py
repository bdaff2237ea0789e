"""The native kernels' C++/CUDA sources, shipped as package data (``optcompile.csrc``).

``optcompile.lowering.backends.native_ops`` compiles them on first use with
``torch.utils.cpp_extension``, or ahead of time with ``python -m optcompile build-native``.
"""
