"""NeRF head: tri-plane hash field, occupancy-grid ray marching, volume compositing.

Pure-PyTorch reference implementations run everywhere; on CUDA the hot ops (hash-grid encode,
compositing) dispatch to fused Triton kernels in ``synctalk.nerf.kernels``.
"""
