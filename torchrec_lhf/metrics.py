"""The metrics production users read, through ``torchrec.metrics``, for a single-task CTR model.

Shape legend: ``B`` the examples of one batch on this rank.

:func:`ctr_metric_module` builds TorchRec's :class:`RecMetricModule` with normalized entropy
(NE), calibration and AUC for one binary task; :func:`update_ctr_metrics` feeds it a batch
of logits and labels, and :func:`compute_ctr_metrics` reduces the states over all ranks
(``compute()`` all-gathers them through torchmetrics, and ``compute_on_all_ranks`` makes
every rank compute the same values) and returns a flat dict:

- ``ne``: the mean logloss over the entropy of the base rate ``p`` (mean label),
  ``-(p log p + (1 - p) log(1 - p))``; below 1 means better than predicting ``p``.
- ``calibration``: ``sum(predictions) / sum(labels)``; 1 is calibrated.
- ``rec_auc``: TorchRec's AUC over the window (ties in the predictions are broken by sort
  order, unlike ``torchmetrics``' BinaryAUROC, so the two may differ slightly).

NE and calibration are lifetime values (every example since the module was built); AUC
keeps the last ``window_size`` examples of all ranks together, so size the window to the
evaluated split. :func:`global_qps` is the training throughput, the same on every rank.

Example::

    >>> import torch
    >>> metrics = ctr_metric_module(4, window_size=4)
    >>> update_ctr_metrics(
    ...     metrics, torch.logit(torch.tensor([0.8, 0.3, 0.6, 0.5])), torch.tensor([1, 0, 1, 0])
    ... )
    >>> round(compute_ctr_metrics(metrics)["calibration"], 6)
    1.1
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import (
    MetricsConfig,
    RecMetricDef,
    RecMetricEnum,
    RecTaskInfo,
)
from torchrec.metrics.metrics_namespace import (
    MetricName,
    MetricNamespace,
    MetricPrefix,
    compose_metric_key,
)

CTR_TASK = RecTaskInfo(
    name="ctr", label_name="label", prediction_name="prediction", weight_name="weight"
)
"""The single task: model output keys ``label``, ``prediction`` (a probability), ``weight``."""

_FLAT_KEYS = {
    "ne": compose_metric_key(
        MetricNamespace.NE, CTR_TASK.name, MetricName.NE, MetricPrefix.LIFETIME
    ),
    "calibration": compose_metric_key(
        MetricNamespace.CALIBRATION,
        CTR_TASK.name,
        MetricName.CALIBRATION,
        MetricPrefix.LIFETIME,
    ),
    # NOTE: TorchRec's AUC has no lifetime value; the window must cover the split
    "rec_auc": compose_metric_key(
        MetricNamespace.AUC, CTR_TASK.name, MetricName.AUC, MetricPrefix.WINDOW
    ),
}
CTR_METRIC_KEYS = tuple(_FLAT_KEYS)
"""The keys of :func:`compute_ctr_metrics`."""


def ctr_metric_module(
    batch_size: int,
    *,
    window_size: int,
    world_size: int = 1,
    rank: int = 0,
    device: torch.device | None = None,
) -> RecMetricModule:
    """NE, calibration and AUC of one binary task, synced over the default process group.

    Args:
        batch_size: the most examples of one :func:`update_ctr_metrics` call on a rank.
        window_size: the examples of all ranks together that AUC keeps (the last ones);
            at least ``batch_size * world_size``.
        world_size: ranks that update the module (all of the default group).
        rank: this rank.
        device: where the states live (default CPU).

    Raises:
        ValueError: ``window_size`` is below ``batch_size * world_size``.
    """
    if window_size < batch_size * world_size:
        raise ValueError(
            f"window_size must be at least batch_size * world_size = {batch_size * world_size}, "
            f"got {window_size}"
        )
    metric_def = RecMetricDef(rec_task_indices=[0], window_size=window_size)
    config = MetricsConfig(
        rec_tasks=[CTR_TASK],
        rec_metrics={
            RecMetricEnum.NE: metric_def,
            RecMetricEnum.CALIBRATION: metric_def,
            RecMetricEnum.AUC: metric_def,
        },
        # NOTE: the default computes on rank 0 only and returns nothing elsewhere
        compute_on_all_ranks=True,
    )
    return generate_metric_module(
        RecMetricModule,
        metrics_config=config,
        batch_size=batch_size,
        world_size=world_size,
        my_rank=rank,
        state_metrics_mapping={},
        device=device if device is not None else torch.device("cpu"),
    )


def update_ctr_metrics(
    module: RecMetricModule, logits_B: torch.Tensor, labels_B: torch.Tensor
) -> None:
    """Add a batch: ``logits_B`` (before the sigmoid) and 0 / 1 ``labels_B``, shape ``(B,)``."""
    if logits_B.numel() == 0:
        return
    predictions_B = torch.sigmoid(logits_B.detach().float().reshape(-1))
    module.update(
        {
            CTR_TASK.prediction_name: predictions_B,
            CTR_TASK.label_name: labels_B.detach().float().reshape(-1),
            CTR_TASK.weight_name: torch.ones_like(predictions_B),
        }
    )


def compute_ctr_metrics(module: RecMetricModule) -> dict[str, float]:
    """``{"ne", "calibration", "rec_auc"}`` over all ranks (collective: call on every rank)."""
    computed = module.compute()
    return {name: float(computed[key]) for name, key in _FLAT_KEYS.items()}


def global_qps(num_samples: int, seconds: float, *, device: torch.device | None = None) -> float:
    """Samples per second of all ranks together, ``num_samples`` (all ranks) over the slowest
    rank's ``seconds``: the same on every rank (collective when a process group is up).

    NOTE: not TorchRec's ``ThroughputMetric``, which times the gaps between its
    ``update()`` calls (the validation between epochs would count as training) and gives
    each rank its own value.

    Returns:
        0.0 when no rank spent any time (nothing trained).
    """
    seconds_1 = torch.tensor([seconds], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(seconds_1, op=dist.ReduceOp.MAX)
    slowest = float(seconds_1)
    return num_samples / slowest if slowest > 0 else 0.0
