"""The hash-build step: a teacher's embeddings and access counts -> a learned hash plan.

- :mod:`~torchrec_lhf.hash_build.plan_builder`: ``build_plan`` / ``build_table_hash``
  (single process).
- :mod:`~torchrec_lhf.hash_build.job`: the distributed, resumable build job and its
  :class:`~torchrec_lhf.hash_build.config.BuildConfig`.
- :mod:`~torchrec_lhf.hash_build.artifact`: the teacher artifact it reads.
"""

from torchrec_lhf.hash_build.plan_builder import build_plan, build_table_hash

__all__ = ["build_plan", "build_table_hash"]
