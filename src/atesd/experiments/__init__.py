"""The experiment lab, apart from the library: the embedded testbed's base model (its warm start and health check),
and the commands that run and read many runs: `atesd sweep`, `compare`, `testbed`, `diagnose`, and the report of
`atesd eval --checkpoints`. Importing it registers the testbed's model as ``model.name_or_path: embedded``."""

from atesd.experiments.warm_start import embedded_base_model
from atesd.models.loading import EMBEDDED
from atesd.train.base_model import register_built_model

register_built_model(EMBEDDED, embedded_base_model)
