"""Triton kernels of pydistill (installed as ``pydistill.kernels``).

Set ``TRITON_INTERPRET=1`` before importing to run them on the CPU.
"""
