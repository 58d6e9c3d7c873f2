"""The paper's toy (docs/method.md §5): one-step generators on Gaussian mixtures, measured against
the exact tilted optimum. ``config`` (the ``toy`` section and presets), ``stages`` (reference,
initial generator, alignment), ``run`` (one seed, every method), ``frontier`` (strength sweeps over
seeds), ``report`` (the tables), ``fewstep`` (a 2-step generator)."""
