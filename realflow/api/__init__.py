"""Contracts of realflow: data, graphs, interfaces, datasets and configs.

Pure Python and torch; this package imports nothing else of realflow, opens no
sockets and starts no processes (enforced by tests/unit/test_architecture.py).
"""
