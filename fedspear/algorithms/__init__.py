"""Client-update algorithms: the interface (``base.py``), one class per file, and the registry (``registry.py``).

Importing this package is cheap; ``fedspear.algorithms.registry`` imports the algorithm classes (and torch).
"""
