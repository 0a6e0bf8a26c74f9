"""Compression methods other than learned hashing, as hash plans, and row budgets.

- :mod:`~torchrec_lhf.compression.registry`: the registry (``register_method``, ``get_method``,
  ``make_plan``); import it through ``methods``, which registers the built-ins.
- :mod:`~torchrec_lhf.compression.methods`: every compression method that produces a hash
  plan (``none``, ``modulo``, ``qr``, ``fbdh``, ``memrec``, ``lhf``) behind one registry.
- :mod:`~torchrec_lhf.compression.baselines`: the hashing trick (``modulo_plan``).
- :mod:`~torchrec_lhf.compression.budget`: how a fraction becomes rows per table and per
  internal table (``allocate_rows``, ``split_rows``).
"""

from torchrec_lhf.compression.budget import BUDGETS, allocate_rows, split_rows

__all__ = ["BUDGETS", "allocate_rows", "split_rows"]
