"""Trainers measured by scripts/bench.py: nnjax, hand-written raw JAX, and the peer frameworks.

Each module offers `make_trainer(model, batch_size, data, lr)`, returning a `Trainer`
(see `common.py`), or raises `PeerUnavailable` with the reason (e.g. not installed).
"""
