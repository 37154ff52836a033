"""Triton kernels. Imported only through varpo_kernels.dispatch.triton_module (lazily): importing
them on a machine without a GPU fails unless TRITON_INTERPRET=1."""
