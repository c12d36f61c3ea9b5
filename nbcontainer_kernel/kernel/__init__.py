"""The containerized kernel: the ``nbcontainer-docker`` provisioner, its container options,
kernel images and kernelspecs.

It starts kernels without the magics; nothing here imports :mod:`nbcontainer_kernel.remote`
except the ledger's path, which kernels get mounted.
"""
