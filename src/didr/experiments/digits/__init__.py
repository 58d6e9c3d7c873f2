"""Real digits and MNIST: one-step generators prompted by class or by text, aligned to learned
rewards, on a CPU (``didr bench digits|mnist``). ``config`` (the section and the benchmark's
presets), ``prompts``, ``stages`` (reference, teacher pool, initial generator), ``rewards`` (the
reward models), ``evaluate``, ``run`` (``didr train``), ``bench`` (the sweep), ``report``."""
