"""reflow-bench: compare one-shot pruning methods on equal terms, and repair pruned BatchNorm
networks with REFLOW (re-estimated BN statistics, no weight updated).

Entry points: the ``reflow`` command (`reflow.cli`), `reflow.harness.run_grid`,
`reflow.recalibrate.reflow`, `reflow.zoo.get_model`, `reflow.data.load_dataset`, and the
method registry `reflow.baselines`.
"""

__version__ = "0.1.0"
