"""kd: knowledge distillation for image classifiers.

The pieces, in the order data flows through them: kd.recipe (YAML -> Recipe), kd.data (data sets),
kd.models (model zoo and the one feature interface), kd.distillers (one file per method),
kd.engine (the trainer), kd.run (recipe -> run directory), kd.cli (the command line).
"""

__version__ = "0.1.0"
