"""Generation core: plan (id -> label, seed, key, shard), ImageGenerator, filter stage, shard writer helpers,
manifest and verify. Pure: no ray, no mlflow; the Ray Data pipeline in ``ltaug.distributed`` wraps these."""
from .filter_stage import CATEGORY_NAMES, FilterSpec, FilterStage
from .generator import ImageGenerator, checkpoint_digest, generation_settings
from .manifest import (PlanConflictError, build_manifest, collect_stats, prepare_output, read_plan, read_rounds,
                       scan_output, write_manifest)
from .plan import GenerationPlan, budget_from_counts, make_key, parse_key, refill_seed, row_seeds
from .shards import (ShardFailedError, ShardProducer, ShardStats, build_tar, produce_with_retries, publish_shard,
                     read_stats, samples_per_shard)
from .verify import ShardCheck, VerifyReport, verify

__all__ = ["GenerationPlan", "budget_from_counts", "make_key", "parse_key", "row_seeds", "ImageGenerator",
           "generation_settings", "checkpoint_digest", "FilterStage", "FilterSpec", "CATEGORY_NAMES", "ShardProducer",
           "ShardStats", "build_tar", "publish_shard", "read_stats", "PlanConflictError", "VerifyReport",
           "build_manifest", "collect_stats", "prepare_output", "read_plan", "verify", "write_manifest", "read_rounds",
           "scan_output", "refill_seed", "ShardFailedError", "produce_with_retries", "samples_per_shard", "ShardCheck"]
