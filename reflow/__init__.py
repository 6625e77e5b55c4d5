"""reflow-bench: compare one-shot pruning methods on equal terms, and repair pruned BatchNorm
networks with REFLOW (re-estimated BN statistics, no weight updated).

Entry points: the ``reflow`` command (`reflow.cli`), `reflow.prune` / `reflow.save_pruned` /
`reflow.load_pruned` for any ``nn.Module``, `reflow.runner.run_experiments` (a `reflow.grid.Grid`
in this process or on an executor), `reflow.recalibrate.reflow`, `reflow.zoo.get_model`,
`reflow.data.load_dataset`, and the registries `reflow.baselines` (methods) and
`reflow.repairs`.
"""

__version__ = "0.2.0"


def __getattr__(name: str):  # lazy, so that `import reflow` stays cheap
    if name in {"prune", "save_pruned", "load_pruned", "PruneReport"}:
        from reflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'reflow' has no attribute {name!r}")
