"""What a learned head intervention is compared with: prompting, function vectors, ICV, PEFT.

Each baseline is its own module; all are scored with the same metrics
(:mod:`headsteer.evaluate`) on the same seeded train/test splits.
"""
