"""What ships into run images: the runner (`nbcontainer-run`, and `train` for SageMaker,
:mod:`.main`) and everything it and the host agree on.

Standard library only: a run image's Python may have nothing else. The host imports
these modules too (the container contract, the error root, serialization, the
signature of outputs, the snapshot format, parameter encoding); nothing here imports
the host side (tests/unit/test_layout.py checks it in a fresh interpreter).
"""
