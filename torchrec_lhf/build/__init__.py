"""The hash-build step: teacher embeddings + access counts -> HashPlan."""

from torchrec_lhf.build.plan_builder import build_plan, build_table_hash, split_rows

__all__ = ["build_plan", "build_table_hash", "split_rows"]
