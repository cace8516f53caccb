"""Results of runs as a library, on the standard library and numpy only (reading never loads torch).

- `layout`: the output-folder layout the scripts write and a run folder's status (checkpoint,
  finished training), which `python -m promptdiff.results status DIR` prints for the scripts;
- `record`: the one results.json schema the engine writes and every reader reads, and the
  "=> result" log block older runs left instead;
- `tables`: seed statistics and the paper-style tables (base2new, xd, dg, few_shot).
"""

__all__: list[str] = []
