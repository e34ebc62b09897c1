"""Server-side federation math: data partition, client sampling and seeds, aggregation, round schedules.

Everything here is pure (tensors, lists and numbers in, the same out) so the simulator and the Flower
apps share it and tests can check it by hand.
"""
