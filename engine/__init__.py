"""The machinery behind train.py and test.py (layout: docs/layout.md).

Imported before torch by the scripts: OpenMP reads OMP_WAIT_POLICY once, when torch loads it. PASSIVE makes
threads that wait for work sleep instead of spinning: on two cores that other jobs also use, two spinning
threads made an epoch of the digits 20x slower; idle, it costs nothing measurable (docs/speed.md).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
